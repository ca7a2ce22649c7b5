"""Training a sparse autoencoder on a GPT-2's activations, and its CLI.

    python -m gpt2core.sae --hook blocks.3.hook_resid_post --d-sae 1024 --k 16 --steps 2000 --out runs/sae-L3 \\
        [--model checkpoints/shakespeare] [--text FILE ...] [--device auto|cpu|cuda] [--precision fp32|bf16]

writes SAELens's folder (cfg.json, sae_weights.safetensors, sparsity.safetensors: gpt2core.features.sae) and
card.json: the exact command, the wall time, the settings, the data, and the final L0, explained variance, CE
loss recovered, dead fraction and MSE (definitions in gpt2core.features.sae) with every evaluation before them.
Without --text it trains on the model folder's heldout.txt (the bundled model's: 16,384 held-out Shakespeare
tokens it never trained on), its last eighth kept for the evaluations.

How it trains (``train_sae``; ``train_on_activations`` for activations you already have):
- activations stream from the model through the hooks: each batch of token windows runs under no_grad only up
  to the hook (the forward stops there) and goes into a mixing buffer (``buffer_batches`` training batches),
  shuffled, so a training batch mixes tokens of many windows, as SAELens's mixing buffer does;
- Adam on the SAE (betas 0.9, 0.999, constant learning rate). Decoder rows are kept at unit norm: before each
  step the gradient's component along each row is removed, after it each row is divided by its norm (OpenAI's
  TopK training). b_dec starts at the geometric median of the first batch (Weiszfeld), the encoder at the
  decoder's transpose;
- "topk": loss = E||x - x_hat||^2 + aux_coefficient * scale * E||e - e_hat||^2, the aux-k loss (Gao et al.
  2024, SAELens's TopK training): e = x - x_hat (no gradient), e_hat = W_dec^T z where z keeps the aux_k
  (default d_in / 2) largest pre-activations among the dead latents (ReLU'd), scale = min(n_dead / aux_k, 1)
  (SAELens). Unlike SAELens, e_hat has no b_dec: it predicts an error, as in OpenAI's code. The default
  coefficient is OpenAI's alpha = 1/32 (SAELens: 1.0);
- "relu": loss = E||x - x_hat||^2 + l1_coefficient * E sum_i f_i ||W_dec[i]||, SAELens's decoder-norm weighted
  L1; with the rows at unit norm this is the plain L1 of the latents;
- E||.||^2 is summed over d_in and averaged over tokens (SAELens's MSE loss); the logged "mse" is per element;
- a latent is dead when it has not fired on any of the last ``dead_window`` training tokens (default
  DEAD_WINDOW_TOKENS = 1,000,000; before that many tokens, all tokens so far), counted token by token;
- every ``eval_every`` steps and at the end: L0, explained variance and MSE on the evaluation activations, CE
  loss recovered on the evaluation token windows (clean and zero-ablated CE measured once: the model doesn't
  change), the dead fraction. sparsity.safetensors: log10(fraction of the training tokens since the previous
  evaluation on which each latent fired + 1e-10), as SAELens logs it over its feature-sampling window.

Devices: --device auto|cpu|cuda (train.py's resolve_device); the model and the SAE live there. --precision
bf16 autocasts the SAE's products in training (weights, Adam and the evaluations stay fp32). Multi-process
training (torchrun / DDP) is not supported yet: under torchrun the CLI stops with a message rather than
train one copy per process.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from . import sae as S

PRECISIONS = ("fp32", "bf16")
B_DEC_INITS = ("geometric_median", "mean")


@dataclass
class SAETrainSettings:
    d_sae: int
    architecture: str = "topk"
    k: int = 16                      # latents kept per token (topk)
    l1_coefficient: float = 5.0      # relu: the weight of the L1 penalty
    aux_coefficient: float = 1 / 32  # topk: the weight of the aux-k loss (OpenAI's alpha)
    aux_k: int | None = None         # topk: dead latents the aux-k loss uses per token (None: d_in // 2)
    lr: float = 1e-3
    steps: int = 1000
    batch_tokens: int = 4096         # activations per training step
    buffer_batches: int = 8          # the mixing buffer holds this many training batches
    eval_every: int = 100
    dead_window: int = S.DEAD_WINDOW_TOKENS
    b_dec_init: str = "geometric_median"
    precision: str = "fp32"
    seed: int = 0

    def __post_init__(self):
        if self.architecture not in S.TRAINABLE:
            raise ValueError(f"architecture must be one of {', '.join(S.TRAINABLE)} to train, "
                             f"got {self.architecture!r}")
        for name in ("d_sae", "steps", "batch_tokens", "buffer_batches", "eval_every", "dead_window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if self.architecture == "topk" and not 1 <= self.k <= self.d_sae:
            raise ValueError(f"k must be from 1 to d_sae ({self.d_sae}), got {self.k}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not (self.l1_coefficient >= 0 and self.aux_coefficient >= 0):
            raise ValueError("l1_coefficient and aux_coefficient must be >= 0")
        if self.b_dec_init not in B_DEC_INITS:
            raise ValueError(f"b_dec_init must be one of {', '.join(B_DEC_INITS)}, got {self.b_dec_init!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


def geometric_median(points: torch.Tensor, iters: int = 50, tol: float = 1e-6) -> torch.Tensor:
    """The point minimising the summed distance to ``points`` (N, d), by Weiszfeld's iterations from the mean."""
    points = points.double()
    y = points.mean(0)                                                                  # (d,)
    for _ in range(iters):
        w = 1 / (points - y).norm(dim=-1).clamp_min(1e-12)                             # (N,)
        y_next = (w[:, None] * points).sum(0) / w.sum()                                 # (d,)
        done = (y_next - y).norm() <= tol * max(1.0, float(y.norm()))
        y = y_next
        if done:
            break
    return y.float()


