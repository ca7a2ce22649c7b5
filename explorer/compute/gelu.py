"""What the GELU tab shows: the GELU and ReLU curves with their slopes, and how the GELU inputs and
outputs of each feed-forward layer are spread for a prompt (as histogram counts, not raw values)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gpt2core import GPT2
from gpt2core.reference.model import gelu

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


def abs_quantile(values, q: float) -> float:
    """np.quantile(np.abs(values), q) (its default, linear interpolation), exactly, for a numpy array or a
    tensor. On a tensor without a sort of every value: the two order statistics the interpolation reads
    are among the largest few, found above a threshold guessed from a strided sample and checked by count
    (a full top-k when the guess was too high)."""
    if isinstance(values, np.ndarray):
        return float(np.quantile(np.abs(values), q)) if values.size else math.nan
    a = values.detach().reshape(-1).abs()
    n = a.numel()
    if n == 0:
        return math.nan
    pos = (n - 1) * q
    k = min(int(math.floor(pos)), n - 1)        # the interpolation reads sorted[k] and sorted[k + 1]
    frac = pos - k
    need = n - k                                 # sorted[k:] are the `need` largest values
    top = None
    if need * 8 < n:
        step = max(1, n // 65_536)
        sample = a[::step]
        rank = max(1, int(sample.numel() * (1 - 4 * need / n)))    # 4x the share needed, for margin
        threshold = torch.kthvalue(sample, rank).values
        above = a[a >= threshold]
        if above.numel() >= need:
            top = torch.topk(above, need).values      # descending
    if top is None:
        top = torch.topk(a, need).values         # descending
    lo_v = float(top[need - 1])
    hi_v = float(top[need - 2]) if need >= 2 else lo_v
    # numpy's _lerp: a + (b - a) * t, and b - (b - a) * (1 - t) for t >= 0.5
    diff = hi_v - lo_v
    return hi_v - diff * (1 - frac) if frac >= 0.5 else lo_v + diff * frac


def histogram_edges(values, n_bins: int = N_BINS, quantile: float = RANGE_QUANTILE) -> np.ndarray:
    """Symmetric bin edges around 0 (0 is an edge), wide enough for all but the rarest values.
    ``values``: a numpy array or a tensor (any shape)."""
    if n_bins % 2:
        raise ValueError("n_bins must be even so that 0 is a bin edge")
    size = values.size if isinstance(values, np.ndarray) else values.numel()
    r = nice_ceil(abs_quantile(values, quantile) if size else 1.0)
    return np.linspace(-r, r, n_bins + 1)


def clipped_histogram(values: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, int]:
    """Counts per bin, values outside the edges put in the end bins; also how many were outside.
    The plain numpy reference (gelu_stats counts with ``clipped_histograms``, which gives the same)."""
    lo, hi = edges[0], edges[-1]
    outside = int(np.count_nonzero((values < lo) | (values > hi)))
    counts, _ = np.histogram(np.clip(values, lo, hi), bins=edges)
    return counts.astype(np.int64), outside


def clipped_histograms(tensors, r: float, n_bins: int = N_BINS) -> tuple[np.ndarray, np.ndarray]:
    """``clipped_histogram`` of each tensor with the edges np.linspace(-r, r, n_bins + 1), in a few vector passes.

    Scaled by (n/2) / r, the edges are the whole numbers -n/2..n/2 and a value's bin is floor(x · (n/2) / r)
    + n/2: a few elementwise passes and a bincount, not numpy's per-value search (np.histogram: about 420 ms for
    all 24 tensors of GPT-2 124M at 128 tokens). In numpy, on one core: each tensor is ~400K values, where torch
    spread every pass over both cores and waited for them (21 ms for 12 tensors on 2 AMD EPYC cores, numpy 12).
    Two more bins, one each side, catch the values beyond ±r. The product is rounded to float32: 0 stays an exact
    edge (a negative value stays negative, so the exact zeros GELU makes of large negative inputs sit in the
    first bin at or above 0, as in numpy), while a value within a float32 rounding step of another edge may land
    in the bin next to numpy's. Returns counts (N, n_bins) and outside (N,), the values beyond ±r (counted in
    the end bins)."""
    half = n_bins // 2
    scale = np.float32(half / r)
    counts, outside = [], []
    for t in tensors:
        y = to_numpy(t.float()).reshape(-1) * scale          # float32, a new array: the captured tensor is kept
        at_r = int(np.count_nonzero(y == half))               # x = +r: in the last bin, and not beyond
        # bins -n/2-1 (below -r), -n/2..n/2-1, and n/2 (at or above +r), shifted to start at 0
        np.clip(y, -half - 1, half, out=y)
        np.floor(y, out=y)
        y += half + 1
        c = np.bincount(y.astype(np.intp), minlength=n_bins + 2).astype(np.int64)
        outside.append(int(c[0]) + int(c[-1]) - at_r)
        c[1] += c[0]
        c[-2] += c[-1]
        counts.append(c[1:-1])
    if not counts:
        return np.zeros((0, n_bins), dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.stack(counts), np.array(outside, dtype=np.int64)


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
    """One forward pass capturing only the GELU inputs/outputs; histograms and shares per layer, counted in
    torch on the captured tensors (no stacked copy, no Python loop over values)."""
    if n_bins % 2:
        raise ValueError("n_bins must be even so that 0 is a bin edge")
    n_layer = model.config.n_layer
    _, cache = model.run_with_cache(list(ids), names=["blocks.*.mlp.hook_pre", "blocks.*.mlp.hook_post"],
                                    last_only=True)   # the view draws no logits
    pres = [cache[f"blocks.{i}.mlp.hook_pre"] for i in range(n_layer)]     # each (T, 4d)
    posts = [cache[f"blocks.{i}.mlp.hook_post"] for i in range(n_layer)]
    n_tokens, n_neurons = pres[0].shape
    edges = histogram_edges(torch.cat([p.reshape(-1) for p in pres]), n_bins)
    r = float(edges[-1])
    pre_counts, pre_outside = clipped_histograms(pres, r, n_bins)
    post_counts, post_outside = clipped_histograms(posts, r, n_bins)
    n_values = n_tokens * n_neurons
    # 0 is the middle edge: the bins below it hold exactly the negative inputs.
    neg_share = pre_counts[:, :n_bins // 2].sum(1) / n_values
    # numpy on one core, as clipped_histograms: threshold rounded to float32, as torch compares a float32 tensor
    limit = np.float32(threshold)
    zero_share = np.array([np.count_nonzero(np.abs(to_numpy(p.float())) < limit) for p in posts]) / n_values
    return GeluStats(edges=edges, pre_counts=pre_counts, post_counts=post_counts, pre_outside=pre_outside,
                     post_outside=post_outside, neg_share=neg_share, zero_share=zero_share,
                     threshold=threshold, n_tokens=int(n_tokens), n_neurons=int(n_neurons))


def layer_summary(stats: GeluStats, layer: int) -> str:
    outside = int(stats.pre_outside[layer])
    beyond = (f" {outside:,} inputs beyond ±{stats.edges[-1]:g} are counted in the end bins."
              if outside else "")
    return (f"**Layer {layer}:** of its {stats.n_values:,} GELU inputs ({stats.n_tokens} tokens × "
            f"{stats.n_neurons:,} neurons), **{stats.neg_share[layer]:.1%} are negative**, and "
            f"**{stats.zero_share[layer]:.1%} of the outputs are near zero** (|out| < {stats.threshold:g})."
            f"{beyond}")
