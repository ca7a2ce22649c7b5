"""What the Tokenizer tab shows: tokens with their spans, split characters, counts, training windows.

Everything here is plain python / numpy: no gradio, no plotly.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from gpt2core.text import tokenizer
from gpt2core.training.data import SlidingWindowDataset
from gpt2core.text.tokenizer import TokenInfo

from ..inputs import MAX_PROMPT_TOKENS, Prompt

MAX_TOKENS = MAX_PROMPT_TOKENS   # the tokenizer view shows at most this many tokens (the start of the text)
MAX_WINDOWS = 12                 # windows drawn in the sliding-window figure
WORD = re.compile(r"\w+(?:['’]\w+)*")   # runs of letters and digits, "it's" counts as one word


@dataclass
class TokenView:
    text: str                  # the text the tokens cover exactly
    infos: list[TokenInfo]     # gpt2core.text.tokenizer.breakdown of that text
    notices: list[str]


@dataclass(frozen=True)
class SplitChar:
    char: str                  # a character whose UTF-8 bytes land in more than one token
    position: int              # its index in the text
    utf8: bytes
    tokens: tuple[int, ...]    # positions (in the token sequence) of the tokens holding its bytes
    ids: tuple[int, ...]

    @property
    def codepoint(self) -> str:
        return f"U+{ord(self.char):04X}"


def _token_byte_ends(infos: list[TokenInfo]) -> np.ndarray:
    """Byte offset where each token ends (cumulative lengths of the tokens' bytes)."""
    return np.cumsum([len(t.bytes) for t in infos], dtype=np.int64)


def _char_byte_ends(text: str) -> np.ndarray:
    """Byte offset where each character ends in the UTF-8 text."""
    return np.cumsum([len(ch.encode("utf-8")) for ch in text], dtype=np.int64)


def token_view(prompt: Prompt) -> TokenView:
    """Tokens of a prepared prompt (``prepare_prompt(..., keep="start")``) with their character spans.

    Without cropping, ``breakdown(prompt.text)`` gives exactly ``prompt.ids``. When the prompt was cut,
    re-reading the cut text can tokenize the last few tokens differently (or end in half a character),
    so the view keeps the longest run of tokens that agrees with ``prompt.ids`` and ends on a whole
    character.
    """
    infos = tokenizer.breakdown(prompt.text)
    notices = list(prompt.notices)
    if [t.id for t in infos] == list(prompt.ids):
        return TokenView(prompt.text, infos, notices)
    n = 0
    while n < min(len(infos), len(prompt.ids)) and infos[n].id == prompt.ids[n]:
        n += 1
    char_ends = set(_char_byte_ends(prompt.text).tolist())
    token_ends = _token_byte_ends(infos[:n])
    while n and int(token_ends[n - 1]) not in char_ends:
        n -= 1
    infos = infos[:n]
    text = prompt.text[:infos[-1].end] if infos else ""
    if len(infos) < len(prompt.ids):
        notices.append(f"The cut fell inside a word or character, so this view shows the first "
                       f"{len(infos):,} tokens.")
    return TokenView(text, infos, notices)


def split_characters(text: str, infos: list[TokenInfo]) -> list[SplitChar]:
    """Characters whose UTF-8 bytes are shared out over two or more tokens, in text order."""
    char_end = _char_byte_ends(text)
    char_start = char_end - np.array([len(ch.encode("utf-8")) for ch in text], dtype=np.int64)
    tok_end = _token_byte_ends(infos)
    tok_start = tok_end - np.array([len(t.bytes) for t in infos], dtype=np.int64)
    out = []
    for ci in np.flatnonzero(char_end - char_start > 1):
        # tokens that hold at least one byte of this character
        hit = np.flatnonzero((tok_start < char_end[ci]) & (tok_end > char_start[ci]))
        if len(hit) > 1:
            ch = text[ci]
            out.append(SplitChar(ch, int(ci), ch.encode("utf-8"), tuple(int(h) for h in hit),
                                 tuple(infos[h].id for h in hit)))
    return out


def partial_labels(splits: list[SplitChar]) -> dict[int, str]:
    """Token position -> the split character(s) that token carries part of."""
    labels: dict[int, list[str]] = {}
    for s in splits:
        for t in s.tokens:
            labels.setdefault(t, []).append(s.char)
    return {t: "".join(chars) for t, chars in labels.items()}


def split_rows(splits: list[SplitChar], infos: list[TokenInfo]) -> list[list]:
    """Table rows: character, code point, its UTF-8 bytes, and the tokens its bytes went to."""
    rows = []
    for s in splits:
        parts = " + ".join(f"#{t} id {infos[t].id} [{infos[t].bytes.hex(' ')}]" for t in s.tokens)
        rows.append([s.char, s.codepoint, s.utf8.hex(" "), len(s.tokens), parts])
    return rows


def word_token_counts(text: str, infos: list[TokenInfo]) -> tuple[list[str], np.ndarray]:
    """Each word (run of letters/digits) and how many tokens overlap its characters."""
    spans = [(m.start(), m.end(), m.group()) for m in WORD.finditer(text)]
    if not spans or not infos:
        return [], np.zeros(0, dtype=np.int64)
    ws = np.array([s[0] for s in spans])[:, None]
    we = np.array([s[1] for s in spans])[:, None]
    ts = np.array([t.start for t in infos])[None, :]
    te = np.array([t.end for t in infos])[None, :]
    counts = ((ts < we) & (te > ws)).sum(axis=1)
    return [s[2] for s in spans], counts.astype(np.int64)


def tokens_per_word(words: list[str], counts: np.ndarray, examples: int = 6) -> dict[int, tuple[int, list[str]]]:
    """Histogram: tokens a word needs -> (how many words, a few distinct example words)."""
    out: dict[int, tuple[int, list[str]]] = {}
    for k in sorted(set(counts.tolist())):
        picked = [w for w, c in zip(words, counts) if c == k]
        distinct = list(dict.fromkeys(picked))
        if k > 1:   # the longest words first: they show best why a word needs several tokens
            distinct.sort(key=len, reverse=True)
        out[k] = (len(picked), distinct[:examples])
    return out


def coverage(text: str, infos: list[TokenInfo]) -> tuple[np.ndarray, np.ndarray]:
    """After each token: whole characters and bytes covered so far (two int arrays of length T)."""
    bytes_after = _token_byte_ends(infos)
    chars_after = np.searchsorted(_char_byte_ends(text), bytes_after, side="right")
    return chars_after.astype(np.int64), bytes_after


def text_stats(text: str, infos: list[TokenInfo], word_counts: np.ndarray, n_split: int) -> dict[str, float]:
    """Counts for the stats table; ``word_counts`` from word_token_counts (tokens per word)."""
    n_words = len(word_counts)
    n_chars, n_bytes, n_tokens = len(text), len(text.encode("utf-8")), len(infos)
    return {
        "characters": n_chars,
        "bytes": n_bytes,
        "tokens": n_tokens,
        "distinct tokens": len({t.id for t in infos}),
        "words": n_words,
        "characters per token": n_chars / n_tokens if n_tokens else 0.0,
        "bytes per token": n_bytes / n_tokens if n_tokens else 0.0,
        "tokens per word": float(np.mean(word_counts)) if n_words else 0.0,
        "split characters": n_split,
        "partial tokens": sum(t.partial for t in infos),
    }


def stats_markdown(stats: dict[str, float], vocab_size: int) -> str:
    s = stats
    lines = [
        "| | count |", "|---|---:|",
        f"| characters | {s['characters']:,} |",
        f"| UTF-8 bytes | {s['bytes']:,} |",
        f"| words (letters and digits) | {s['words']:,} |",
        f"| **tokens** | **{s['tokens']:,}** ({s['distinct tokens']:,} different ids) |",
        "",
        f"On average one token covers **{s['characters per token']:.2f} characters** "
        f"({s['bytes per token']:.2f} bytes)"
        + (f", and a word needs **{s['tokens per word']:.2f} tokens** on average." if s["words"] else "."),
        f"Every token is one of the {vocab_size:,} entries in the vocabulary.",
    ]
    if s["split characters"]:
        lines.append(f"**{s['split characters']:,}** character{'s' if s['split characters'] != 1 else ''} "
                     f"did not fit in one token: {s['partial tokens']:,} tokens hold only part of a "
                     f"character (dashed border, listed in the table below).")
    else:
        lines.append("No character is split across tokens here; try an emoji or Chinese text to see one.")
    return "\n".join(lines)


@dataclass
class Windows:
    count: int                 # len(SlidingWindowDataset)
    starts: list[int]          # token position where each shown window starts
    inputs: list[list[int]]    # the first <= MAX_WINDOWS input windows (ids)
    targets: list[list[int]]   # the same windows shifted by one token


def sliding_windows(ids: list[int], context_length: int, stride: int, limit: int = MAX_WINDOWS) -> Windows:
    """The (input, target) pairs training cuts from ``ids``, via gpt2core.training.data.SlidingWindowDataset."""
    ds = SlidingWindowDataset(ids, context_length, stride)
    shown = min(len(ds), limit)
    inputs, targets = [], []
    for i in range(shown):
        x, y = ds[i]
        inputs.append(x.tolist())
        targets.append(y.tolist())
    return Windows(len(ds), [i * stride for i in range(shown)], inputs, targets)


def _code(text: str) -> str:
    """A markdown code span that survives backticks in the token text."""
    return f"`` {text} ``"


def windows_markdown(tokens: list[str], context_length: int, stride: int, windows: Windows,
                     model_ctx: int) -> str:
    """The window-count formula with this prompt's numbers, and the first window's lessons in words.

    ``tokens`` are the printable strings of all the prompt's tokens.
    """
    n, s, N = context_length, stride, len(tokens)
    if windows.count == 0:
        return (f"A window needs **{n} + 1 = {n + 1} tokens** (the inputs plus one more for the last target), "
                f"but the prompt has only **{N}**. Lower the context length or type a longer prompt.")
    lines = [
        f"Windows = ⌊(tokens − context − 1) / stride⌋ + 1 = ⌊({N} − {n} − 1) / {s}⌋ + 1 = "
        f"**{windows.count}** (showing {len(windows.inputs)}).",
        "",
        f"Each window holds **{n} next-token guesses** for the model to learn. In the first window:",
    ]
    for j in range(n):
        context = "".join(tokens[:j + 1])
        if len(context) > 60:
            context = "…" + context[-59:]
        lines.append(f"- after {_code(context)} comes {_code(tokens[j + 1])}")
    covered = (windows.count - 1) * s + n + 1
    lines += ["", f"With stride {s}, consecutive windows "
              + (f"overlap by {n - s} tokens." if s < n else "do not overlap." if s == n
                 else f"skip {s - n} tokens between them.")
              + f" Together they use tokens 0–{covered - 1} of {N}."
              + f" The model you chose can read up to {model_ctx:,} tokens at once, so real training "
                f"windows are usually much longer; short ones are easier to read here."]
    return "\n".join(lines)