def _cycle(batches: Iterable) -> Iterator:
    """Each item of ``batches``, then again from the start (a list cycles; a generator ends when it does)."""
    while True:
        n = 0
        for item in batches:
            n += 1
            yield item
        if n == 0:
            return


def mixed_batches(chunks: Iterator[torch.Tensor], batch_tokens: int, buffer_batches: int,
                  generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Training batches (batch_tokens, d) drawn from a shuffled buffer that ``chunks`` ((n, d) each) refill:
    the buffer fills to buffer_batches batches, is shuffled, gives half of itself, and refills."""
    capacity = batch_tokens * buffer_batches
    buffer: list[torch.Tensor] = []
    held = 0
    exhausted = False
    while True:
        while held < capacity and not exhausted:
            chunk = next(chunks, None)
            if chunk is None:
                exhausted = True
                break
            buffer.append(chunk)
            held += chunk.shape[0]
        if held < batch_tokens:
            return
        pool = torch.cat(buffer)                                                        # (held, d)
        pool = pool[torch.randperm(held, generator=generator).to(pool.device)]
        # Keep half the buffer to mix with the next chunks (none once they have run out).
        keep = 0 if exhausted else min(capacity // 2, held - batch_tokens)
        n_out = (held - keep) // batch_tokens
        for i in range(n_out):
            yield pool[i * batch_tokens:(i + 1) * batch_tokens]
        rest = pool[n_out * batch_tokens:]
        buffer, held = ([rest] if len(rest) else []), len(rest)


class SAETrainer:
    """Trains ``sae`` on batches of activations; with a model, hook and evaluation token windows the
    evaluations also measure CE loss recovered. ``run()`` yields one event per step."""

    def __init__(self, sae: S.SAE, batches: Iterator[torch.Tensor], settings: SAETrainSettings,
                 eval_acts: torch.Tensor, model=None, hook_name: str | None = None,
                 eval_tokens: list[torch.Tensor] | None = None):
        self.sae, self.batches, self.s = sae, batches, settings
        self.device = sae.W_enc.device
        self.eval_acts = eval_acts.to(self.device, torch.float32)                      # (N_eval, d_in)
        self.model, self.hook_name, self.eval_tokens = model, hook_name, eval_tokens
        self.opt = torch.optim.Adam(sae.parameters(), lr=settings.lr, betas=(0.9, 0.999))
        self.tracker = S.DeadLatentTracker(sae.d_sae, settings.dead_window, device=self.device)
        self.fired = torch.zeros(sae.d_sae, dtype=torch.long, device=self.device)      # (d_sae,) since the last eval
        self.fired_tokens = 0
        self.aux_k = settings.aux_k or max(1, sae.d_in // 2)
        self.step = 0
        self.baseline: dict | None = None   # the model's clean and zero-ablated CE, measured once
        self.log: dict = {"settings": asdict(settings), "loss": [], "evals": []}

    def autocast(self):
        if self.s.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    @torch.no_grad()
    def init_b_dec(self, x: torch.Tensor) -> None:
        centre = geometric_median(x) if self.s.b_dec_init == "geometric_median" else x.mean(0)
        self.sae.b_dec.copy_(centre.to(self.sae.b_dec))

    def train_step(self, x: torch.Tensor) -> dict:
        """One Adam step on x (N, d_in); returns the loss and its parts."""
        sae, s = self.sae, self.s
        with self.autocast():
            pre = sae.pre_activations(x)                                                # (N, d_sae)
            f = sae.activate(pre)                                                       # (N, d_sae)
            x_hat = sae.decode(f)                                                       # (N, d_in)
        error = x - x_hat.float()                                                       # (N, d_in)
        mse_loss = error.pow(2).sum(-1).mean()
        parts = {"mse_loss": mse_loss}
        if s.architecture == "topk":
            dead = self.tracker.dead_mask()                                             # (d_sae,)
            n_dead = int(dead.sum())
            if n_dead and s.aux_coefficient > 0:
                k_aux = min(self.aux_k, n_dead)
                with self.autocast():
                    top = pre.masked_fill(~dead, -math.inf).topk(k_aux, dim=-1, sorted=False)
                    z = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())   # (N, d_sae)
                    error_hat = z @ sae.W_dec                                           # (N, d_in)
                aux = (error_hat.float() - error.detach()).pow(2).sum(-1).mean()
                parts["aux_loss"] = s.aux_coefficient * min(n_dead / self.aux_k, 1.0) * aux
        else:
            parts["l1_loss"] = s.l1_coefficient * (f.float() * sae.W_dec.norm(dim=-1)).sum(-1).mean()
        loss = sum(parts.values())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            W, g = sae.W_dec, sae.W_dec.grad                                            # (d_sae, d_in)
            g -= (g * W).sum(-1, keepdim=True) * W      # keep the step tangent to the unit sphere of each row
        self.opt.step()
        with torch.no_grad():
            sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            f = f.detach()
            self.tracker.update(f)
            self.fired += (f != 0).sum(0)
            self.fired_tokens += f.shape[0]
        return {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in parts.items()}}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """The metrics now (definitions: gpt2core.features.sae)."""
        sae = self.sae
        x = self.eval_acts                                                              # (N, d_in)
        f = sae.encode(x)                                                               # (N, d_sae)
        x_hat = sae(x)                                                                  # (N, d_in)
        out = {"step": self.step, "tokens": self.tracker.tokens_seen, "l0": S.l0(f),
               "explained_variance": S.explained_variance(x, x_hat), "mse": S.mse(x, x_hat),
               "dead_fraction": self.tracker.dead_fraction(),
               "dead_window_tokens": min(self.tracker.window, self.tracker.tokens_seen)}
        if self.model is not None and self.eval_tokens:
            if self.baseline is None:
                self.baseline = {"ce_clean": mean_ce(self.model, self.eval_tokens),
                                 "ce_zero": mean_ce(self.model, self.eval_tokens,
                                                    {self.hook_name: S._zero_hook})}
            ce_sae = mean_ce(self.model, self.eval_tokens, {self.hook_name: S.replace_hook(sae)})
            clean, zero = self.baseline["ce_clean"], self.baseline["ce_zero"]
            out.update(ce_clean=clean, ce_sae=ce_sae, ce_zero=zero,
                       ce_loss_recovered=(zero - ce_sae) / (zero - clean) if zero != clean else float("nan"))
        if self.fired_tokens:
            density = self.fired.double() / self.fired_tokens                          # (d_sae,)
            sae.log_sparsity = torch.log10(density + S.LOG_SPARSITY_EPS).float().cpu()
            self.fired.zero_()
            self.fired_tokens = 0
        return out

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> Iterator[dict]:
        """Train to ``settings.steps``: yields {"step", "loss", ...} each step, with "eval" at evaluations."""
        was_training = self.model.training if self.model is not None else None
        if self.model is not None:
            self.model.eval()
        self.sae.train()
        t0 = time.perf_counter()
        try:
            while self.step < self.s.steps and not should_stop():
                x = next(self.batches, None)
                if x is None:
                    self.log["stopped_early"] = f"the activations ran out after {self.step} steps"
                    break
                x = x.to(self.device, torch.float32)                                   # (N, d_in)
                if self.step == 0:
                    self.init_b_dec(x)
                event = {"step": self.step + 1, **self.train_step(x)}
                self.step += 1
                self.log["loss"].append(event["loss"])
                if self.step % self.s.eval_every == 0 or self.step == self.s.steps:
                    event["eval"] = {**self.evaluate(), "time_s": time.perf_counter() - t0}
                    self.log["evals"].append(event["eval"])
                yield event
        finally:
            self.sae.eval()
            if self.model is not None:
                self.model.train(was_training)
        if self.step and (not self.log["evals"] or self.log["evals"][-1]["step"] != self.step):
            self.log["evals"].append({**self.evaluate(), "time_s": time.perf_counter() - t0})
        self.log["final"] = self.log["evals"][-1] if self.log["evals"] else None


@torch.no_grad()
def mean_ce(model, token_batches: list[torch.Tensor], hooks: dict | None = None) -> float:
    """The model's mean next-token cross-entropy over every position of the token batches (B, T), with ``hooks``."""
    total, n = 0.0, 0
    for ids in token_batches:
        loss, count = S._next_token_ce(model, ids, hooks)
        total, n = total + loss, n + count
    return total / n


def _model_chunks(model, hook_name: str, token_batches: Iterable) -> Iterator[torch.Tensor]:
    device = model.wte.weight.device
    for ids in _cycle(token_batches):
        ids = torch.as_tensor(ids, dtype=torch.long, device=device)
        x = S.hook_activations(model, ids, hook_name)                                   # (B, T, d)
        yield x.reshape(-1, x.shape[-1]).float()                                        # (B*T, d)


def _settings(d_sae, architecture, k, l1_coefficient, lr, steps, extra) -> SAETrainSettings:
    return SAETrainSettings(d_sae=d_sae, architecture=architecture, k=k, l1_coefficient=l1_coefficient, lr=lr,
                            steps=steps, **extra)


def train_sae(model, hook_name: str, token_batches: Iterable, d_sae: int, architecture: str = "topk", k: int = 16,
              l1_coefficient: float = 5.0, lr: float = 1e-3, steps: int = 1000, device=None,
              progress: Callable[[dict], None] | None = None, eval_batches: list | None = None,
              model_name: str | None = None, metadata: dict | None = None, **settings) -> tuple[S.SAE, dict]:
    """Train an SAE on ``model``'s activations at ``hook_name``; returns (sae, log).

    ``token_batches``: token id batches (B, T), cycled from the start when they end (a generator ends the
    training when it does). ``eval_batches``: token batches for the evaluations (default: the first batch
    of token_batches: a list's is also trained on, a generator's is not). ``device``: where the SAE trains
    (default: the model's; the model is not moved). ``progress(event)`` is called after every step; an
    event with "eval" carries L0, explained variance, CE loss recovered, dead fraction and MSE. Other settings:
    SAETrainSettings (batch_tokens, eval_every, dead_window, aux_coefficient, aux_k, precision, b_dec_init, seed).
    ``log``: {"settings", "loss" (each step's), "evals" (each evaluation), "final" (the last)}."""
    s = _settings(d_sae, architecture, k, l1_coefficient, lr, steps, settings)
    width = S.hook_width(model, hook_name)
    was_training = model.training
    model.eval()   # no dropout in the activations; restored at the end
    try:
        return _train_sae(model, hook_name, token_batches, s, width, device, progress, eval_batches, model_name,
                          metadata)
    finally:
        model.train(was_training)


def _train_sae(model, hook_name, token_batches, s: SAETrainSettings, width: int, device, progress, eval_batches,
               model_name, metadata) -> tuple[S.SAE, dict]:
    model_device = model.wte.weight.device
    device = torch.device(device) if device is not None else model_device
    token_batches = token_batches if not isinstance(token_batches, torch.Tensor) or token_batches.dim() != 2 \
        else [token_batches]
    if eval_batches is None:
        first = next(iter(token_batches), None)
        if first is None:
            raise ValueError("token_batches is empty")
        eval_batches = [first]
    eval_tokens = []
    for ids in eval_batches:
        ids = torch.as_tensor(ids, dtype=torch.long, device=model_device)
        eval_tokens.append(ids.unsqueeze(0) if ids.dim() == 1 else ids)                 # (B, T)
    eval_acts = torch.cat([S.hook_activations(model, ids, hook_name).reshape(-1, width) for ids in eval_tokens])
    torch.manual_seed(s.seed)
    sae = S.SAE(width, s.d_sae, s.architecture, k=s.k, hook_name=hook_name, model_name=model_name,
                metadata=metadata, seed=s.seed).to(device)
    g = torch.Generator().manual_seed(s.seed)
    batches = mixed_batches(_model_chunks(model, hook_name, token_batches), s.batch_tokens, s.buffer_batches, g)
    trainer = SAETrainer(sae, batches, s, eval_acts, model=model, hook_name=hook_name, eval_tokens=eval_tokens)
    for event in trainer.run():
        if progress is not None:
            progress(event)
    return sae, trainer.log


def train_on_activations(activations: Iterable[torch.Tensor], d_sae: int, eval_acts: torch.Tensor | None = None,
                         architecture: str = "topk", k: int = 16, l1_coefficient: float = 5.0, lr: float = 1e-3,
                         steps: int = 1000, device="cpu", progress: Callable[[dict], None] | None = None,
                         **settings) -> tuple[S.SAE, dict]:
    """``train_sae`` on activations you have: chunks (n, d_in) (cycled), evaluated on ``eval_acts`` (N, d_in)
    (default: the first chunk). No model, so no CE loss recovered."""
    s = _settings(d_sae, architecture, k, l1_coefficient, lr, steps, settings)
    activations = [activations] if isinstance(activations, torch.Tensor) else activations
    first = next(iter(activations), None)
    if first is None:
        raise ValueError("no activations")
    eval_acts = first if eval_acts is None else eval_acts
    torch.manual_seed(s.seed)
    sae = S.SAE(first.shape[-1], d_sae, architecture, k=k, seed=s.seed).to(device)
    g = torch.Generator().manual_seed(s.seed)
    chunks = (a.reshape(-1, a.shape[-1]).float() for a in _cycle(activations))
    trainer = SAETrainer(sae, mixed_batches(chunks, s.batch_tokens, s.buffer_batches, g), s,
                         eval_acts.reshape(-1, eval_acts.shape[-1]))
    for event in trainer.run():
        if progress is not None:
            progress(event)
    return sae, trainer.log


# ---- the CLI ---------------------------------------------------------------------------------------------

def token_windows(ids: torch.Tensor, context: int, batch_windows: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless batches (batch_windows, context) of windows at random offsets of ``ids`` (seeded)."""
    from ..training.data import random_starts, windows_at
    g = torch.Generator().manual_seed(seed)
    while True:
        yield windows_at(ids, random_starts(len(ids), context, batch_windows, g), context)[0]


def eval_windows(ids: torch.Tensor, context: int, batch_windows: int) -> list[torch.Tensor]:
    """The non-overlapping windows of ``ids`` of ``context`` tokens, in batches of ``batch_windows``."""
    n = len(ids) // context
    if n == 0:
        raise ValueError(f"the evaluation text has {len(ids)} tokens: fewer than one window of {context}")
    windows = ids[:n * context].reshape(n, context)                                     # (n, context)
    return list(windows.split(batch_windows))


def main(argv=None) -> int:
    from ..analysis.trace import DEFAULT_WEIGHTS
    from ..reference.weights import load
    from ..training.train import device_label, resolve_device
    from .neurons import encode_for

    ap = argparse.ArgumentParser(prog="python -m gpt2core.sae", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_WEIGHTS), help="checkpoint folder (default: the bundled model)")
    ap.add_argument("--hook", required=True, help="hook name, e.g. blocks.3.hook_resid_post")
    ap.add_argument("--d-sae", type=int, required=True, help="number of latents")
    ap.add_argument("--architecture", choices=S.TRAINABLE, default="topk")
    ap.add_argument("--k", type=int, default=16, help="(topk) latents kept per token")
    ap.add_argument("--l1-coefficient", type=float, default=5.0, help="(relu) weight of the L1 penalty")
    ap.add_argument("--aux-coefficient", type=float, default=1 / 32, help="(topk) weight of the aux-k loss")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-tokens", type=int, default=4096, help="activations per step")
    ap.add_argument("--context", type=int, default=0, help="tokens per window (default: the model's, at most 128)")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-fraction", type=float, default=0.125, help="the text's last share kept for evaluations")
    ap.add_argument("--dead-window", type=int, default=S.DEAD_WINDOW_TOKENS,
                    help="a latent not firing on this many training tokens is dead")
    ap.add_argument("--text", nargs="+", default=None, help="text files (default: the model folder's heldout.txt)")
    ap.add_argument("--out", required=True, help="folder to write (SAELens's layout + card.json)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA when there is one")
    ap.add_argument("--precision", choices=PRECISIONS, default="fp32",
                    help="bf16: autocast the SAE's products in training (weights and evaluations stay fp32)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        ap.error("multi-process training (torchrun / DDP) is not supported yet: run one process "
                 "(--device cuda trains on one GPU)")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
        if not 0 < args.eval_fraction < 1:
            raise ValueError(f"--eval-fraction must be between 0 and 1, got {args.eval_fraction}")
        settings = dict(aux_coefficient=args.aux_coefficient, batch_tokens=args.batch_tokens,
                        eval_every=args.eval_every, dead_window=args.dead_window, precision=args.precision,
                        seed=args.seed)
        _settings(args.d_sae, args.architecture, args.k, args.l1_coefficient, args.lr, args.steps, settings)
    except ValueError as e:
        ap.error(str(e))

    model_dir = Path(args.model)
    model = load(model_dir).to(device).eval()
    try:
        S.hook_width(model, args.hook)
    except ValueError as e:
        ap.error(str(e))
    if args.text:
        paths = [Path(p) for p in args.text]
    elif (model_dir / "heldout.txt").is_file():
        paths = [model_dir / "heldout.txt"]
    else:
        ap.error(f"{model_dir} has no heldout.txt: give --text")
    text = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in paths)
    ids = torch.as_tensor(encode_for(model, text), dtype=torch.long)
    context = args.context or min(model.config.n_ctx, 128)
    if not 2 <= context <= model.config.n_ctx:
        ap.error(f"--context must be from 2 to the model's {model.config.n_ctx}")
    n_eval = int(len(ids) * args.eval_fraction)
    train_ids, eval_ids = ids[:len(ids) - n_eval], ids[len(ids) - n_eval:]
    if len(train_ids) <= context:
        ap.error(f"the text has {len(ids)} tokens: too few to train on windows of {context}")
    batch_windows = max(1, args.batch_tokens // context)
    try:
        evals = eval_windows(eval_ids, context, batch_windows)
    except ValueError as e:
        ap.error(str(e))
    print(f"{model_dir.name}: {model.num_params():,} parameters, hook {args.hook}; {len(train_ids):,} training / "
          f"{len(eval_ids):,} evaluation tokens in windows of {context}; device {device_label(device)}",
          file=sys.stderr)

    from tqdm import tqdm
    bar = tqdm(total=args.steps, unit="step", dynamic_ncols=True)

    def progress(event: dict) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{event['loss']:.4g}")
        if "eval" in event:
            e = event["eval"]
            bar.write(f"step {e['step']}: L0 {e['l0']:.1f}  explained variance {e['explained_variance']:.3f}  "
                      f"CE recovered {e['ce_loss_recovered']:.3f}  dead {e['dead_fraction']:.3f}  mse {e['mse']:.4g}")

    t_train = time.perf_counter()
    sae, log = train_sae(model, args.hook, token_windows(train_ids, context, batch_windows, args.seed), args.d_sae,
                         architecture=args.architecture, k=args.k, l1_coefficient=args.l1_coefficient, lr=args.lr,
                         steps=args.steps, device=device, progress=progress, eval_batches=evals,
                         model_name=model_dir.name,
                         metadata={"context_size": context, "prepend_bos": False,
                                   "dataset_path": ", ".join(p.name for p in paths)}, **settings)
    bar.close()
    train_time = time.perf_counter() - t_train
    out = S.save_sae(sae.cpu(), args.out)
    final = log["final"]
    metric_keys = ("l0", "explained_variance", "ce_loss_recovered", "dead_fraction", "mse",
                   "ce_clean", "ce_sae", "ce_zero")
    card = {"command": "python -m gpt2core.sae " + " ".join(argv if argv is not None else sys.argv[1:]),
            "wall_time_s": round(time.perf_counter() - t_start, 2), "train_time_s": round(train_time, 2),
            "metrics": {key: final[key] for key in metric_keys},
            "definitions": {
                "l0": "mean number of nonzero latents per evaluation token",
                "explained_variance": "1 - E||x - x_hat||^2 / E||x - mu||^2, mu the per-dimension mean over the "
                                      "evaluation set, both expectations over the set",
                "ce_loss_recovered": "(CE zero-ablated - CE with sae(x) spliced in) / (CE zero-ablated - CE clean), "
                                     "next-token CE over the evaluation windows",
                "dead_fraction": f"share of latents not active on any of the last {args.dead_window:,} training "
                                 f"tokens (all {final['dead_window_tokens']:,} seen, if fewer)",
                "mse": "mean of (x - x_hat)^2 over evaluation tokens and dimensions"},
            "model": {"path": str(model_dir), "n_layer": model.config.n_layer, "n_embd": model.config.n_embd},
            "hook": args.hook, "device": device_label(device), "torch": torch.__version__,
            "data": {"files": [str(p) for p in paths], "tokens": len(ids), "train_tokens": len(train_ids),
                     "eval_tokens": sum(w.numel() for w in evals), "context": context},
            "settings": log["settings"], "evals": log["evals"]}
    if "stopped_early" in log:
        card["stopped_early"] = log["stopped_early"]
    (out / "card.json").write_text(json.dumps(card, indent=2))
    print(f"wrote {out} ({card['wall_time_s']:.1f} s): " +
          ", ".join(f"{key} {card['metrics'][key]:.4g}" for key in metric_keys[:5]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
