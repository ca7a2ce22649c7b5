"""Training: AdamW (decay on 2-D weights only), warmup + cosine, clipping, evals, resumable.

CLI: ``python -m gpt2core.training.train --text FILE [FILE ...] --out checkpoints/NAME [options]``,
or data-parallel: ``torchrun --nproc_per_node N -m gpt2core.training.train ...`` (DistributedDataParallel,
nccl on GPUs, gloo on CPU).

Every step draws its global batch (batch_size x grad_accum x world size windows) and its dropout
from generators seeded by (seed, step); each rank takes its own slice of that batch and DDP
averages the gradients. So a run that stops and resumes makes exactly the same updates as one
that never stopped, and N processes make the same updates as one process with the same global
batch (to float rounding, without dropout). Checkpoints are safetensors + JSON (no pickle),
optimiser moments and step included; rank 0 alone writes them.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..text import tokenizer
from ..analysis.circuits import induction_loss
from ..reference.config import GPT2Config
from .data import SlidingWindowDataset, random_starts, repeated_windows, split_ids, windows_at
from ..decoding.generate import generate
from ..reference.model import GPT2
from ..reference.weights import WEIGHTS_FILE, load, save

OPTIM_FILE, LOG_FILE, LOSS_PNG = "optimizer.safetensors", "log.json", "loss.png"
IGNORE_INDEX = -100          # a target that carries no loss (prompt and padding in instruction tuning)
PRECISIONS = ("fp32", "bf16", "fp16")
REPEAT_POOLS = ("vocab", "text", "common")   # common: the COMMON_IDS most frequent ids of the training text
COMMON_IDS = 2048
AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainSettings:
    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 20
    val_fraction: float = 0.1
    seed: int = 1337
    sample_prompt: str = "ROMEO:"
    sample_tokens: int = 40
    bf16: bool = False        # the old flag: the same as precision="bf16"
    precision: str = "fp32"   # autocast dtype for the matmuls; weights and optimiser stay fp32
    grad_accum: int = 1       # micro-batches of batch_size per step and rank, gradients summed
    compile: bool = False     # torch.compile the forward and loss
    repeat_fraction: float = 0.0   # share of each batch's windows in which a span repeats (data.repeated_windows)
    repeat_random_share: float = 0.5   # of those, the share whose span is random token ids
    repeat_pool: str = "vocab"   # random ids from: the whole vocabulary, the ids of the training text, its commonest
    repeat_fill: bool = False    # a random span repeats over its whole window, not just twice
    embedding_lr_scale: float = 1.0   # the token embedding's lr is lr times this (0: frozen)

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1 or self.grad_accum < 1:
            raise ValueError("steps, batch_size, grad_accum and eval_every must be >= 1")
        if not (self.lr > 0 and self.min_lr >= 0):
            raise ValueError("lr must be > 0 and min_lr >= 0")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not (0 <= self.repeat_fraction <= 1 and 0 <= self.repeat_random_share <= 1):
            raise ValueError("repeat_fraction and repeat_random_share must be in [0, 1]")
        if self.embedding_lr_scale < 0:
            raise ValueError("embedding_lr_scale must be >= 0")
        if self.repeat_pool not in REPEAT_POOLS:
            raise ValueError(f"repeat_pool must be one of {', '.join(REPEAT_POOLS)}, got {self.repeat_pool!r}")
        if self.bf16:
            if self.precision == "fp16":
                raise ValueError("bf16=True contradicts precision='fp16'")
            self.precision = "bf16"
        self.bf16 = self.precision == "bf16"   # kept in step, so old readers of the flag stay right


def lr_at(step: int, s: TrainSettings) -> float:
    """Linear warmup to lr, then cosine down to min_lr at the last step."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    progress = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return s.min_lr + 0.5 * (s.lr - s.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: GPT2, s: TrainSettings) -> torch.optim.AdamW:
    """Weight decay on matrices and embeddings (2-D); none on biases and LayerNorm parameters.
    The token embedding (tied to the head) has a group of its own, its lr scaled by
    ``s.embedding_lr_scale``; each group's ``lr_scale`` is applied by ``Trainer.train_step``."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    wte = params.pop("wte.weight", None)
    decay = [p for p in params.values() if p.dim() >= 2]
    no_decay = [p for p in params.values() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": s.weight_decay, "lr_scale": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0}]
    if wte is not None:
        groups.append({"params": [wte], "weight_decay": s.weight_decay, "lr_scale": s.embedding_lr_scale})
    return torch.optim.AdamW(groups, lr=s.lr, betas=s.betas)


class SummedLoss(nn.Module):
    """The model's forward with the head applied only where a target counts; returns the summed
    cross-entropy over those targets.

    Same layers and order as GPT2.forward (embeddings, dropout, blocks, ln_f, head). The output
    head (vocab x d) is most of a small model's work, and in instruction tuning only the response
    positions carry a target, so skipping the rest saves most of a step. One module holds the
    whole computation so that DDP (and torch.compile) wrap it.
    """

    def __init__(self, model: GPT2):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        m = self.model
        T = x.shape[1]
        pos = torch.arange(T, device=x.device)                                   # (T,)
        h = m.drop(m.wte(x) + m.wpe(pos))                                        # (B, T, d)
        for block in m.blocks:
            h = block(h)                                                         # (B, T, d)
        h = m.ln_f(h).reshape(-1, h.shape[-1])                                   # (B*T, d)
        targets = y.reshape(-1)                                                  # (B*T,)
        keep = targets != IGNORE_INDEX
        logits = m.lm_head(h[keep])                                              # (K, vocab)
        return F.cross_entropy(logits.float(), targets[keep], reduction="sum")


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA when there is one, else the CPU; asking for CUDA without one is a plain error."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here (torch.cuda.is_available() is "
                         f"False; this torch is {torch.__version__}). Use --device cpu or auto.")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def device_label(device: torch.device) -> str:
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu"


def setup_distributed(device_name: str) -> torch.device:
    """This process's device; under torchrun (WORLD_SIZE > 1) also the process group: nccl on GPUs,
    gloo on CPU, each rank on the GPU of its LOCAL_RANK."""
    device = resolve_device(device_name)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def build_model(init: str | None, cfg: GPT2Config, dropout: float) -> GPT2:
    """A model from a checkpoint (ours or an HF GPT-2 folder: its architecture, our dropout for
    training) or, without ``init``, a fresh one of ``cfg``."""
    if not init:
        return GPT2(cfg)
    loaded = load(init)
    model = GPT2(dataclasses.replace(loaded.config, dropout=dropout), init_weights=False)
    model.load_state_dict(loaded.state_dict())
    return model


@torch.no_grad()
def reset_unseen_embeddings(model: GPT2, ids: torch.Tensor, seed: int = 0) -> int:
    """Re-draw, N(0, 0.02) as at initialisation, the token-embedding rows of the ids that never occur
    in ``ids``; returns how many. Training on a text never shows a model most of the vocabulary, and
    the output softmax pushes every unseen row the same way, so they end up nearly alike: a model
    can then not copy them in context. The ``<|endoftext|>`` separator between files counts as
    unseen (a few dozen occurrences teach it nothing). Rows are drawn in id order from ``seed``."""
    counts = torch.bincount(ids.flatten().cpu(), minlength=model.config.vocab_size)     # (V,)
    counts[tokenizer.EOT_ID] = 0
    unseen = counts == 0                                                                 # (V,)
    g = torch.Generator().manual_seed(seed)
    fresh = torch.randn(int(unseen.sum()), model.config.n_embd, generator=g) * 0.02    # (U, d)
    model.wte.weight[unseen.to(model.wte.weight.device)] = fresh.to(model.wte.weight)
    return int(unseen.sum())


@torch.no_grad()
def spread_embeddings(model: GPT2, sigma: float, seed: int = 0) -> None:
    """Add N(0, sigma) to every token-embedding row. A small model trained on one text keeps its
    rows in a narrow cone (here 97% of their variance, less the mean, on one axis), so a row says
    little that sets it apart from the others, and no head can copy it in context; a little
    independent noise per row gives each token an identity of its own. Drawn from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(model.wte.weight.shape, generator=g) * sigma                    # (V, d)
    model.wte.weight += noise.to(model.wte.weight)


