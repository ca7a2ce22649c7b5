"""What the Compare tab shows: two prompts (or two models) side by side.

Plain python / numpy: no gradio, no plotly. Each side is one forward pass that captures only the
chosen layer's attention pattern and the last position's logits.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from gpt2core import GPT2
from gpt2core.text.tokenizer import TokenInfo, breakdown, printable, token_bytes

from . import device_of, to_numpy
from ..inputs import InputError, Prompt, check_number

PATTERN_HOOK = "blocks.{}.attn.hook_pattern"
N_TOP = 10          # each side's top tokens that go into the union


@dataclass
class Side:
    name: str                 # "A" or "B"
    model_name: str
    prompt: Prompt
    infos: list[TokenInfo]    # the prompt's tokens, for the chips
    probs: np.ndarray         # (V,) next-token distribution
    pattern: np.ndarray       # (T, T) the chosen head's attention weights

    @property
    def tokens(self) -> list[str]:
        return [t.text for t in self.infos]


def check_layer_head(layer, head, models: list[GPT2]) -> tuple[int, int]:
    """A layer and head that exist in every model compared."""
    n_layer = min(m.config.n_layer for m in models)
    n_head = min(m.config.n_head for m in models)
    both = " in both models" if len(models) > 1 and len({id(m) for m in models}) > 1 else ""
    return (check_number(layer, f"Layer (0 to {n_layer - 1}{both})", 0, n_layer - 1, integer=True),
            check_number(head, f"Head (0 to {n_head - 1}{both})", 0, n_head - 1, integer=True))


def _infos(prompt: Prompt) -> list[TokenInfo]:
    infos = breakdown(prompt.text)
    if [t.id for t in infos] != list(prompt.ids):   # a cut prompt re-read: label the ids it really has
        infos = [TokenInfo(i, tid, token_bytes(tid), printable(token_bytes(tid)), 0, 0, False)
                 for i, tid in enumerate(prompt.ids)]
    return infos


def _forward(model: GPT2, ids, layer: int, head: int) -> tuple[np.ndarray, np.ndarray]:
    """ids (T,) or (B, T) -> next-token distributions (..., V) and the head's patterns (..., T, T)."""
    logits, cache = model.run_with_cache(ids, names=[PATTERN_HOOK.format(layer)], last_only=True)
    probs = to_numpy(torch.softmax(logits[..., -1, :].double(), dim=-1))
    return probs, to_numpy(cache[PATTERN_HOOK.format(layer)][..., head, :, :].float())


def run_side(name: str, model_name: str, model: GPT2, prompt: Prompt, layer: int, head: int) -> Side:
    probs, pattern = _forward(model, prompt.ids, layer, head)
    return Side(name, model_name, prompt, _infos(prompt), probs, pattern)


def run_pair(names: tuple[str, str], models: tuple[GPT2, GPT2], prompts: tuple[Prompt, Prompt],
             layer: int, head: int) -> tuple[Side, Side]:
    """Both sides; one batched forward when they share a model and a length (the same numbers, faster)."""
    (ma, mb), (pa, pb) = models, prompts
    if ma is not mb or len(pa.ids) != len(pb.ids):
        return (run_side("A", names[0], ma, pa, layer, head), run_side("B", names[1], mb, pb, layer, head))
    probs, patterns = _forward(ma, [list(pa.ids), list(pb.ids)], layer, head)
    return (Side("A", names[0], pa, _infos(pa), probs[0], patterns[0]),
            Side("B", names[1], pb, _infos(pb), probs[1], patterns[1]))


@dataclass
class DistributionCompare:
    ids: list[int]            # the union of both sides' top tokens, sorted by p_a - p_b (A's favourites first)
    tokens: list[str]
    p_a: np.ndarray
    p_b: np.ndarray

    @property
    def diff(self) -> np.ndarray:
        return self.p_a - self.p_b


def top_ids(p: np.ndarray, k: int) -> np.ndarray:
    k = min(k, p.size)
    part = np.argpartition(-p, k - 1)[:k]
    return part[np.lexsort((part, -p[part]))]


