"""The same prompt through the model in each number format, against fp32.

``gpt2core.kernels.backend.precision(p)`` runs the model's matrix products in ``p`` ("fp32", "bf16", "fp16",
"int8"); LayerNorm, softmax, GELU and the residual stream stay fp32, so every logit and cached tensor is
float32 whatever the precision, and the difference to the fp32 run is the rounding of the products alone.

``compare`` runs a prompt once per precision (fp32 first: the reference) and measures what changed:
the next-token prediction, the largest change of any logit and of any attention weight, how often the
most likely token at a position stays the same, the bytes of the weights, and the time of each run.
``error_report`` is the same three error figures for one precision (what the app's status line shows
when it serves in bf16).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..kernels import backend
from ..reference.devices import device_of

REFERENCE = "fp32"
PATTERN_HOOKS = "*attn.hook_pattern"


def precisions() -> tuple[str, ...]:
    return tuple(backend.PRECISIONS)


@dataclass
class ErrorReport:
    """One precision against fp32 on one prompt."""
    precision: str
    n_tokens: int
    max_logit_delta: float                      # max |logit - fp32 logit| over every position and token
    top1_agreement: float                       # fraction of positions whose most likely token is fp32's
    max_attention_delta: float                  # max |attention weight - fp32's| over layers, heads, queries, keys
    attention_where: tuple[int, int, int, int]  # (layer, head, query, key) of that largest change
    logit_delta_by_position: np.ndarray         # (T,) max |Δ logit| at each position
    top1_same: np.ndarray                       # (T,) bool: argmax equals fp32's there


@dataclass
class PrecisionRun(ErrorReport):
    """One precision's run: its error against fp32, its prediction, its cost."""
    top_ids: np.ndarray = None                  # (k,) most likely next tokens after the last position
    top_probs: np.ndarray = None                # (k,) their probabilities (float64 softmax of the logits)
    weight_bytes: int = 0                       # the model's weights as stored for this precision
    seconds: float = 0.0                        # wall time of this run's forward pass


@dataclass
class _Raw:
    logits: torch.Tensor     # (T, V) float32
    patterns: torch.Tensor   # (L, nh, T, T) float32
    seconds: float


def _check(model, precision: str) -> None:
    known = precisions()
    if precision not in known:
        raise ValueError(f"unknown precision {precision!r}; one of {', '.join(known)}")


def _run(model, ids, precision: str) -> _Raw:
    """One full-capture forward of the prompt (T,) in this precision: all logits, every attention pattern."""
    device = device_of(model)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with backend.precision(precision):
        sync()
        start = time.perf_counter()
        logits, cache = model.run_with_cache(ids, names=[PATTERN_HOOKS])
        sync()
        seconds = time.perf_counter() - start
    n_layer = model.config.n_layer
    patterns = torch.stack([cache[f"blocks.{i}.attn.hook_pattern"] for i in range(n_layer)])
    return _Raw(logits.float(), patterns.float(), seconds)


def _as_ids(ids) -> list[int]:
    ids = torch.as_tensor(ids, dtype=torch.long).cpu()
    if ids.dim() != 1 or ids.numel() == 0:
        raise ValueError(f"ids must be one non-empty sequence of token ids, got shape {tuple(ids.shape)}")
    return ids.tolist()


def _errors(precision: str, ref: _Raw, run: _Raw) -> ErrorReport:
    dl = (run.logits - ref.logits).abs()                                     # (T, V)
    by_position = dl.amax(dim=-1)                                            # (T,)
    same = run.logits.argmax(dim=-1) == ref.logits.argmax(dim=-1)            # (T,)
    da = (run.patterns - ref.patterns).abs()                                 # (L, nh, T, T)
    flat = int(da.argmax())
    where = tuple(int(i) for i in np.unravel_index(flat, tuple(da.shape)))
    return ErrorReport(precision, int(ref.logits.shape[0]), float(by_position.max()),
                       float(same.double().mean()), float(da.reshape(-1)[flat]), where,
                       by_position.cpu().numpy().astype(np.float64), same.cpu().numpy())


def _top(logits: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    probs = torch.softmax(logits[-1].double(), dim=-1)
    k = min(k, probs.numel())
    top = torch.topk(probs, k)   # ties: torch's order; the probabilities shown are the run's own
    return top.indices.cpu().numpy(), top.values.cpu().numpy()


def compare(model, ids, precisions=None, top_k: int = 5, between=None) -> list[PrecisionRun]:
    """The prompt ``ids`` (T,) once per precision, fp32 first (the reference; it is run even when not
    asked for, and listed first): each one's top-k next tokens, its error against fp32, its weight bytes
    and its run time. ``between()``, if given, is called before each run after the first (a server lets
    other requests in there)."""
    wanted = list(backend.PRECISIONS if precisions is None else precisions)
    for p in wanted:
        _check(model, p)
    order = [REFERENCE] + [p for p in dict.fromkeys(wanted) if p != REFERENCE]
    ids = _as_ids(ids)
    ref = _run(model, ids, REFERENCE)
    rows = []
    for p in order:
        if p != REFERENCE and between is not None:
            between()
        raw = ref if p == REFERENCE else _run(model, ids, p)
        err = _errors(p, ref, raw)
        top_ids, top_probs = _top(raw.logits, top_k)
        rows.append(PrecisionRun(**err.__dict__, top_ids=top_ids, top_probs=top_probs,
                                 weight_bytes=int(backend.weight_bytes(model, p)), seconds=raw.seconds))
    return rows


def error_report(model, ids, precision: str) -> ErrorReport:
    """max |Δ logit|, top-1 agreement and max |Δ attention weight| of ``precision`` against fp32 on ``ids``."""
    _check(model, precision)
    ids = _as_ids(ids)
    ref = _run(model, ids, REFERENCE)
    return _errors(precision, ref, ref if precision == REFERENCE else _run(model, ids, precision))