@torch.no_grad()
def evaluate(model: GPT2, ids: torch.Tensor, batch_size: int, max_batches: int) -> float:
    """Mean loss over fixed, non-overlapping windows of ``ids`` (deterministic)."""
    n = model.config.n_ctx
    ds = SlidingWindowDataset(ids, n, n)
    if len(ds) == 0:
        n = max(1, len(ids) - 1)   # text shorter than the context: one shorter window
        ds = SlidingWindowDataset(ids, n, n)
    was_training = model.training
    model.eval()
    losses = []
    for b in range(min(max_batches, math.ceil(len(ds) / batch_size))):
        items = [ds[i] for i in range(b * batch_size, min(len(ds), (b + 1) * batch_size))]
        device = next(model.parameters()).device
        x, y = torch.stack([i[0] for i in items]).to(device), torch.stack([i[1] for i in items]).to(device)
        losses.append(float(model.loss(x, y)))
    model.train(was_training)
    return sum(losses) / len(losses) if losses else float("nan")


def sample_text(model: GPT2, prompt: str, n_tokens: int, seed: int = 0) -> str:
    was_training = model.training
    model.eval()
    ids = tokenizer.encode(prompt) or [tokenizer.EOT_ID]
    out = generate(model, ids, n_tokens, temperature=0.8, top_k=40, seed=seed)
    model.train(was_training)
    return prompt + tokenizer.decode(out)


