"""What the Attention tab shows: every head's attention pattern for one prompt, from one forward pass.

Arrays only (numpy), no plotting. Shapes: L = n_layer, H = n_head, T = tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gpt2core import GPT2

from . import to_numpy

PATTERN_HOOK = "blocks.{}.attn.hook_pattern"
SCORES_HOOK = "blocks.{}.attn.hook_attn_scores"


@dataclass
class AttentionRun:
    patterns: np.ndarray                # (L, H, T, T) softmax weights; row = query, column = key
    scores: np.ndarray | None = None    # (H, T, T) pre-softmax scores of ``scores_layer``, NaN where masked
    scores_layer: int | None = None


def future_mask(T: int) -> np.ndarray:
    """(T, T) bool, True where the key comes after the query: the cells GPT-2 is not allowed to see."""
    return np.triu(np.ones((T, T), dtype=bool), k=1)


def attention_run(model: GPT2, ids: list[int], scores_layer: int | None = None) -> AttentionRun:
    """One forward pass capturing every layer's pattern (and one layer's raw scores when asked)."""
    n_layer = model.config.n_layer
    names = [PATTERN_HOOK.format("*")]
    if scores_layer is not None:
        names.append(SCORES_HOOK.format(scores_layer))
    _, cache = model.run_with_cache(list(ids), names=names, last_only=True)   # the view draws no logits
    patterns = to_numpy(cache.stack(PATTERN_HOOK, n_layer).float())
    scores = None
    if scores_layer is not None:
        scores = to_numpy(cache[SCORES_HOOK.format(scores_layer)].float()).copy()
        scores[~np.isfinite(scores)] = np.nan      # -inf (masked) -> NaN, drawn as a gap
    return AttentionRun(patterns, scores, scores_layer)


def head_average(patterns: np.ndarray, layer: int) -> np.ndarray:
    """(T, T) mean over the heads of one layer."""
    return patterns[layer].mean(axis=0)


def query_row(patterns: np.ndarray, layer: int, query: int) -> np.ndarray:
    """(H, query + 1): how one query token splits its attention over the keys it may see, per head."""
    return patterns[layer, :, query, :query + 1]


def pool_patterns(patterns: np.ndarray, max_cells: int) -> tuple[np.ndarray, int]:
    """Shrink (..., T, T) patterns to at most ``max_cells`` x ``max_cells`` for thumbnails.

    Tokens are grouped in runs of ``step`` = ceil(T / max_cells). A cell is the attention a group of
    queries gives to a group of keys: summed over the keys, averaged over the queries, so each row
    still adds up to 1. Cells whose keys all come after all their queries are NaN (masked).
    Returns (pooled, step); step 1 means no pooling.
    """
    T = patterns.shape[-1]
    step = max(1, math.ceil(T / max_cells))
    if step == 1:
        pooled = patterns.astype(np.float32, copy=True)
        pooled[..., future_mask(T)] = np.nan
        return pooled, 1
    starts = np.arange(0, T, step)
    sizes = np.diff(np.append(starts, T))
    summed = np.add.reduceat(patterns.astype(np.float64), starts, axis=-1)    # sum over key groups
    pooled = np.add.reduceat(summed, starts, axis=-2) / sizes[:, None]        # mean over query groups
    last_query = starts + sizes - 1
    masked = starts[None, :] > last_query[:, None]
    pooled[..., masked] = np.nan
    return pooled.astype(np.float32), step
