"""Temperature, top-k and top-p as pure functions on logits, and what each of them cut."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Below this temperature sampling is greedy: dividing by ~0 would overflow the softmax.
GREEDY_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 1.0
    top_k: int | None = None      # None or 0: no top-k filter
    top_p: float | None = None    # None or 1.0: no nucleus filter

    def __post_init__(self):
        check_settings(self.temperature, self.top_k, self.top_p)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE


def check_settings(temperature, top_k, top_p) -> None:
    """Raise ValueError with a plain message for settings that make no sense."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"top_k must be a whole number >= 0 (0 = off), got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                              or not math.isfinite(top_p) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p!r}")


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / T. At T below GREEDY_TEMPERATURE only the argmax survives (one-hot in the softmax)."""
    check_settings(temperature, None, None)
    if temperature < GREEDY_TEMPERATURE:
        keep = logits == logits.max(dim=-1, keepdim=True).values
        return logits.masked_fill(~keep, float("-inf"))
    return logits / temperature


def top_k_mask(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Boolean mask of the tokens kept by top-k: exactly k (ties broken by index)."""
    if not k or k >= logits.size(-1):
        return torch.ones_like(logits, dtype=torch.bool)
    # The same set as the first k of a stable descending sort, without sorting 50,257 values
    # (5 ms a call here): everything above the k-th value, then ties at it in index order.
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]                    # (..., 1)
    above = logits > kth
    ties = logits == kth
    room = k - above.sum(-1, keepdim=True)                                   # ties still to keep
    return above | (ties & (ties.cumsum(-1) <= room))


def top_p_mask(logits: torch.Tensor, p: float | None) -> torch.Tensor:
    """Boolean mask of the smallest set of most likely tokens whose probability is at least p."""
    if p is None or p >= 1.0:
        return torch.ones_like(logits, dtype=torch.bool)
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs   # mass of strictly better tokens
    keep_sorted = mass_before < p                                       # the first token is always kept
    return torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """Temperature, then top-k, then top-p (on the tempered distribution); cut tokens get -inf."""
    check_settings(temperature, top_k, top_p)
    x = apply_temperature(logits.float(), temperature)
    # A filter that is off keeps every token: skipped, as its masks would cost ~0.7 ms a token (50,257 values).
    if top_k and top_k < x.size(-1):
        x = x.masked_fill(~top_k_mask(x, top_k), float("-inf"))
    if top_p is not None and top_p < 1.0:
        x = x.masked_fill(~top_p_mask(x, top_p), float("-inf"))
    return x


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in bits of probability vectors on the last axis."""
    p = probs.clamp_min(0)
    return -(p * torch.log2(p.clamp_min(1e-45))).sum(-1)


def draw(logits: torch.Tensor, filtered_probs: torch.Tensor | None, temperature: float,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row: the argmax when greedy, else a draw from ``filtered_probs``
    (softmax of filter_logits, which a caller that also reports it computes once)."""
    if temperature < GREEDY_TEMPERATURE:
        return logits.argmax(-1)
    flat = filtered_probs.reshape(-1, filtered_probs.size(-1))
    if generator is not None and generator.device != flat.device:
        # A generator draws on its own device: a request's CPU generator samples a GPU model's
        # probabilities on the CPU (the same seed gives the same draws on either device).
        return torch.multinomial(flat.to(generator.device), 1, generator=generator).to(flat.device).reshape(
            filtered_probs.shape[:-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(filtered_probs.shape[:-1])


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token id per row of logits (..., V) -> (...)."""
    check_settings(temperature, top_k, top_p)
    if temperature < GREEDY_TEMPERATURE:
        return draw(logits, None, temperature)
    return draw(logits, torch.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1), temperature,
                generator)


@dataclass
class Distribution:
    """The next-token distribution at each stage of the filters, as 1-D tensors over the vocab."""
    base: torch.Tensor          # softmax(logits): the model's own distribution
    tempered: torch.Tensor      # softmax(logits / T)
    after_top_k: torch.Tensor   # renormalised after top-k
    final: torch.Tensor         # renormalised after top-p: what sampling draws from
    cut_by_top_k: torch.Tensor  # bool: kept by temperature, removed by top-k
    cut_by_top_p: torch.Tensor  # bool: kept by top-k, removed by top-p

    @property
    def entropy_bits(self) -> dict[str, float]:
        return {"model": float(entropy(self.base)), "tempered": float(entropy(self.tempered)),
                "final": float(entropy(self.final))}


def _softmax64(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x.double(), -1)


def distribution(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None) -> Distribution:
    """Every stage of temperature -> top-k -> top-p for one logits vector (V,)."""
    check_settings(temperature, top_k, top_p)
    logits = logits.float()
    tempered = apply_temperature(logits, temperature)
    k_mask = top_k_mask(tempered, top_k) & torch.isfinite(tempered)
    after_k = tempered.masked_fill(~k_mask, float("-inf"))
    p_mask = top_p_mask(after_k, top_p) & k_mask
    final = after_k.masked_fill(~p_mask, float("-inf"))
    # The masks are float32, exactly as sampling cuts; the probabilities shown are float64, so that
    # sums over 50,257 tokens (the mass each filter removed) are exact to ~1e-12, not ~1e-6.
    return Distribution(
        base=_softmax64(logits), tempered=_softmax64(tempered),
        after_top_k=_softmax64(after_k), final=_softmax64(final),
        cut_by_top_k=torch.isfinite(tempered) & ~k_mask, cut_by_top_p=k_mask & ~p_mask)
