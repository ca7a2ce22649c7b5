"""What the Sampling tab shows: the next-token distribution at each filter stage, and random draws from it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gpt2core import GPT2
from gpt2core.decoding import sampling
from gpt2core.text.tokenizer import printable, token_bytes

from . import ids_on, to_numpy

KEPT, CUT_GREEDY, CUT_TOP_K, CUT_TOP_P = "kept", "cut by temperature 0", "cut by top-k", "cut by top-p"
STATUSES = (KEPT, CUT_TOP_K, CUT_TOP_P, CUT_GREEDY)


def next_token_logits(model: GPT2, ids: list[int]) -> np.ndarray:
    """The logits (V,) for the token after ``ids``, as float32 numpy (the last n_ctx tokens are used)."""
    ids = list(ids)[-model.config.n_ctx:]
    with torch.no_grad():
        logits = model(ids_on(model, [ids]), last_only=True)[0, -1]
    return to_numpy(logits.float())


def model_fingerprint(model: GPT2) -> tuple:
    """A cheap identity for cached logits: the object, plus a few weights that change whenever it is trained."""
    with torch.no_grad():
        return (id(model), float(model.ln_f.weight.sum()), float(model.ln_f.bias.sum()),
                float(model.lm_head.weight[:4].sum()))


def _settings(top_k: int, top_p: float) -> tuple[int | None, float | None]:
    """The sliders' "off" values (top-k 0, top-p 1) as the core's None."""
    return (int(top_k) or None), (None if top_p >= 1.0 else float(top_p))


def top_indices(values: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n largest values, largest first (ties: lower index first)."""
    n = min(int(n), values.size)
    part = np.argpartition(-values, n - 1)[:n]
    return part[np.lexsort((part, -values[part]))]


@dataclass
class SamplingView:
    """The top tokens (by the model's own probability) and what the filters did to the whole vocabulary."""
    ids: list[int]               # the top-N token ids, most likely first
    tokens: list[str]            # their printable strings (␣ for a space)
    model_probs: np.ndarray      # (N,) softmax of the raw logits
    tempered_probs: np.ndarray   # (N,) after temperature
    final_probs: np.ndarray      # (N,) after top-k and top-p, renormalised: what sampling draws from
    status: list[str]            # (N,) one of STATUSES
    counts: dict[str, int]       # status -> number of tokens in the whole vocabulary
    mass_cut_by_top_k: float     # share of the tempered distribution that top-k removed
    mass_cut_by_top_p: float     # share of the after-top-k distribution that top-p removed
    mass_cut_by_greedy: float    # share of the model distribution that temperature 0 removed
    entropy_bits: dict[str, float]   # "model", "tempered", "final"
    vocab_size: int


def sampling_view(logits, temperature: float, top_k: int, top_p: float, n_top: int = 20) -> SamplingView:
    """Temperature -> top-k -> top-p on one logits vector; top-k 0 and top-p 1 mean "off"."""
    k, p = _settings(top_k, top_p)
    host_logits = torch.as_tensor(np.asarray(logits, dtype=np.float32), device="cpu")   # numpy in: the CPU
    dist = sampling.distribution(host_logits, float(temperature), k, p)
    base, tempered = to_numpy(dist.base), to_numpy(dist.tempered)
    after_k, final = to_numpy(dist.after_top_k), to_numpy(dist.final)
    cut_k, cut_p = to_numpy(dist.cut_by_top_k), to_numpy(dist.cut_by_top_p)
    logits_np = np.asarray(logits, dtype=np.float32)
    greedy = float(temperature) < sampling.GREEDY_TEMPERATURE
    greedy_cut = (logits_np != logits_np.max()) if greedy else np.zeros(base.shape, dtype=bool)
    code = np.zeros(base.shape, dtype=np.int8)            # index into STATUSES
    code[greedy_cut] = STATUSES.index(CUT_GREEDY)
    code[cut_k] = STATUSES.index(CUT_TOP_K)
    code[cut_p] = STATUSES.index(CUT_TOP_P)
    top = top_indices(base, n_top)
    return SamplingView(
        ids=top.tolist(),
        tokens=[printable(token_bytes(int(i))) for i in top],
        model_probs=base[top], tempered_probs=tempered[top], final_probs=final[top],
        status=[STATUSES[c] for c in code[top]],
        counts=dict(zip(STATUSES, np.bincount(code, minlength=len(STATUSES)).tolist())),
        mass_cut_by_top_k=float(tempered[cut_k].sum()),
        mass_cut_by_top_p=float(after_k[cut_p].sum()),
        mass_cut_by_greedy=float(base[greedy_cut].sum()),
        entropy_bits=dist.entropy_bits,
        vocab_size=int(base.size),
    )