@dataclass
class Trainer:
    """Holds a model, its optimiser and the log; ``run`` yields an event per step.

    The model may sit on any device; under torch.distributed it trains as one rank of DDP.
    """
    model: GPT2
    settings: TrainSettings
    train_ids: torch.Tensor
    val_ids: torch.Tensor
    step: int = 0
    log: dict = field(default_factory=lambda: {"train": [], "eval": []})

    def __post_init__(self):
        s = self.settings
        self.device = next(self.model.parameters()).device
        self.optimizer = make_optimizer(self.model, s)
        distributed = dist.is_available() and dist.is_initialized()
        self.rank, self.world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        self.ddp = None
        engine = self.loss_engine()
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            engine = self.ddp = nn.parallel.DistributedDataParallel(engine, device_ids=ids)
        self.engine = torch.compile(engine) if s.compile else engine   # DDP first, as PyTorch advises
        self.amp_dtype = AMP_DTYPES[s.precision]
        # fp16 can underflow gradients: scale the loss up, unscale before clipping (bf16 needs none).
        self.scaler = torch.amp.GradScaler(self.device.type) if s.precision == "fp16" else None

    def loss_engine(self) -> nn.Module:
        """The module a step runs (under DDP and torch.compile): the summed LM loss; subclasses swap it."""
        return SummedLoss(self.model)

    @classmethod
    def from_ids(cls, model: GPT2, ids, settings: TrainSettings) -> "Trainer":
        train_ids, val_ids = split_ids(ids, settings.val_fraction)
        need = model.config.n_ctx + 2
        if len(train_ids) < need:
            raise ValueError(f"the training text has {len(train_ids)} tokens; it needs at least {need} "
                             f"for a context of {model.config.n_ctx}")
        if len(val_ids) < 2:
            val_ids = train_ids[-(model.config.n_ctx + 1):]  # tiny texts: validate on the tail
        return cls(model, settings, train_ids, val_ids)

    @property
    def effective_batch(self) -> int:
        """Sequences per optimiser step, over every micro-batch and rank."""
        return self.settings.batch_size * self.settings.grad_accum * self.world_size

    def run_info(self) -> dict:
        """Where and how it trains, for the log and the model card."""
        s = self.settings
        return {"device": device_label(self.device), "precision": s.precision, "compile": s.compile,
                "world_size": self.world_size, "batch_size": s.batch_size, "grad_accum": s.grad_accum,
                "effective_batch": self.effective_batch,
                "backend": dist.get_backend() if self.world_size > 1 else None}

    def micro_batches(self) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
        """This rank's micro-batches for this step, and the number of targets in the global batch.

        The global batch is drawn from the (seed, step) generator exactly as one process would
        draw it; rank r takes the r-th slice of it and cuts that into grad_accum micro-batches.
        """
        s, n = self.settings, self.model.config.n_ctx
        per_rank = s.batch_size * s.grad_accum
        g = torch.Generator().manual_seed(s.seed * 1_000_003 + self.step)
        starts = random_starts(len(self.train_ids), n, per_rank * self.world_size, g)
        if not s.repeat_fraction:
            mine = starts[self.rank * per_rank:(self.rank + 1) * per_rank]
            batches = [windows_at(self.train_ids, mine[k * s.batch_size:(k + 1) * s.batch_size], n)
                       for k in range(s.grad_accum)]
            return batches, per_rank * self.world_size * n
        # The whole global batch is drawn (and rewritten) on every rank, so every rank agrees on it
        # and on how many of its targets count.
        x, y = windows_at(self.train_ids, starts, n)                                # (B, n), (B, n)
        which = torch.nonzero(torch.rand(len(starts), generator=g) < s.repeat_fraction).flatten()
        x, y = repeated_windows(self.train_ids, (x, y), which, g, self.model.config.vocab_size,
                                s.repeat_random_share, ignore_index=IGNORE_INDEX, pool=self.repeat_pool_ids(),
                                fill=s.repeat_fill)
        n_targets = int((y != IGNORE_INDEX).sum())
        x, y = x[self.rank * per_rank:(self.rank + 1) * per_rank], y[self.rank * per_rank:(self.rank + 1) * per_rank]
        batches = [(x[k * s.batch_size:(k + 1) * s.batch_size], y[k * s.batch_size:(k + 1) * s.batch_size])
                   for k in range(s.grad_accum)]
        return batches, n_targets

    def repeat_pool_ids(self) -> torch.Tensor | None:
        """The ids random spans are drawn from (None: the whole vocabulary), found once."""
        pool = self.settings.repeat_pool
        if pool == "vocab":
            return None
        if getattr(self, "_pool", None) is None:
            counts = torch.bincount(self.train_ids, minlength=self.model.config.vocab_size)    # (V,)
            held = torch.nonzero(counts).flatten()
            self._pool = held if pool == "text" else counts.argsort(descending=True, stable=True)[:min(COMMON_IDS, len(held))]
        return self._pool

    def train_step(self) -> float:
        s, model = self.settings, self.model
        model.train()
        batches, n_targets = self.micro_batches()
        lr = lr_at(self.step, s)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        # Each rank's loss is its share of the global sum over n_targets; DDP averages gradients
        # over ranks, so multiplying by world_size makes the update that of the whole batch.
        scale = self.world_size / n_targets
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        self.optimizer.zero_grad(set_to_none=True)
        rng_devices = [self.device.index or 0] if self.device.type == "cuda" else []
        # Dropout masks depend on (step, rank) alone; fork_rng puts the global generator back after,
        # so training in the app does not reset the random state other requests see.
        with torch.random.fork_rng(devices=rng_devices), torch.enable_grad():
            torch.manual_seed(s.seed * 7_919 + self.step + 1_000_033 * self.rank)
            for k, (x, y) in enumerate(batches):
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                # Gradients are all-reduced once per step, on the last micro-batch.
                last = k == len(batches) - 1
                with contextlib.nullcontext() if last or self.ddp is None else self.ddp.no_sync():
                    with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16,
                                        enabled=self.amp_dtype is not None):
                        loss_sum = self.engine(x, y)
                    part = loss_sum * scale
                    (self.scaler.scale(part) if self.scaler else part).backward()
                total += loss_sum.detach()
        if self.world_size > 1:
            dist.all_reduce(total)   # the logged loss is the global batch's, the same on every rank
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        if self.scaler:
            self.scaler.step(self.optimizer)   # skipped when the gradients overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        self.step += 1
        entry = {"step": self.step, "loss": float(total) / n_targets, "lr": lr, "grad_norm": float(grad_norm)}
        self.log["train"].append(entry)
        return entry["loss"]

    def eval_now(self) -> dict:
        s = self.settings
        # eval_batches counts global batches: the same windows, however the batch is split.
        eval_batches = s.eval_batches * s.grad_accum * self.world_size
        train_loss = evaluate(self.model, self.train_ids[-len(self.val_ids) * 4:] if len(self.val_ids) > 1
                              else self.train_ids, s.batch_size, eval_batches)
        val_loss = evaluate(self.model, self.val_ids, s.batch_size, eval_batches)
        entry = {"step": self.step, "train_loss": train_loss, "val_loss": val_loss,
                 "val_ppl": math.exp(min(val_loss, 50)),
                 "tokens_seen": self.step * self.effective_batch * self.model.config.n_ctx,
                 "sample": sample_text(self.model, s.sample_prompt, s.sample_tokens)}
        if s.repeat_fraction and 2 * 50 + 1 <= self.model.config.n_ctx:
            induction = induction_loss(self.model, n_tokens=50, batch=8, seed=self.step)
            entry["induction"] = {"first": induction["first"], "second": induction["second"]}
        self.log["eval"].append(entry)
        return entry

    def run(self, until: int | None = None, should_stop: Callable[[], bool] = lambda: False) -> Iterator[dict]:
        """Train to ``until`` (default: settings.steps); yields {"step", "loss", ["eval"]} per step.
        Under DDP rank 0 alone evaluates (the others go on to the next step and wait for it there)."""
        until = min(until or self.settings.steps, self.settings.steps)
        while self.step < until and not should_stop():
            loss = self.train_step()
            event = {"step": self.step, "loss": loss}
            if self.rank == 0 and (self.step % self.settings.eval_every == 0 or self.step == self.settings.steps):
                event["eval"] = self.eval_now()
            yield event

    # ---- checkpoints ----------------------------------------------------------------------
    def save(self, folder, dtype: torch.dtype | None = None, extra: dict | None = None) -> Path:
        """Weights (our format), optimiser moments, step, settings and the log; rank 0 alone writes."""
        folder = Path(folder)
        if self.rank != 0:
            return folder
        meta = {"train_settings": asdict(self.settings), "step": self.step, "run": self.run_info(), **(extra or {})}
        if self.scaler is not None:
            meta["grad_scaler"] = self.scaler.state_dict()
        save(self.model, folder, dtype=dtype, metadata=meta)
        names = {id(p): n for n, p in self.model.named_parameters()}
        tensors = {}
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                st = self.optimizer.state.get(p)
                if st:
                    tensors[f"{names[id(p)]}.exp_avg"] = st["exp_avg"].contiguous().cpu()
                    tensors[f"{names[id(p)]}.exp_avg_sq"] = st["exp_avg_sq"].contiguous().cpu()
                    tensors[f"{names[id(p)]}.step"] = torch.as_tensor(st["step"], dtype=torch.float64).reshape(1).cpu()
        save_file(tensors, str(folder / OPTIM_FILE))
        (folder / LOG_FILE).write_text(json.dumps(self.log, indent=1) + "\n", encoding="utf-8")
        return folder

    def load_state(self, folder) -> None:
        """Resume from a folder written by ``save`` (full precision weights)."""
        folder = Path(folder)
        loaded = load(folder)
        self.model.load_state_dict(loaded.state_dict())
        doc = json.loads((folder / "config.json").read_text())
        self.step = int(doc["step"])
        self.log = json.loads((folder / LOG_FILE).read_text())
        moments = load_file(str(folder / OPTIM_FILE))
        for name, p in self.model.named_parameters():
            if f"{name}.exp_avg" in moments:
                self.optimizer.state[p] = {"step": moments[f"{name}.step"].reshape(()).float(),
                                           "exp_avg": moments[f"{name}.exp_avg"].to(p.device, copy=True),
                                           "exp_avg_sq": moments[f"{name}.exp_avg_sq"].to(p.device, copy=True)}
        if self.scaler is not None and "grad_scaler" in doc:
            self.scaler.load_state_dict(doc["grad_scaler"])


