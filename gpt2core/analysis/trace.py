"""The forward pass step by step, for one token: every intermediate tensor, in the order the model makes it.

``trace(model, ids, position)`` runs the model once with ``run_with_cache`` and reads each step off
that one capture. It is not a second implementation of the model: where a step's tensor has a hook
point it is the captured tensor; where it has none (the scores before the mask, the heads
concatenated, a LayerNorm's scaled output, the residual sums, the logits of one position) it is made
from captured tensors with one line of torch, and the tests check those lines against the model.

    python -m gpt2core.analysis.trace "some text" [--weights PATH] [--position N] [--block N]

prints the same steps as a log (name, shape, statistics), like the notebooks' verbose debugging.
"""
from __future__ import annotations

import argparse
import functools
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..text import tokenizer
from ..reference.model import GPT2

# Every hook the trace reads, per block and for the ends of the model.
BLOCK_HOOKS = ["hook_resid_pre", "ln_1.hook_in_mean", "ln_1.hook_in_var", "ln_1.hook_normalized",
               "ln_1.hook_out_mean", "ln_1.hook_out_var", "attn.hook_q", "attn.hook_k", "attn.hook_v",
               "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "hook_attn_out",
               "ln_2.hook_in_mean", "ln_2.hook_in_var", "ln_2.hook_normalized", "ln_2.hook_out_mean",
               "ln_2.hook_out_var", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out"]
SUMMARY_HOOKS = ["hook_resid_pre", "hook_resid_post"]   # a block that is not expanded: its norms only
TOP_K = 5
# The bundled model: checkpoints/ at the repo root in a checkout (or `pip install -e .`); a wheel has no
# repo root and carries that folder as gpt2core/_bundled/checkpoints (pyproject.toml).
_HERE = Path(__file__).resolve().parents[1]   # the gpt2core folder
_DATA_ROOT = _HERE / "_bundled" if (_HERE / "_bundled").is_dir() else _HERE.parent
DEFAULT_WEIGHTS = _DATA_ROOT / "checkpoints" / "shakespeare"


@dataclass
class Step:
    """One step of the forward pass, seen from one token.

    ``vector`` is that token's slice of the step's tensor: (d,), (4d,), (vocab,), or per head
    (nh, hs) and (nh, T) for the attention steps. Masked scores are -inf; the statistics skip them.
    """
    key: str                       # stable id: "embed.wte", "blocks.3.attn.scores", "final.top5"
    name: str                      # what a student reads: "q (queries, split into heads)"
    formula: str                   # one line
    shape: tuple[int, ...]         # the step's tensor for the whole prompt
    vector: torch.Tensor           # the chosen token's part of it
    block: int | None = None       # None: before the blocks or after them
    notes: dict = field(default_factory=dict)   # extra computed facts (LayerNorm mean/std, top tokens)

    @functools.cached_property
    def stats(self) -> dict[str, float]:
        """mean, std (population), min, max and L2 norm of the vector's finite entries (made once: the
        tab and the log both read them)."""
        # numpy, not torch: a GPT-2 trace has 198 steps, mostly of a few thousand numbers, where torch's per-call
        # overhead outweighs the work (and its float64 copy of a vocabulary-sized vector took ~1 ms here): all of
        # them took 24-29 ms in torch, 6 ms in numpy (128 tokens, 2 AMD EPYC cores).
        t = self.vector.detach()
        if t.dtype not in (torch.float32, torch.float64):                       # bf16 / fp16: numpy has no bf16
            t = t.float()
        v = t.cpu().numpy().astype(np.float64).ravel()
        finite = np.isfinite(v)
        if not finite.all():
            v = v[finite]                                                        # (n,) masked scores dropped
        if v.size == 0:
            return dict(mean=math.nan, std=math.nan, min=math.nan, max=math.nan, norm=math.nan)
        return dict(mean=float(v.mean()), std=float(v.std()), min=float(v.min()), max=float(v.max()),
                    norm=float(np.sqrt(np.square(v).sum())))


@dataclass
class BlockSummary:
    """A block seen from one token: its residual vector's norm coming in and going out."""
    index: int
    norm_in: float
    norm_out: float


@dataclass
class Trace:
    ids: list[int]
    position: int
    steps: list[Step]                 # in forward order; only the expanded blocks have their steps here
    blocks: list[BlockSummary]        # every block
    expanded: list[int]               # which blocks have their steps listed
    logits: torch.Tensor              # (vocab,) the chosen position's logits
    config: object

    def block_steps(self, i: int) -> list[Step]:
        return [s for s in self.steps if s.block == i]

    @property
    def embed_steps(self) -> list[Step]:
        return [s for s in self.steps if s.key.startswith("embed.")]

    @property
    def final_steps(self) -> list[Step]:
        return [s for s in self.steps if s.key.startswith("final.")]

    def step(self, key: str) -> Step:
        for s in self.steps:
            if s.key == key:
                return s
        raise KeyError(key)


def token_text(token_id: int) -> str:
    """A token as printable text (␣ for a leading space, escapes for bytes that are not text)."""
    return tokenizer.printable(tokenizer.token_bytes(int(token_id)))


def _std(var: torch.Tensor) -> float:
    return float(var.double().sqrt())


def _layer_norm_notes(cache, prefix: str, t: int) -> dict:
    """The LayerNorm's statistics for token t: mean and std of what enters and what leaves."""
    return dict(mean_in=float(cache[f"{prefix}.hook_in_mean"][t]), std_in=_std(cache[f"{prefix}.hook_in_var"][t]),
                mean_out=float(cache[f"{prefix}.hook_out_mean"][t]),
                std_out=_std(cache[f"{prefix}.hook_out_var"][t]))


@torch.no_grad()
def trace(model: GPT2, ids, position: int = -1, blocks=None) -> Trace:
    """The steps of the forward pass for token ``position`` (negative counts from the end).

    ``blocks``: the blocks whose steps to list (None: all); every block gets its BlockSummary.
    One forward pass; what is captured is what the listed steps show.
    """
    ids = [int(i) for i in ids]
    cfg = model.config
    T, d, nh, hs, L = len(ids), cfg.n_embd, cfg.n_head, cfg.head_dim, cfg.n_layer
    if T == 0:
        raise ValueError("the prompt has no tokens")
    if T > cfg.n_ctx:
        raise ValueError(f"{T} tokens exceed the model's context of {cfg.n_ctx}")
    t = position + T if position < 0 else position
    if not 0 <= t < T:
        raise ValueError(f"position {position} is outside the prompt's {T} tokens")
    expanded = list(range(L)) if blocks is None else sorted({int(b) for b in blocks})
    if any(not 0 <= b < L for b in expanded):
        raise ValueError(f"blocks must be in 0..{L - 1}, got {expanded}")

    names = ["hook_embed", "hook_pos_embed", "ln_f.hook_normalized", "ln_f.hook_in_mean", "ln_f.hook_in_var",
             "ln_f.hook_out_mean", "ln_f.hook_out_var"]
    for i in range(L):
        names += [f"blocks.{i}.{h}" for h in (BLOCK_HOOKS if i in expanded else SUMMARY_HOOKS)]
    # The trace computes the chosen position's logits itself, so the head runs for one position only.
    _, cache = model.run_with_cache(ids, names=names, last_only=True)

    steps: list[Step] = []
    tok, wte_row = ids[t], cache["hook_embed"]                                    # (T, d)
    x0 = cache["blocks.0.hook_resid_pre"]                                         # (T, d) what block 0 reads
    steps += [
        Step("embed.wte", f"token embedding: row {tok} of wte", f"wte[{tok}]  ({token_text(tok)!r})",
             tuple(wte_row.shape), wte_row[t]),
        Step("embed.wpe", f"position embedding: row {t} of wpe", f"wpe[{t}]",
             tuple(cache["hook_pos_embed"].shape), cache["hook_pos_embed"][t]),
        Step("embed.sum", "their sum: the residual stream x", "x = wte[token] + wpe[position]",
             tuple(x0.shape), x0[t]),
    ]

    summaries = []
    for i in range(L):
        resid_in = cache[f"blocks.{i}.hook_resid_pre"]                            # (T, d)
        if i not in expanded:
            resid_out = cache[f"blocks.{i}.hook_resid_post"]                      # (T, d)
            summaries.append(BlockSummary(i, float(resid_in[t].norm()), float(resid_out[t].norm())))
            continue
        block, p = model.blocks[i], f"blocks.{i}"
        c = lambda name: cache[f"{p}.{name}"]  # noqa: E731
        # Token t's row only of what is made here (a step shows that row, and the whole prompt's shape): the
        # same numbers, without 12 blocks' worth of work on rows no step reads.
        ln1 = c("ln_1.hook_normalized")[t] * block.ln_1.weight + block.ln_1.bias    # (d,) row t of (T, d)
        q, k, v = c("attn.hook_q"), c("attn.hook_k"), c("attn.hook_v")            # (nh, T, hs) each
        raw_scores = q[:, t:t + 1] @ k.transpose(-2, -1) / math.sqrt(hs)          # (nh, 1, T) of (nh, T, T)
        scores, pattern, z = c("attn.hook_attn_scores"), c("attn.hook_pattern"), c("attn.hook_z")
        heads = z[t].reshape(d)                                                   # (d,) of (T, d): heads side by side
        attn_out = c("hook_attn_out")                                             # (T, d) after c_proj
        resid_mid = resid_in[t] + attn_out[t]                                     # (d,) of (T, d)
        ln2 = c("ln_2.hook_normalized")[t] * block.ln_2.weight + block.ln_2.bias    # (d,) of (T, d)
        pre, post, mlp_out = c("mlp.hook_pre"), c("mlp.hook_post"), c("hook_mlp_out")  # (T, 4d), (T, 4d), (T, d)
        resid_out = resid_mid + mlp_out[t]                                        # (d,) of (T, d)
        masked = T - 1 - t
        steps += [
            Step(f"{p}.ln_1", "ln_1 (LayerNorm before attention)", "ln_1(x) = (x - mean) / sqrt(var + eps) * γ + β",
                 (T, d), ln1, i, _layer_norm_notes(cache, f"{p}.ln_1", t)),
            Step(f"{p}.attn.q", "q: queries, split into heads", "q = ln_1(x) W_q + b_q, viewed (nh, T, hs)",
                 tuple(q.shape), q[:, t], i),
            Step(f"{p}.attn.k", "k: keys, split into heads", "k = ln_1(x) W_k + b_k, viewed (nh, T, hs)",
                 tuple(k.shape), k[:, t], i),
            Step(f"{p}.attn.v", "v: values, split into heads", "v = ln_1(x) W_v + b_v, viewed (nh, T, hs)",
                 tuple(v.shape), v[:, t], i),
            Step(f"{p}.attn.scores", "scores: this query against every key", f"scores = q · kᵀ / √{hs}",
                 tuple(scores.shape), raw_scores[:, 0], i),
            Step(f"{p}.attn.masked", "causal mask: later keys set to -inf",
                 "scores[j > i] = -inf", tuple(scores.shape), scores[:, t], i,
                 dict(masked_keys=masked, visible_keys=t + 1)),
            Step(f"{p}.attn.pattern", "softmax: attention weights (each head's row adds up to 1)",
                 "pattern = softmax(scores) over the keys", tuple(pattern.shape), pattern[:, t], i),
            Step(f"{p}.attn.z", "z: weighted sum of the values, per head", "z = pattern @ v",
                 tuple(z.transpose(0, 1).shape), z[t], i),
            Step(f"{p}.attn.heads", "heads concatenated", f"concat(z_0 … z_{nh - 1}): (nh, hs) → ({d},)",
                 (T, d), heads, i),
            Step(f"{p}.attn.c_proj", "c_proj: attention output", "attn = concat(z) W_o + b_o",
                 tuple(attn_out.shape), attn_out[t], i),
            Step(f"{p}.resid_mid", "residual add", "x = x + attn", (T, d), resid_mid, i),
            Step(f"{p}.ln_2", "ln_2 (LayerNorm before the MLP)", "ln_2(x) = (x - mean) / sqrt(var + eps) * γ + β",
                 (T, d), ln2, i, _layer_norm_notes(cache, f"{p}.ln_2", t)),
            Step(f"{p}.mlp.c_fc", f"c_fc: up to 4d = {4 * d}", "h = ln_2(x) W_fc + b_fc",
                 tuple(pre.shape), pre[t], i),
            Step(f"{p}.mlp.gelu", "GELU", "gelu(h) = 0.5 h (1 + tanh(√(2/π) (h + 0.044715 h³)))",
                 tuple(post.shape), post[t], i),
            Step(f"{p}.mlp.c_proj", f"c_proj: back down to d = {d}", "mlp = gelu(h) W_proj + b_proj",
                 tuple(mlp_out.shape), mlp_out[t], i),
            Step(f"{p}.resid_post", "residual add", "x = x + mlp", (T, d), resid_out, i),
        ]
        summaries.append(BlockSummary(i, float(resid_in[t].norm()), float(resid_out.norm())))

    ln_f = cache["ln_f.hook_normalized"][t] * model.ln_f.weight + model.ln_f.bias   # (d,)
    logits = model.lm_head(ln_f)                                                  # (vocab,) this position only
    probs = torch.softmax(logits.double(), -1)                                    # (vocab,)
    top_p, top_i = probs.topk(TOP_K)
    top = [(int(j), token_text(j), float(pr)) for j, pr in zip(top_i, top_p)]
    V = cfg.vocab_size
    steps += [
        Step("final.ln_f", "ln_f (final LayerNorm)", "ln_f(x) = (x - mean) / sqrt(var + eps) * γ + β",
             (T, d), ln_f, None, _layer_norm_notes(cache, "ln_f", t)),
        Step("final.logits", "logits: a score for every token in the vocabulary",
             "logits = ln_f(x) · wteᵀ" if cfg.tie_weights else "logits = ln_f(x) W_head", (T, V), logits.detach()),
        Step("final.probs", f"softmax → the top {TOP_K} next tokens", "p = softmax(logits)", (T, V),
             probs.float(), None, dict(top=top)),
    ]
    return Trace(ids, t, steps, summaries, expanded, logits.detach(), cfg)


# ---- the log --------------------------------------------------------------------------------

def _shape(shape) -> str:
    return f"({shape[0]},)" if len(shape) == 1 else "(" + ", ".join(str(s) for s in shape) + ")"


def _stats_line(step: Step) -> str:
    s = step.stats
    return (f"mean {s['mean']:+.4f}  std {s['std']:.4f}  min {s['min']:+.4f}  max {s['max']:+.4f}  "
            f"|v| {s['norm']:.4f}")


def step_lines(step: Step) -> list[str]:
    """A step as log lines: name and formula, then shape, the token's part and its statistics."""
    lines = [f"  {step.key:<24} {step.name}", f"      {step.formula}",
             f"      shape {_shape(step.shape):<16} token {_shape(tuple(step.vector.shape)):<12} {_stats_line(step)}"]
    n = step.notes
    if "mean_in" in n:
        lines.append(f"      before: mean {n['mean_in']:+.4f} std {n['std_in']:.4f}   after: mean {n['mean_out']:+.4f} "
                     f"std {n['std_out']:.4f}")
    if "masked_keys" in n:
        lines.append(f"      {n['visible_keys']} keys visible, {n['masked_keys']} masked "
                     "(statistics over the visible ones)")
    if "top" in n:
        lines += [f"      {r + 1}. {text!r:<16} id {j:<6} p = {p:.4f}" for r, (j, text, p) in enumerate(n["top"])]
    return lines


def format_log(tr: Trace) -> str:
    """The whole trace as text: one header, the embedding, each block (steps or one line), the output."""
    cfg, t = tr.config, tr.position
    tok = tr.ids[t]
    out = [f"GPT-2 forward pass: {len(tr.ids)} tokens, n_layer {cfg.n_layer}, n_head {cfg.n_head}, "
           f"n_embd {cfg.n_embd}, head size {cfg.head_dim}, vocab {cfg.vocab_size}",
           f"following token {t} of {len(tr.ids)}: {token_text(tok)!r} (id {tok})", "", "[embedding]"]
    for s in tr.embed_steps:
        out += step_lines(s)
    for b in tr.blocks:
        out.append("")
        if b.index in tr.expanded:
            out.append(f"[block {b.index}]  |x| {b.norm_in:.4f} -> {b.norm_out:.4f}")
            for s in tr.block_steps(b.index):
                out += step_lines(s)
        else:
            out.append(f"[block {b.index}]  |x| {b.norm_in:.4f} -> {b.norm_out:.4f}  (not expanded)")
    out += ["", "[output]"]
    for s in tr.final_steps:
        out += step_lines(s)
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gpt2core.analysis.trace",
        description="Follow one token through GPT-2's forward pass and print every step: its shape "
                    "and the token's statistics (mean, std, min, max, L2 norm).")
    parser.add_argument("text", help="the prompt")
    parser.add_argument("--weights", default=None,
                        help="checkpoint folder (ours or Hugging Face format); default: the bundled "
                             "checkpoints/shakespeare")
    parser.add_argument("--position", type=int, default=-1, help="token to follow (default -1: the last)")
    parser.add_argument("--block", type=int, default=None,
                        help="list the steps of this block only (the others get one line); default: all")
    args = parser.parse_args(argv)

    from ..reference.weights import WeightsError, load
    try:
        model = load(args.weights or DEFAULT_WEIGHTS).eval()
    except (WeightsError, OSError) as e:
        print(f"error: could not load weights: {e}", file=sys.stderr)
        return 2
    ids = tokenizer.encode(args.text)
    if not ids:
        print("error: the text is empty", file=sys.stderr)
        return 2
    if len(ids) > model.config.n_ctx:
        ids = ids[-model.config.n_ctx:]
        print(f"note: only the last {model.config.n_ctx} tokens are used (the model's context)", file=sys.stderr)
    try:
        tr = trace(model, ids, args.position, None if args.block is None else [args.block])
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(format_log(tr))
    return 0


if __name__ == "__main__":
    sys.exit(main())
