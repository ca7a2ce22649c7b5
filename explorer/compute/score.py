"""What the Score tab shows: each token's rank and surprisal under the model, and a summary.

Plain python / numpy: no gradio, no plotly. The scoring itself is gpt2core.analysis.score.
"""
from __future__ import annotations

import codecs
from dataclasses import dataclass

import numpy as np

from gpt2core import GPT2
from gpt2core.analysis.score import TokenScores, score_tokens
from gpt2core.text.tokenizer import EOT, EOT_ID, eot_id, printable, token_bytes

from ..inputs import InputError, Prompt

# GLTR's four buckets (Gehrmann, Strobelt and Rush, 2019): is the actual token among the model's
# top 10, top 100, top 1,000 predictions, or beyond?
BUCKET_LIMITS = (10, 100, 1000)
BUCKET_NAMES = ("top 10", "top 100", "top 1,000", "beyond 1,000")
# Rank histogram bins (log spaced): [1, 2), [2, 4), ... each edge about 3x the last.
RANK_EDGES = np.array([1, 2, 4, 11, 31, 101, 301, 1001, 3001, 10001, 30001, 50258])
N_SURPRISING = 10
SURPRISING_HEADERS = ["position", "token", "probability", "rank", "surprisal (bits)", "model's top guess",
                      "text before it"]


def bucket_of(ranks) -> np.ndarray:
    """0..3: the GLTR bucket of each rank (rank 1 = the model's top guess)."""
    return np.searchsorted(np.array(BUCKET_LIMITS), np.asarray(ranks), side="left").astype(np.int64)


def bucket_counts(ranks) -> np.ndarray:
    """How many tokens fall in each of the four buckets."""
    return np.bincount(bucket_of(ranks), minlength=len(BUCKET_NAMES))


def rank_histogram(ranks) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Counts of ranks in the log-spaced RANK_EDGES bins, a label per bin, and each bin's GLTR bucket
    (the edges fall on the buckets' limits, so no bin straddles two)."""
    counts, _ = np.histogram(np.asarray(ranks), bins=RANK_EDGES)
    labels = []
    for lo, hi in zip(RANK_EDGES[:-1], RANK_EDGES[1:]):
        labels.append(str(lo) if hi - lo == 1 else f"{lo:,}–{hi - 1:,}")
    return counts, labels, bucket_of(RANK_EDGES[:-1])


@dataclass
class ScoreView:
    """Per token of the text (N), and per scored token (tokens first..N-1; first = 0: all of them)."""
    texts: list[str]             # (N,) the characters each token completes (joined: the text)
    labels: list[str]            # (N,) printable token strings
    first: int
    probs: np.ndarray            # (N - first,) probability the model gave each scored token
    ranks: np.ndarray            # (N - first,)
    bits: np.ndarray             # (N - first,) surprisal
    alternatives: list[list[tuple[str, float]]]   # (N - first,) the model's top 5 (label, probability)
    scores: TokenScores
    n_ctx: int


def token_texts(ids: list[int]) -> list[str]:
    """The characters each token completes, so a character split over tokens is shown once."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    texts = [decoder.decode(token_bytes(i)) for i in ids]
    if texts:
        texts[-1] += decoder.decode(b"", final=True)
    return texts


def score_view(model: GPT2, prompt: Prompt) -> ScoreView:
    """Every token scored; like GLTR, the text is read after <|endoftext|>, so the first one is scored too."""
    if not prompt.ids:
        raise InputError("The prompt is empty: type some text first.")
    s = score_tokens(model, prompt.ids, start_token=eot_id())   # a character model has none: its first token is not scored
    labels = [printable(token_bytes(i)) for i in prompt.ids]
    top_p = np.exp(s.top_logprobs)
    alternatives = [[(printable(token_bytes(int(i))), float(p)) for i, p in zip(ids, ps)]
                    for ids, ps in zip(s.top_ids, top_p)]
    return ScoreView(token_texts(prompt.ids), labels, s.first, np.exp(s.logprobs), s.ranks, s.surprisal_bits,
                     alternatives, s, model.config.n_ctx)


def windows_sentence(view: ScoreView) -> str:
    s = view.scores
    n = len(s.ids) + (1 - s.first)     # the start token is read too
    if s.n_windows == 1:
        return f"All {n:,} tokens fit in the model's context of {view.n_ctx:,}: one forward pass."
    return (f"With its start token the text has {n:,} tokens, more than the model's context of "
            f"{view.n_ctx:,}, so it was read in "
            f"**{s.n_windows} windows** of {s.window:,} tokens, each starting {s.stride:,} tokens after the "
            f"last (an overlap of {s.window - s.stride:,} tokens): every token after the first window is "
            f"predicted from at least {s.min_context:,} tokens before it.")


def summary_markdown(view: ScoreView) -> str:
    """Perplexity, mean surprisal and the share of each GLTR bucket, in words."""
    counts = bucket_counts(view.ranks)
    n = len(view.ranks)
    shares = " · ".join(f"{name}: **{c:,}** ({c / n:.0%})" for name, c in zip(BUCKET_NAMES, counts))
    s = view.scores
    return "\n".join([
        f"**{n:,} tokens scored**"
        + (f" (like GLTR, the text is read after GPT-2's `{EOT}` token, so the first token is scored "
           f"too)" if view.first == 0 else " (the first token has nothing before it)") + ". "
        f"**Perplexity {s.perplexity:,.1f}**: on average the model was as unsure as a fair pick among "
        f"that many tokens. **Mean surprisal {float(view.bits.mean()):.2f} bits** per token "
        f"(median {float(np.median(view.bits)):.2f}).",
        "",
        f"Where the actual token ranked among the model's predictions: {shares}.",
        "",
        windows_sentence(view),
    ])


def _context(texts: list[str], position: int, chars: int = 40) -> str:
    before = "".join(texts[:position])
    before = before[-chars:] if len(before) > chars else before
    return before.replace("\n", "↵")


def surprising_rows(view: ScoreView, n: int = N_SURPRISING) -> list[list]:
    """The n most surprising tokens, most surprising first (ties: earlier first)."""
    order = np.lexsort((np.arange(len(view.bits)), -view.bits))[:n]
    rows = []
    for k in order:
        position = int(k) + view.first
        top_label, top_prob = view.alternatives[k][0]
        rows.append([position, view.labels[position], _share(float(view.probs[k])), int(view.ranks[k]),
                     round(float(view.bits[k]), 2), f"{top_label} ({_share(top_prob)})",
                     _context(view.texts, position)])
    return rows


def _share(p: float) -> str:
    return f"{p:.1%}" if p >= 0.001 else f"{p:.2g}"
