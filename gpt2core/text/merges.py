"""GPT-2's byte-pair encoding taken apart: pre-tokenization, the byte-to-unicode map, each merge.

The tokenizer (``gpt2core.text.tokenizer``, tiktoken) gives only the final tokens. Here the same steps are
done slowly, in Python, the way OpenAI's original ``encoder.py`` (and minGPT's
``encode_and_show_work``) does them, so each one can be shown:

1. GPT-2's regular expression cuts the text into chunks (a word with its leading space, a number,
   a run of punctuation, whitespace). BPE never merges across chunks.
2. Each chunk's UTF-8 bytes become printable characters through ``byte_to_unicode()``.
3. The lowest-ranked adjacent pair listed in ``vocab.bpe`` is merged, everywhere it occurs, until
   no adjacent pair is listed. The pieces left are the tokens.

The ranks come from the same sha256-checked ``vocab.bpe`` the tokenizer is built from.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import regex

from . import tokenizer


@functools.lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's map from the 256 byte values to printable characters (OpenAI's ``bytes_to_unicode``).

    Bytes that are already printable, non-space characters (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``)
    stand for themselves; the other 68 (space, control bytes, ...) are given the characters from
    U+0100 upwards in order, so a space (0x20) becomes ``Ġ`` (U+0120) and a newline ``Ċ`` (U+010A).
    """
    visible = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
               + list(range(ord("®"), ord("ÿ") + 1)))
    out, extra = {}, 0
    for b in range(256):
        if b in visible:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def unicode_to_byte() -> dict[str, int]:
    return {ch: b for b, ch in byte_to_unicode().items()}


def symbols_of(data: bytes) -> str:
    """Bytes written in GPT-2's printable alphabet ("Ġhello" for b" hello")."""
    table = byte_to_unicode()
    return "".join(table[b] for b in data)


def bytes_of(symbols: str) -> bytes:
    """The inverse of ``symbols_of``."""
    table = unicode_to_byte()
    return bytes(table[ch] for ch in symbols)


@functools.lru_cache(maxsize=1)
def merge_ranks() -> dict[tuple[str, str], int]:
    """(left, right) -> rank: the merges of vocab.bpe in file order (rank 0 is the first merge line)."""
    path = tokenizer._data_file("vocab.bpe")
    tokenizer._verify(path, tokenizer.VOCAB_BPE_SHA256)
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    # The first line is "#version: 0.2"; the file ends with a newline.
    pairs = [tuple(line.split(" ")) for line in lines[1:] if line]
    return {pair: rank for rank, pair in enumerate(pairs)}


_pattern = None


def _split_pattern():
    global _pattern
    if _pattern is None:
        _pattern = regex.compile(tokenizer.GPT2_PATTERN)
    return _pattern


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    start: int          # character span [start, end) in the text
    end: int

    @property
    def data(self) -> bytes:
        return self.text.encode("utf-8")


def pretokenize(text: str) -> list[Chunk]:
    """GPT-2's pre-tokenization: the chunks its regular expression (the one tiktoken uses) cuts."""
    text = tokenizer.clean_text(text)
    return [Chunk(i, m.group(), m.start(), m.end()) for i, m in enumerate(_split_pattern().finditer(text))]


@dataclass(frozen=True)
class MergeStep:
    step: int                    # 1 for the first merge
    left: str                    # the pair merged, in GPT-2's printable alphabet
    right: str
    rank: int                    # its line in vocab.bpe (0 = the first merge learned)
    places: int                  # how many times the pair occurred (all are merged in this step)
    pieces: tuple[str, ...]      # the sequence after this merge


@dataclass(frozen=True)
class MergeTrace:
    chunk: str                   # the chunk's text
    start: tuple[str, ...]       # its bytes as symbols, one per byte
    steps: tuple[MergeStep, ...]

    @property
    def pieces(self) -> tuple[str, ...]:
        """The final pieces: the tokens, in GPT-2's printable alphabet."""
        return self.steps[-1].pieces if self.steps else self.start

    @property
    def token_bytes(self) -> list[bytes]:
        return [bytes_of(p) for p in self.pieces]

    @property
    def ids(self) -> list[int]:
        enc = tokenizer.get_encoding()
        return [enc.encode_single_token(b) for b in self.token_bytes]


def merge_trace(chunk: str) -> MergeTrace:
    """Every merge BPE makes on one chunk, lowest rank first, until no adjacent pair has a rank."""
    ranks = merge_ranks()
    word = tuple(symbols_of(chunk.encode("utf-8")))
    start, steps = word, []
    while len(word) > 1:
        pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        merged, i, places = [], 0, 0
        while i < len(word):   # left to right, so "aaa" with (a, a) gives "aa", "a"
            if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                merged.append(word[i] + word[i + 1])
                i += 2
                places += 1
            else:
                merged.append(word[i])
                i += 1
        word = tuple(merged)
        steps.append(MergeStep(len(steps) + 1, best[0], best[1], ranks[best], places, word))
    return MergeTrace(chunk, start, tuple(steps))