def plot_loss(log: dict, path) -> None:
    """The loss curve: per-step train loss (smoothed) and the eval points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [e["step"] for e in log["train"]]
    losses = [e["loss"] for e in log["train"]]
    smooth, acc = [], None
    for v in losses:
        acc = v if acc is None else 0.98 * acc + 0.02 * v
        smooth.append(acc)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, losses, color="#bbb", lw=0.6, label="train loss (per step)")
    ax.plot(steps, smooth, color="#1f77b4", lw=1.5, label="train loss (smoothed)")
    ev = log["eval"]
    if ev:
        ax.plot([e["step"] for e in ev], [e["val_loss"] for e in ev], "o-", color="#d62728", ms=3,
                label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def read_texts(paths: list[str]) -> str:
    texts = []
    for p in sorted(paths):
        texts.append(Path(p).read_text(encoding="utf-8", errors="replace").strip())
    return f"\n{tokenizer.EOT}\n".join(texts)


def add_scale_args(ap: argparse.ArgumentParser) -> None:
    """Options shared by train and finetune: where, at what precision, from which weights."""
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                    help="auto: CUDA when there is one (under torchrun: the GPU of LOCAL_RANK)")
    ap.add_argument("--precision", choices=PRECISIONS, default=None,
                    help="autocast dtype: bf16, or fp16 with a gradient scaler (default fp32)")
    ap.add_argument("--bf16", action="store_true", help="the same as --precision bf16")
    ap.add_argument("--grad-accum", type=int, default=1,
                    help="micro-batches per step: effective batch = batch x accum x processes")
    ap.add_argument("--compile", action="store_true", help="torch.compile the forward and loss")
    ap.add_argument("--init", default=None,
                    help="start from this checkpoint (our format or an HF GPT-2 folder) instead of random "
                         "weights; its architecture replaces --n-layer/--n-head/--n-embd/--n-ctx")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per process (0: torch's default)")


def add_run_args(ap: argparse.ArgumentParser, steps: int, batch_size: int, unit: str, dropout: float = 0.0,
                 warmup: int = 20, weight_decay: float = 0.0, eval_every: int = 100) -> None:
    """Options every training command shares (train, finetune, classify): the output, a fresh model's
    size, the schedule, and add_scale_args; each passes its own defaults. ``unit`` names a batch's items."""
    ap.add_argument("--out", required=True, help="checkpoint folder to write")
    ap.add_argument("--n-layer", type=int, default=4, help="(without --init) a fresh model's size")
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--n-ctx", type=int, default=128)
    ap.add_argument("--dropout", type=float, default=dropout)
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--batch-size", type=int, default=batch_size, help=f"{unit} per micro-batch and process")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=warmup)
    ap.add_argument("--weight-decay", type=float, default=weight_decay)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--eval-every", type=int, default=eval_every)
    ap.add_argument("--seed", type=int, default=1337)
    add_scale_args(ap)


