"""What the Embeddings tab shows: nearest tokens in wte, a 2-D PCA of token vectors, and the wpe rows.

Arrays only (numpy), no plotting. V = vocabulary size, d = n_embd, P = n_ctx (positions).
"""
from __future__ import annotations

import functools
import math
import threading
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from gpt2core import GPT2
from gpt2core.text import tokenizer
from gpt2core.analysis.trace import token_text

from . import to_numpy
from ..inputs import InputError

N_NEIGHBOURS = 10
MAX_WORDS = 60
POSITION_CELLS = 128          # the wpe similarity matrix is shrunk to at most this many cells a side
SPACE_MARK = "␣"              # how a token's leading space is shown (and may be typed)

# model -> (key of the wte it was made from, 1 / ‖row‖ for each of the V rows). Weak keys: a model that
# is dropped (a user's trained one) takes its entry with it; the key notices a weight changed in place.
_INV_NORMS: "weakref.WeakKeyDictionary[GPT2, tuple[tuple, torch.Tensor]]" = weakref.WeakKeyDictionary()
_INV_NORMS_LOCK = threading.Lock()


def _weight_key(w: torch.Tensor) -> tuple:
    return (w.data_ptr(), w._version, tuple(w.shape))


def inverse_row_norms(model: GPT2) -> torch.Tensor:
    """(V,) 1 / ‖wte row‖, made once per model and weight version (cosine similarity needs them all)."""
    w = model.wte.weight
    key = _weight_key(w)
    cached = _INV_NORMS.get(model)
    if cached is None or cached[0] != key:
        with _INV_NORMS_LOCK, torch.no_grad():
            cached = _INV_NORMS.get(model)
            if cached is None or cached[0] != key:
                inv = 1.0 / w.norm(dim=1).clamp_min(1e-12)                          # (V,)
                cached = _INV_NORMS[model] = (key, inv)
    return cached[1]


def resolve_token(text) -> int:
    """The one token a text stands for; ␣ may stand for the leading space. Else a plain InputError."""
    if not isinstance(text, str) or not text:
        raise InputError("Type a token to look up, for example ␣king "
                         "(␣ or a space in front: as inside a sentence).")
    raw = text.replace(SPACE_MARK, " ")
    ids = tokenizer.encode(raw)
    if len(ids) != 1:
        pieces = ", ".join(token_text(i) for i in ids[:8]) + (" …" if len(ids) > 8 else "")
        raise InputError(f"{text!r} is {len(ids)} tokens here ({pieces}), not one. Type a single token, "
                         f"for example one of these pieces.")
    return ids[0]


@dataclass
class Neighbours:
    query_id: int
    ids: list[int]                 # the N nearest other tokens, nearest first
    tokens: list[str]              # their printable text
    similarities: np.ndarray       # (N,) cosine similarity to the query


@torch.no_grad()
def nearest_tokens(model: GPT2, token_id: int, n: int = N_NEIGHBOURS) -> Neighbours:
    """The n tokens whose wte rows point most nearly the same way as this one's (the whole vocabulary)."""
    w = model.wte.weight                                                          # (V, d)
    q = w[token_id]                                                               # (d,)
    cos = (w @ q) * inverse_row_norms(model) / q.norm().clamp_min(1e-12)          # (V,)
    cos[token_id] = -math.inf                                                     # not itself
    top = cos.topk(n)
    ids = top.indices.tolist()
    return Neighbours(token_id, ids, [token_text(i) for i in ids], to_numpy(top.values.double()))


def parse_words(words) -> list[int]:
    """The word list as token ids: each word is taken with a leading space, as inside a sentence.

    ``words`` is a list of strings (the multiselect) or one string of words separated by commas or
    new lines. Repeats are dropped; a word that is not one token is named in the message."""
    if isinstance(words, str):
        words = words.replace("\n", ",").split(",")
    if not isinstance(words, (list, tuple)) or not all(isinstance(w, str) for w in words):
        raise InputError("The word list must be a list of words (text).")
    cleaned = list(dict.fromkeys(w.replace(SPACE_MARK, " ").strip() for w in words if w.strip()))
    if len(cleaned) < 3:
        raise InputError(f"The word list needs at least 3 different words to project, got {len(cleaned)}.")
    if len(cleaned) > MAX_WORDS:
        raise InputError(f"The word list has {len(cleaned)} words; at most {MAX_WORDS} are drawn.")
    ids, split = [], []
    space = " " if tokenizer.is_bpe() else ""    # a character model's tokens are single characters
    for w in cleaned:
        toks = tokenizer.encode(space + w)
        if len(toks) == 1:
            ids.append(toks[0])
        else:
            split.append(f"{w!r} ({' + '.join(token_text(i) for i in toks)})")
    if split:
        raise InputError(f"Each word must be a single token{' (with its leading space)' if space else ''}; these are not: "
                         + ", ".join(split) + ". Remove them or pick shorter words.")
    return ids


@dataclass
class Projection:
    coords: np.ndarray             # (n, 2) the points on the first two principal components
    explained: np.ndarray          # (2,) share of the variance each component explains
    ids: list[int]
    tokens: list[str]