def compare_distributions(p_a: np.ndarray, p_b: np.ndarray, k: int = N_TOP) -> DistributionCompare:
    """Union of both top-k sets, each token with both probabilities, sorted by the difference."""
    if p_a.shape != p_b.shape:
        raise InputError(f"The two models have different vocabularies ({p_a.size:,} and {p_b.size:,} tokens): "
                         "their next-token distributions can't be laid side by side.")
    union = np.union1d(top_ids(p_a, k), top_ids(p_b, k))
    diff = p_a[union] - p_b[union]
    order = np.lexsort((union, -diff))       # largest difference (A more likely) first, ties by id
    ids = union[order]
    return DistributionCompare(ids.tolist(), [printable(token_bytes(int(i))) for i in ids], p_a[ids], p_b[ids])


def total_variation(p_a: np.ndarray, p_b: np.ndarray) -> float:
    """The most probability any set of next tokens differs by between the two (0 = same, 1 = disjoint)."""
    return float(0.5 * np.abs(p_a - p_b).sum())


def pattern_difference(a: Side, b: Side) -> np.ndarray | None:
    """B's pattern minus A's, when both prompts have the same number of tokens; else None."""
    if a.pattern.shape != b.pattern.shape:
        return None
    return b.pattern - a.pattern


def first_difference(ids_a: list[int], ids_b: list[int]) -> int | None:
    """The first position where the token sequences differ (None if they are equal)."""
    for i, (x, y) in enumerate(zip(ids_a, ids_b)):
        if x != y:
            return i
    return None if len(ids_a) == len(ids_b) else min(len(ids_a), len(ids_b))


def _code(text: str) -> str:
    return f"`` {text} ``"


def summary_markdown(a: Side, b: Side, dist: DistributionCompare, diff: np.ndarray | None,
                     layer: int, head: int) -> str:
    top_a, top_b = int(np.argmax(a.probs)), int(np.argmax(b.probs))
    name = lambda i: _code(printable(token_bytes(i)))  # noqa: E731
    lines = [
        f"**A** ({a.model_name}): {len(a.prompt.ids)} tokens, most likely next token {name(top_a)} "
        f"({a.probs[top_a]:.1%}). **B** ({b.model_name}): {len(b.prompt.ids)} tokens, most likely next "
        f"token {name(top_b)} ({b.probs[top_b]:.1%}).",
        "",
        f"**Total variation distance** between the two next-token distributions: "
        f"**{total_variation(a.probs, b.probs):.3f}** (0 = the same prediction, 1 = no token in common).",
    ]
    if len(dist.ids):
        i, j = int(np.argmax(dist.diff)), int(np.argmin(dist.diff))
        if dist.diff[i] > 0:
            lines.append(f"A favours {_code(dist.tokens[i])} most ({dist.p_a[i]:.1%} vs {dist.p_b[i]:.1%}); "
                         f"B favours {_code(dist.tokens[j])} most ({dist.p_b[j]:.1%} vs {dist.p_a[j]:.1%}).")
    k = first_difference(a.prompt.ids, b.prompt.ids)
    lines.append("")
    if k is None:
        lines.append("Both prompts are the same tokens" + (": any difference comes from the models." if
                                                            a.model_name != b.model_name else "."))
    else:
        lines.append(f"The tokenizations first differ at position {k}.")
    if diff is None:
        lines.append(f"The prompts have {len(a.prompt.ids)} and {len(b.prompt.ids)} tokens, so their attention "
                     "patterns have different shapes and no difference is drawn; make both the same length "
                     "(e.g. swap one word for another of one token) to see it.")
    else:
        q, kk = np.unravel_index(int(np.argmax(np.abs(diff))), diff.shape)
        lines.append(f"Layer {layer}, head {head}: the largest change in attention is **{diff[q, kk]:+.2f}**, "
                     f"from token {q} ({_code(b.tokens[q])} in B) to token {kk} ({_code(b.tokens[kk])} in B).")
    return "\n".join(lines)


class UntrainedTwin:
    """A random-weight model with the default model's shape, made on first use and shared read-only."""

    def __init__(self, template: GPT2, seed: int = 0):
        self._config, self._seed, self._device = template.config, seed, device_of(template)
        self._model: GPT2 | None = None
        self._lock = threading.Lock()

    def get(self) -> GPT2:
        with self._lock:
            if self._model is None:
                generator_state = torch.random.get_rng_state()
                torch.manual_seed(self._seed)
                model = GPT2(self._config).to(self._device).eval()   # where the default model is
                torch.random.set_rng_state(generator_state)   # leave the process's generator as it was
                for p in model.parameters():
                    p.requires_grad_(False)
                self._model = model
            return self._model
