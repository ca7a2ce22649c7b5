"""What the LayerNorm tab shows: each LayerNorm's per-token mean/std before and after, and the
size (L2 norm) of the residual stream after every block."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gpt2core import GPT2

from . import to_numpy

STAT_HOOKS = ["*hook_in_mean", "*hook_in_var", "*hook_out_mean", "*hook_out_var"]


def layernorm_names(n_layer: int) -> list[tuple[str, str]]:
    """(label, module path) of every LayerNorm in forward order: L0 ln_1, L0 ln_2, ..., ln_f."""
    names = []
    for i in range(n_layer):
        names += [(f"L{i} ln_1", f"blocks.{i}.ln_1"), (f"L{i} ln_2", f"blocks.{i}.ln_2")]
    return names + [("ln_f", "ln_f")]


def stage_labels(n_layer: int) -> list[str]:
    """Where the residual stream is measured: after the embeddings, then after each block."""
    return ["embed"] + [f"L{i}" for i in range(n_layer)]


@dataclass
class LayerNormStats:
    labels: list[str]          # LayerNorm names, N = 2 * n_layer + 1
    in_mean: np.ndarray        # (N, T) mean of each token's vector entering the LayerNorm
    in_std: np.ndarray         # (N, T) its standard deviation (sqrt of the biased variance)
    out_mean: np.ndarray       # (N, T) the same for the LayerNorm's output
    out_std: np.ndarray        # (N, T)
    stages: list[str]          # "embed", "L0", ..., n_layer + 1 entries
    resid_norm: np.ndarray     # (n_layer + 1, T) L2 norm of each token's residual vector


def layernorm_stats(model: GPT2, ids: list[int]) -> LayerNormStats:
    """One forward pass capturing only the LayerNorm statistics and the residual stream."""
    n_layer = model.config.n_layer
    names = STAT_HOOKS + ["blocks.0.hook_resid_pre", "*hook_resid_post"]
    _, cache = model.run_with_cache(list(ids), names=names, last_only=True)   # the view draws no logits
    lns = layernorm_names(n_layer)

    def rows(hook: str) -> np.ndarray:
        return to_numpy(torch.stack([cache[f"{path}.{hook}"] for _, path in lns]).double())

    resid = [cache["blocks.0.hook_resid_pre"]] + [cache[f"blocks.{i}.hook_resid_post"] for i in range(n_layer)]
    resid_norm = to_numpy(torch.stack([r.double().norm(dim=-1) for r in resid]))
    return LayerNormStats(
        labels=[label for label, _ in lns],
        in_mean=rows("hook_in_mean"), in_std=np.sqrt(np.clip(rows("hook_in_var"), 0, None)),
        out_mean=rows("hook_out_mean"), out_std=np.sqrt(np.clip(rows("hook_out_var"), 0, None)),
        stages=stage_labels(n_layer), resid_norm=resid_norm)


def learned_scale_shift(model: GPT2) -> list[tuple[str, float, float]]:
    """(label, mean of weight, mean of bias) per LayerNorm: what sets the 'after' std and mean."""
    out = []
    for label, path in layernorm_names(model.config.n_layer):
        ln = model.get_submodule(path)
        out.append((label, float(ln.weight.detach().double().mean()), float(ln.bias.detach().double().mean())))
    return out


def _code(text: str) -> str:
    """A token string as inline code (a backtick inside would end the code span)."""
    return "`" + text.replace("`", "'") + "`"


def scale_shift_summary(model: GPT2) -> str:
    """The learned weight/bias averages, in one line (1 and 0 at initialisation)."""
    rows = learned_scale_shift(model)
    w = [r[1] for r in rows]
    b = [r[2] for r in rows]
    return (f"In this model the learned scale (weight) of the LayerNorms averages between {min(w):.3g} "
            f"and {max(w):.3g}, and the shift (bias) between {min(b):.3g} and {max(b):.3g} "
            f"(a fresh LayerNorm has scale 1 and shift 0). A tiny ε = {model.config.layer_norm_eps:g} is "
            f"added to the variance before dividing, so a vector with a very small spread comes out "
            f"with a std a little below 1.")


def token_summary(stats: LayerNormStats, token: int, token_str: str) -> str:
    """Plain-words numbers for one token: the range of its input std and its output mean/std."""
    i_std, o_std, o_mean = stats.in_std[:, token], stats.out_std[:, token], stats.out_mean[:, token]
    big = int(np.argmax(i_std))
    return (f"**Token {token} {_code(token_str)}:** entering the {len(stats.labels)} LayerNorms its std ranges "
            f"from {i_std.min():.3g} to {i_std.max():.3g} (largest at {stats.labels[big]}); after them "
            f"the std stays between {o_std.min():.3g} and {o_std.max():.3g} and the mean between "
            f"{o_mean.min():.3g} and {o_mean.max():.3g}.")


def residual_summary(stats: LayerNormStats, tokens: list[str]) -> str:
    """Which token's residual vector ends up the longest, against the median token."""
    first, last = stats.resid_norm[0], stats.resid_norm[-1]
    top = int(np.argmax(last))
    return (f"Median norm over tokens: {np.median(first):.3g} after the embeddings, "
            f"{np.median(last):.3g} after the last block ({stats.stages[-1]}). "
            f"Longest at the end: token {top} {_code(tokens[top])} with {last[top]:.3g}.")