def final_distribution(logits, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """The distribution sampling draws from (V,), float64."""
    k, p = _settings(top_k, top_p)
    host_logits = torch.as_tensor(np.asarray(logits, dtype=np.float32), device="cpu")   # numpy in: the CPU
    dist = sampling.distribution(host_logits, float(temperature), k, p)
    return to_numpy(dist.final.double())


def draw_counts(final_probs: np.ndarray, n_draws: int, seed: int) -> np.ndarray:
    """How often each token came up in ``n_draws`` draws (V,), with a generator seeded for this request only."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    probs = torch.as_tensor(np.asarray(final_probs, dtype=np.float64), device="cpu")   # the generator's device
    draws = torch.multinomial(probs, int(n_draws), replacement=True, generator=generator)
    return np.bincount(to_numpy(draws), minlength=probs.numel())


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Half the summed absolute difference: the most probability any event can differ by (0 = equal, 1 = disjoint)."""
    return float(0.5 * np.abs(np.asarray(p, dtype=np.float64) - np.asarray(q, dtype=np.float64)).sum())


@dataclass
class DrawsView:
    ids: list[int]               # the tokens shown: top by expected probability, then any other drawn ones
    tokens: list[str]
    expected: np.ndarray         # final probability of each shown token
    observed: np.ndarray         # observed frequency (count / n_draws)
    counts: np.ndarray           # raw counts
    other_expected: float        # the same for every token not shown, lumped together
    other_observed: float
    n_draws: int
    n_distinct: int              # different tokens that came up at least once
    tvd: float                   # total variation distance over the whole vocabulary


def draws_view(final_probs: np.ndarray, counts: np.ndarray, n_top: int = 20) -> DrawsView:
    """Observed frequencies next to the expected probabilities for the most likely tokens."""
    final_probs = np.asarray(final_probs, dtype=np.float64)
    counts = np.asarray(counts)
    n = int(counts.sum())
    freq = counts / max(n, 1)
    candidates = np.union1d(top_indices(final_probs, n_top), np.flatnonzero(counts))
    order = np.lexsort((candidates, -counts[candidates], -final_probs[candidates]))  # expected, then drawn
    top = candidates[order][:n_top]
    top = top[(final_probs[top] > 0) | (counts[top] > 0)]
    rest = np.ones(final_probs.size, dtype=bool)
    rest[top] = False
    return DrawsView(
        ids=top.tolist(), tokens=[printable(token_bytes(int(i))) for i in top],
        expected=final_probs[top], observed=freq[top], counts=counts[top],
        other_expected=float(final_probs[rest].sum()), other_observed=float(freq[rest].sum()),
        n_draws=n, n_distinct=int((counts > 0).sum()), tvd=total_variation(freq, final_probs))


def share(x: float) -> str:
    """A probability as a percentage that never rounds a little to 0% or almost everything to 100%."""
    if 0 < x < 0.001:
        return "<0.1%"
    if 0.999 < x < 1:
        return ">99.9%"
    return f"{x:.1%}"


def fair_pick(bits: float) -> str:
    """2^bits: how many equally likely tokens would be this uncertain."""
    n = 2.0 ** bits
    return f"{n:,.0f}" if n >= 100 else f"{n:.1f}"


def summary_markdown(view: SamplingView, temperature: float, top_k: int, top_p: float) -> str:
    """The counts, removed probability and entropies, in plain words."""
    c = view.counts
    lines = ["| step | tokens removed | probability removed |", "|---|---:|---:|"]
    if temperature < sampling.GREEDY_TEMPERATURE:
        lines.append(f"| temperature 0 (greedy: only the most likely token stays) | {c[CUT_GREEDY]:,} | "
                     f"{share(view.mass_cut_by_greedy)} of the model's probability |")
    else:
        lines.append(f"| temperature {temperature:g} (reshapes, removes nothing) | 0 | 0% |")
    lines.append(f"| top-k {'off' if not top_k else f'= {int(top_k)}'} | {c[CUT_TOP_K]:,} | "
                 f"{share(view.mass_cut_by_top_k)} of the tempered probability |")
    lines.append(f"| top-p {'off' if top_p >= 1 else f'= {top_p:g}'} | {c[CUT_TOP_P]:,} | "
                 f"{share(view.mass_cut_by_top_p)} of what top-k left |")
    e = {name: max(bits, 0.0) for name, bits in view.entropy_bits.items()}   # no "-0.00" from rounding
    lines += ["", f"**{c[KEPT]:,}** of {view.vocab_size:,} tokens pass every filter. "
              f"**Entropy** (how unsure the choice is, in bits): model {e['model']:.2f} → "
              f"after temperature {e['tempered']:.2f} → final {e['final']:.2f}. "
              f"0 bits means one certain token; {e['final']:.2f} bits is as unsure as a fair pick "
              f"among about {fair_pick(e['final'])} tokens."]
    return "\n".join(lines)


def draws_markdown(view: DrawsView) -> str:
    return (f"{view.n_draws:,} draws gave {view.n_distinct:,} different tokens. "
            f"**Total variation distance** between the observed frequencies and the expected probabilities: "
            f"**{view.tvd:.3f}** (0 = identical; it shrinks as you draw more).")