def tuning_settings(args) -> TrainSettings:
    """The TrainSettings of add_run_args's options (a ValueError for contradicting precisions)."""
    return TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, min_lr=args.min_lr,
                         warmup_steps=args.warmup, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
                         eval_every=args.eval_every, seed=args.seed, precision=precision_of(args),
                         grad_accum=args.grad_accum, compile=args.compile)


def precision_of(args) -> str:
    if args.bf16 and args.precision not in (None, "bf16"):
        raise ValueError(f"--bf16 contradicts --precision {args.precision}")
    return "bf16" if args.bf16 else (args.precision or "fp32")


def describe_run(trainer: "Trainer", tokens_per_sequence: int) -> str:
    info = trainer.run_info()
    return (f"device {info['device']}, precision {info['precision']}{', compiled' if info['compile'] else ''}; "
            f"effective batch {info['effective_batch']} = {info['batch_size']} x {info['grad_accum']} accumulation "
            f"x {info['world_size']} process{'es' if info['world_size'] > 1 else ''}"
            f"{' (' + info['backend'] + ')' if info['backend'] else ''}, "
            f"{info['effective_batch'] * tokens_per_sequence:,} tokens per step")


def finish_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpt2core.training.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", nargs="+", required=True, help="training text files (joined with <|endoftext|>)")
    ap.add_argument("--eval-batches", type=int, default=20)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--prompt", default="ROMEO:", help="the fixed prompt sampled at each eval")
    ap.add_argument("--save-every", type=int, default=0, help="save a resumable checkpoint every N steps")
    ap.add_argument("--resume", action="store_true", help="continue from --out")
    ap.add_argument("--until", type=int, default=0,
                    help="stop after this step and save (the schedule still runs to --steps); --resume goes on")
    ap.add_argument("--fp16", action="store_true", help="store the final weights in fp16")
    ap.add_argument("--repeat-fraction", type=float, default=0.0,
                    help="share of each batch's windows in which a span is followed by itself again "
                         "(teaches in-context copying; see gpt2core.training.data.repeated_windows)")
    ap.add_argument("--repeat-random-share", type=float, default=0.5,
                    help="of those windows, the share whose span is random token ids (the rest: text)")
    ap.add_argument("--repeat-pool", choices=REPEAT_POOLS, default="vocab",
                    help="random ids from the whole vocabulary, the ids the training text holds, or its "
                         f"{COMMON_IDS} commonest")
    ap.add_argument("--repeat-fill", action="store_true",
                    help="a random span repeats over its whole window (A A A ...), not just twice")
    ap.add_argument("--reset-unseen", action="store_true",
                    help="(with --init) re-draw the embeddings of token ids the text never contains "
                         "(see reset_unseen_embeddings), so that they can be copied in context")
    ap.add_argument("--spread-embeddings", type=float, default=0.0, metavar="SIGMA",
                    help="(with --init) add N(0, SIGMA) to every token embedding (see spread_embeddings)")
    ap.add_argument("--embedding-lr-scale", type=float, default=1.0,
                    help="the token embedding's learning rate, as a multiple of --lr (0 freezes it)")
    add_run_args(ap, steps=2000, batch_size=16, unit="sequences", dropout=0.1, warmup=100, weight_decay=0.1,
                 eval_every=200)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = setup_distributed(args.device)
        settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, min_lr=args.min_lr,
                                 warmup_steps=args.warmup, weight_decay=args.weight_decay,
                                 grad_clip=args.grad_clip, eval_every=args.eval_every,
                                 eval_batches=args.eval_batches, val_fraction=args.val_fraction, seed=args.seed,
                                 sample_prompt=args.prompt, precision=precision_of(args),
                                 grad_accum=args.grad_accum, compile=args.compile,
                                 repeat_fraction=args.repeat_fraction, repeat_random_share=args.repeat_random_share,
                                 repeat_pool=args.repeat_pool, repeat_fill=args.repeat_fill,
                                 embedding_lr_scale=args.embedding_lr_scale)
    except ValueError as e:
        ap.error(str(e))

    text = read_texts(args.text)
    ids = torch.tensor(tokenizer.encode(text, allow_special=True), dtype=torch.long)
    cfg = GPT2Config(n_ctx=args.n_ctx, n_embd=args.n_embd, n_head=args.n_head, n_layer=args.n_layer,
                     dropout=args.dropout)
    torch.manual_seed(args.seed)   # the same initial weights on every rank
    model = build_model(args.init, cfg, args.dropout).to(device)
    if args.reset_unseen:
        if not args.init:
            ap.error("--reset-unseen needs --init: a fresh model's embeddings are all freshly drawn")
        if not args.resume:
            n_reset = reset_unseen_embeddings(model, ids)   # seed 0, whatever --seed: the rows are part of the start
            print(f"re-drew the embeddings of {n_reset:,} ids the text never contains", file=sys.stderr)
    if args.spread_embeddings:
        if not args.init:
            ap.error("--spread-embeddings needs --init")
        if not args.resume:
            spread_embeddings(model, args.spread_embeddings)   # seed 0, like --reset-unseen
    trainer = Trainer.from_ids(model, ids, settings)
    main_rank = trainer.rank == 0
    say = (lambda msg: print(msg, file=sys.stderr)) if main_rank else (lambda msg: None)  # noqa: E731
    out = Path(args.out)
    if args.resume:
        trainer.load_state(out)
        say(f"resumed at step {trainer.step}")
    n_ctx = model.config.n_ctx
    say(f"{len(ids):,} tokens ({len(trainer.train_ids):,} train / {len(trainer.val_ids):,} val), "
        f"{model.num_params():,} parameters{f', from {args.init}' if args.init else ''}")
    say(describe_run(trainer, n_ctx))
    trainer.log["run"] = trainer.run_info()

    from tqdm import tqdm
    tokens_per_step = trainer.effective_batch * n_ctx
    bar = tqdm(total=settings.steps, initial=trainer.step, unit="step", dynamic_ncols=True, disable=not main_rank)
    t0, done0 = time.perf_counter(), trainer.step
    extra = {"data": {"files": [Path(p).name for p in sorted(args.text)], "tokens": len(ids)},
             "init": args.init,
             "command": ("torchrun ... -m gpt2core.training.train " if trainer.world_size > 1 else "python -m gpt2core.training.train ")
             + " ".join(argv if argv is not None else sys.argv[1:])}
    for event in trainer.run(until=args.until or None):
        rate = (trainer.step - done0) * tokens_per_step / (time.perf_counter() - t0)
        bar.set_postfix(loss=f"{event['loss']:.3f}", tok_s=f"{rate:,.0f}")
        bar.update(1)
        if "eval" in event:
            e = event["eval"]
            ind = (f"  induction {e['induction']['first']:.2f} -> {e['induction']['second']:.2f}"
                   if "induction" in e else "")
            bar.write(f"step {e['step']}: train {e['train_loss']:.4f}  val {e['val_loss']:.4f}  "
                      f"ppl {e['val_ppl']:.1f}{ind}  | {e['sample']!r}")
        if args.save_every and trainer.step % args.save_every == 0 and main_rank:
            trainer.log["tokens_per_second"] = rate
            trainer.save(out, extra=extra)
            plot_loss(trainer.log, out / LOSS_PNG)
    bar.close()
    trainer.log["tokens_per_second"] = (trainer.step - done0) * tokens_per_step / max(1e-9, time.perf_counter() - t0)
    if main_rank:
        trainer.save(out, dtype=torch.float16 if args.fp16 else None, extra=extra)
        plot_loss(trainer.log, out / LOSS_PNG)
        say(f"wrote {out / WEIGHTS_FILE} ({trainer.log['tokens_per_second']:,.0f} tokens/s)")
    finish_distributed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
