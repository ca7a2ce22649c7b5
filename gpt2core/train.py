"""Training: AdamW (decay on 2-D weights only), warmup + cosine, clipping, evals, resumable.

CLI: ``python -m gpt2core.train --text FILE [FILE ...] --out checkpoints/NAME [options]``.

Every step draws its batch and its dropout from a generator seeded by (seed, step), so a run
that stops and resumes makes exactly the same updates as one that never stopped. Checkpoints
are safetensors + JSON (no pickle), optimiser moments and step included.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors.torch import load_file, save_file

from . import tokenizer
from .config import GPT2Config
from .data import SlidingWindowDataset, random_batch, split_ids
from .generate import generate
from .model import GPT2
from .weights import WEIGHTS_FILE, load, save

OPTIM_FILE, LOG_FILE, LOSS_PNG = "optimizer.safetensors", "log.json", "loss.png"


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
    bf16: bool = False   # bf16 autocast for the matmuls (weights and optimiser stay fp32)

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise ValueError("steps, batch_size and eval_every must be >= 1")
        if not (self.lr > 0 and self.min_lr >= 0):
            raise ValueError("lr must be > 0 and min_lr >= 0")


def lr_at(step: int, s: TrainSettings) -> float:
    """Linear warmup to lr, then cosine down to min_lr at the last step."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    progress = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return s.min_lr + 0.5 * (s.lr - s.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: GPT2, s: TrainSettings) -> torch.optim.AdamW:
    """Weight decay on matrices and embeddings (2-D); none on biases and LayerNorm parameters."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    decay = [p for p in params.values() if p.dim() >= 2]
    no_decay = [p for p in params.values() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=s.lr, betas=s.betas)


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
        x, y = torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items])
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
    """Holds a model, its optimiser and the log; ``run`` yields an event per step."""
    model: GPT2
    settings: TrainSettings
    train_ids: torch.Tensor
    val_ids: torch.Tensor
    step: int = 0
    log: dict = field(default_factory=lambda: {"train": [], "eval": []})

    def __post_init__(self):
        self.optimizer = make_optimizer(self.model, self.settings)

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

    def train_step(self) -> float:
        s, model = self.settings, self.model
        model.train()
        g = torch.Generator().manual_seed(s.seed * 1_000_003 + self.step)
        x, y = random_batch(self.train_ids, model.config.n_ctx, s.batch_size, g)   # (B, n), (B, n)
        lr = lr_at(self.step, s)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # Dropout masks depend on the step alone; fork_rng puts the global generator back after,
        # so training in the app does not reset the random state other requests see.
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.manual_seed(s.seed * 7_919 + self.step)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=s.bf16):
                loss = model.loss(x, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        self.optimizer.step()
        self.step += 1
        entry = {"step": self.step, "loss": loss.item(), "lr": lr, "grad_norm": float(grad_norm)}
        self.log["train"].append(entry)
        return entry["loss"]

    def eval_now(self) -> dict:
        s = self.settings
        train_loss = evaluate(self.model, self.train_ids[-len(self.val_ids) * 4:] if len(self.val_ids) > 1
                              else self.train_ids, s.batch_size, s.eval_batches)
        val_loss = evaluate(self.model, self.val_ids, s.batch_size, s.eval_batches)
        entry = {"step": self.step, "train_loss": train_loss, "val_loss": val_loss,
                 "val_ppl": math.exp(min(val_loss, 50)),
                 "tokens_seen": self.step * s.batch_size * self.model.config.n_ctx,
                 "sample": sample_text(self.model, s.sample_prompt, s.sample_tokens)}
        self.log["eval"].append(entry)
        return entry

    def run(self, until: int | None = None, should_stop: Callable[[], bool] = lambda: False) -> Iterator[dict]:
        """Train to ``until`` (default: settings.steps); yields {"step", "loss", ["eval"]} per step."""
        until = min(until or self.settings.steps, self.settings.steps)
        while self.step < until and not should_stop():
            loss = self.train_step()
            event = {"step": self.step, "loss": loss}
            if self.step % self.settings.eval_every == 0 or self.step == self.settings.steps:
                event["eval"] = self.eval_now()
            yield event

    # ---- checkpoints ----------------------------------------------------------------------
    def save(self, folder, dtype: torch.dtype | None = None, extra: dict | None = None) -> Path:
        """Weights (our format), optimiser moments, step, settings and the log."""
        folder = Path(folder)
        meta = {"train_settings": asdict(self.settings), "step": self.step, **(extra or {})}
        save(self.model, folder, dtype=dtype, metadata=meta)
        names = {id(p): n for n, p in self.model.named_parameters()}
        tensors = {}
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                st = self.optimizer.state.get(p)
                if st:
                    tensors[f"{names[id(p)]}.exp_avg"] = st["exp_avg"].contiguous()
                    tensors[f"{names[id(p)]}.exp_avg_sq"] = st["exp_avg_sq"].contiguous()
                    tensors[f"{names[id(p)]}.step"] = torch.as_tensor(st["step"], dtype=torch.float64).reshape(1)
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
                                           "exp_avg": moments[f"{name}.exp_avg"].clone(),
                                           "exp_avg_sq": moments[f"{name}.exp_avg_sq"].clone()}


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpt2core.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", nargs="+", required=True, help="training text files (joined with <|endoftext|>)")
    ap.add_argument("--out", required=True, help="checkpoint folder to write")
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--n-ctx", type=int, default=128)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--eval-batches", type=int, default=20)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--prompt", default="ROMEO:", help="the fixed prompt sampled at each eval")
    ap.add_argument("--save-every", type=int, default=0, help="save a resumable checkpoint every N steps")
    ap.add_argument("--resume", action="store_true", help="continue from --out")
    ap.add_argument("--fp16", action="store_true", help="store the final weights in fp16")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast while training (fp32 weights)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    text = read_texts(args.text)
    ids = torch.tensor(tokenizer.encode(text, allow_special=True), dtype=torch.long)
    cfg = GPT2Config(n_ctx=args.n_ctx, n_embd=args.n_embd, n_head=args.n_head, n_layer=args.n_layer,
                     dropout=args.dropout)
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, min_lr=args.min_lr,
                             warmup_steps=args.warmup, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
                             eval_every=args.eval_every, eval_batches=args.eval_batches,
                             val_fraction=args.val_fraction, seed=args.seed, sample_prompt=args.prompt,
                             bf16=args.bf16)
    torch.manual_seed(args.seed)
    trainer = Trainer.from_ids(GPT2(cfg), ids, settings)
    out = Path(args.out)
    if args.resume:
        trainer.load_state(out)
        print(f"resumed at step {trainer.step}", file=sys.stderr)
    print(f"{len(ids):,} tokens ({len(trainer.train_ids):,} train / {len(trainer.val_ids):,} val), "
          f"{trainer.model.num_params():,} parameters", file=sys.stderr)

    from tqdm import tqdm
    tokens_per_step = settings.batch_size * cfg.n_ctx
    bar = tqdm(total=settings.steps, initial=trainer.step, unit="step", dynamic_ncols=True)
    t0, done0 = time.perf_counter(), trainer.step
    extra = {"data": {"files": [Path(p).name for p in sorted(args.text)], "tokens": len(ids)},
             "command": "python -m gpt2core.train " + " ".join(argv if argv is not None else sys.argv[1:])}
    for event in trainer.run():
        rate = (trainer.step - done0) * tokens_per_step / (time.perf_counter() - t0)
        bar.set_postfix(loss=f"{event['loss']:.3f}", tok_s=f"{rate:,.0f}")
        bar.update(1)
        if "eval" in event:
            e = event["eval"]
            bar.write(f"step {e['step']}: train {e['train_loss']:.4f}  val {e['val_loss']:.4f}  "
                      f"ppl {e['val_ppl']:.1f}  | {e['sample']!r}")
        if args.save_every and trainer.step % args.save_every == 0:
            trainer.log["tokens_per_second"] = rate
            trainer.save(out, extra=extra)
            plot_loss(trainer.log, out / LOSS_PNG)
    bar.close()
    trainer.log["tokens_per_second"] = (trainer.step - done0) * tokens_per_step / max(1e-9, time.perf_counter() - t0)
    trainer.save(out, dtype=torch.float16 if args.fp16 else None, extra=extra)
    plot_loss(trainer.log, out / LOSS_PNG)
    print(f"wrote {out / WEIGHTS_FILE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