def pca_2d(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows projected on their first two principal components (centred; each component's sign fixed
    so its largest loading is positive), and the share of variance each explains."""
    x = np.asarray(vectors, dtype=np.float64)
    x = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)                            # vt (k, d)
    k = min(2, vt.shape[0])
    comps = vt[:k] * np.sign(vt[np.arange(k), np.abs(vt[:k]).argmax(axis=1)])[:, None]
    coords = x @ comps.T                                                         # (n, k)
    total = float((s ** 2).sum())
    explained = (s[:k] ** 2) / total if total > 0 else np.zeros(k)
    if k < 2:                                                                    # one point pair: a line
        coords = np.pad(coords, ((0, 0), (0, 2 - k)))
        explained = np.pad(explained, (0, 2 - k))
    return coords, explained


@torch.no_grad()
def token_projection(model: GPT2, ids: list[int]) -> Projection:
    """The 2-D PCA of these tokens' wte rows (each distinct token once)."""
    ids = list(dict.fromkeys(int(i) for i in ids))
    if len(ids) < 2:
        raise InputError("A projection needs at least 2 different tokens; this prompt has "
                         f"{len(ids)}. Type a longer prompt or use the word list.")
    coords, explained = pca_2d(to_numpy(model.wte.weight[ids].double()))
    return Projection(coords, explained, ids, [token_text(i) for i in ids])


def pool_square(m: np.ndarray, max_cells: int) -> tuple[np.ndarray, int]:
    """Average (P, P) into blocks of ``step`` = ceil(P / max_cells) a side; returns (pooled, step)."""
    P = m.shape[0]
    step = max(1, math.ceil(P / max_cells))
    if step == 1:
        return m.astype(np.float32), 1
    starts = np.arange(0, P, step)
    sizes = np.diff(np.append(starts, P))
    summed = np.add.reduceat(np.add.reduceat(m.astype(np.float64), starts, axis=0), starts, axis=1)
    return (summed / np.outer(sizes, sizes)).astype(np.float32), step


@dataclass
class Positions:
    similarity: np.ndarray         # (n, n) cosine similarity of wpe rows, pooled when P > POSITION_CELLS
    step: int                      # positions per cell (1: not pooled)
    norms: np.ndarray              # (P,) ‖wpe row‖ of each position


def position_view(wpe: torch.Tensor, max_cells: int = POSITION_CELLS) -> Positions:
    """The cosine similarity of every pair of position embeddings (shrunk), and each one's norm."""
    with torch.no_grad():
        w = wpe.double()                                                          # (P, d)
        norms = w.norm(dim=1)                                                     # (P,)
        unit = w / norms.clamp_min(1e-12)[:, None]                                # (P, d)
        sim = to_numpy(unit @ unit.T)                                             # (P, P)
    pooled, step = pool_square(sim, max_cells)
    return Positions(pooled, step, to_numpy(norms))


@functools.lru_cache(maxsize=4)
def untrained_wpe(n_ctx: int, n_embd: int, seed: int = 0) -> torch.Tensor:
    """(P, d) a position table as GPT2.init_weights makes it (normal, std 0.02) before any training.
    Cached per shape and never written to, so every request reads the same one."""
    g = torch.Generator(device="cpu").manual_seed(seed)           # a reference table: made on the CPU
    return torch.randn(n_ctx, n_embd, generator=g, device="cpu") * 0.02


def neighbour_markdown(nb: Neighbours) -> str:
    rows = "\n".join(f"| {r + 1} | `` {t} `` | {i} | {s:.3f} |"
                     for r, (t, i, s) in enumerate(zip(nb.tokens, nb.ids, nb.similarities)))
    return (f"The {len(nb.ids)} tokens nearest to `` {token_text(nb.query_id)} `` (id {nb.query_id}) by cosine "
            f"similarity, over the whole vocabulary:\n\n| # | token | id | cosine |\n|---|---|---|---|\n{rows}")


def position_summary(trained: Positions, untrained: Positions) -> str:
    """Computed numbers that say whether the positions have structure: neighbours vs far pairs."""
    def near_far(p: Positions) -> tuple[float, float]:
        s = p.similarity.astype(np.float64)
        n = s.shape[0]
        near = float(np.mean(np.diag(s, 1))) if n > 1 else math.nan
        far = float(np.mean(s[np.triu_indices(n, k=max(1, n // 2))])) if n > 2 else math.nan
        return near, far
    tn, tf = near_far(trained)
    un, uf = near_far(untrained)
    cells = "neighbouring positions" if trained.step == 1 else f"neighbouring cells of {trained.step} positions"
    return (f"Mean cosine similarity of {cells}: **{tn:.2f}** in this model, {un:.2f} untrained; of positions "
            f"half the context or more apart: **{tf:.2f}**, {uf:.2f} untrained. ‖wpe‖ runs from "
            f"{trained.norms.min():.3g} to {trained.norms.max():.3g} (untrained {untrained.norms.min():.3g} "
            f"to {untrained.norms.max():.3g}).")
