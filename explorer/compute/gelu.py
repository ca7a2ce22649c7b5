"""What the GELU tab shows: the GELU and ReLU curves with their slopes, and how the GELU inputs and
outputs of each feed-forward layer are spread for a prompt (as histogram counts, not raw values)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gpt2core import GPT2
from gpt2core.model import gelu

from . import to_numpy

X_RANGE = (-4.0, 4.0)
N_POINTS = 321            # curve samples: a step of 0.025
NEAR_ZERO = 0.01          # an output with |out| below this counts as "near zero"
N_BINS = 80               # histogram bins, the same edges for every layer, inputs and outputs
RANGE_QUANTILE = 0.999    # the histogram spans ±(this quantile of |input|), rounded up to a round number


@dataclass
class Curves:
    x: np.ndarray
    gelu: np.ndarray          # GPT-2's GELU (tanh approximation)
    gelu_grad: np.ndarray     # its derivative, by torch autograd
    relu: np.ndarray
    relu_grad: np.ndarray     # 0 for x <= 0, 1 for x > 0
    gelu_exact: np.ndarray    # x * Phi(x) with the exact normal CDF (erf)
    max_diff_exact: float     # largest |tanh approximation - exact| on the grid
    min_gelu: float           # the lowest GELU value on the grid (GELU dips below 0)
    argmin_gelu: float        # where it dips lowest


def gelu_curves(lo: float = X_RANGE[0], hi: float = X_RANGE[1], n: int = N_POINTS) -> Curves:
    with torch.enable_grad():
        grid = np.round(np.linspace(lo, hi, n), 10)   # rounded so the middle point is exactly 0
        x = torch.tensor(grid, dtype=torch.float64, device="cpu", requires_grad=True)   # no model: the CPU
        y = gelu(x)
        (grad,) = torch.autograd.grad(y.sum(), x)
    x, y = x.detach(), y.detach()
    exact = F.gelu(x)  # approximate="none": x * Phi(x) via erf
    low = int(torch.argmin(y))
    return Curves(x=to_numpy(x), gelu=to_numpy(y), gelu_grad=to_numpy(grad), relu=to_numpy(x.clamp(min=0)),
                  relu_grad=to_numpy((x > 0).double()), gelu_exact=to_numpy(exact),
                  max_diff_exact=float((y - exact).abs().max()), min_gelu=float(y[low]),
                  argmin_gelu=float(x[low]))


def curves_summary(c: Curves) -> str:
    mid = int(np.argmin(np.abs(c.x)))
    return (f"GELU dips below zero: its lowest value on this grid is {c.min_gelu:.3f} at x = {c.argmin_gelu:.2f}. "
            f"At x = 0 its slope is {c.gelu_grad[mid]:.3f}, where ReLU's slope jumps from 0 to 1. "
            f"GPT-2's tanh formula differs from the exact GELU (x·Φ(x), with the normal CDF Φ) by at most "
            f"{c.max_diff_exact:.1e} on [{c.x[0]:g}, {c.x[-1]:g}].")


def nice_ceil(value: float) -> float:
    """The smallest 'round' number (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8 × 10^k) that is >= value."""
    if not math.isfinite(value) or value <= 0:
        return 1.0
    base = 10.0 ** math.floor(math.log10(value))
    for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * base >= value * (1 - 1e-12):
            return m * base
    return 10 * base


def histogram_edges(values: np.ndarray, n_bins: int = N_BINS, quantile: float = RANGE_QUANTILE) -> np.ndarray:
    """Symmetric bin edges around 0 (0 is an edge), wide enough for all but the rarest values."""
    if n_bins % 2:
        raise ValueError("n_bins must be even so that 0 is a bin edge")
    r = nice_ceil(float(np.quantile(np.abs(values), quantile)) if values.size else 1.0)
    return np.linspace(-r, r, n_bins + 1)


def clipped_histogram(values: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, int]:
    """Counts per bin, values outside the edges put in the end bins; also how many were outside."""
    lo, hi = edges[0], edges[-1]
    outside = int(np.count_nonzero((values < lo) | (values > hi)))
    counts, _ = np.histogram(np.clip(values, lo, hi), bins=edges)
    return counts.astype(np.int64), outside


@dataclass
class GeluStats:
    edges: np.ndarray            # (n_bins + 1,) shared by all layers, inputs and outputs
    pre_counts: np.ndarray       # (L, n_bins) GELU inputs per bin
    post_counts: np.ndarray      # (L, n_bins) GELU outputs per bin
    pre_outside: np.ndarray      # (L,) inputs beyond the edges (counted in the end bins)
    post_outside: np.ndarray     # (L,)
    neg_share: np.ndarray        # (L,) share of inputs < 0
    zero_share: np.ndarray       # (L,) share of outputs with |out| < threshold
    threshold: float
    n_tokens: int
    n_neurons: int               # 4d, the feed-forward width

    @property
    def n_values(self) -> int:
        """Values per layer: tokens x neurons."""
        return self.n_tokens * self.n_neurons


def gelu_stats(model: GPT2, ids: list[int], threshold: float = NEAR_ZERO, n_bins: int = N_BINS) -> GeluStats:
    """One forward pass capturing only the GELU inputs/outputs; histograms and shares per layer."""
    n_layer = model.config.n_layer
    _, cache = model.run_with_cache(list(ids), names=["blocks.*.mlp.hook_pre", "blocks.*.mlp.hook_post"],
                                    last_only=True)   # the view draws no logits
    pre = to_numpy(cache.stack("blocks.{}.mlp.hook_pre", n_layer))     # (L, T, 4d)
    post = to_numpy(cache.stack("blocks.{}.mlp.hook_post", n_layer))   # (L, T, 4d)
    edges = histogram_edges(pre, n_bins)
    pre_hist = [clipped_histogram(pre[i].ravel(), edges) for i in range(n_layer)]
    post_hist = [clipped_histogram(post[i].ravel(), edges) for i in range(n_layer)]
    return GeluStats(
        edges=edges,
        pre_counts=np.stack([h[0] for h in pre_hist]), post_counts=np.stack([h[0] for h in post_hist]),
        pre_outside=np.array([h[1] for h in pre_hist]), post_outside=np.array([h[1] for h in post_hist]),
        neg_share=(pre < 0).mean(axis=(1, 2)), zero_share=(np.abs(post) < threshold).mean(axis=(1, 2)),
        threshold=threshold, n_tokens=pre.shape[1], n_neurons=pre.shape[2])


def layer_summary(stats: GeluStats, layer: int) -> str:
    outside = int(stats.pre_outside[layer])
    beyond = (f" {outside:,} inputs beyond ±{stats.edges[-1]:g} are counted in the end bins."
              if outside else "")
    return (f"**Layer {layer}:** of its {stats.n_values:,} GELU inputs ({stats.n_tokens} tokens × "
            f"{stats.n_neurons:,} neurons), **{stats.neg_share[layer]:.1%} are negative**, and "
            f"**{stats.zero_share[layer]:.1%} of the outputs are near zero** (|out| < {stats.threshold:g})."
            f"{beyond}")
