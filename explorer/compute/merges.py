"""What the Tokenizer tab's BPE section shows: the prompt's chunks, one chunk's bytes, and its merges.

Plain python: no gradio, no plotly. The merging itself is gpt2core.text.merges.
"""
from __future__ import annotations

from dataclasses import dataclass

from gpt2core.text import merges
from gpt2core.text.merges import Chunk, MergeTrace
from gpt2core.text.tokenizer import printable

from ..inputs import InputError

MAX_CHUNK_BYTES = 128   # merging is quadratic in the chunk's length; real words are far shorter
BYTE_HEADERS = ["byte #", "character", "UTF-8 byte", "GPT-2 symbol", "changed by the map?"]
MERGE_HEADERS = ["step", "pair merged", "rank in vocab.bpe", "places", "sequence after the merge", "pieces"]


@dataclass
class MergeView:
    chunks: list[Chunk]        # the whole prompt's chunks
    chunk: Chunk               # the one taken apart
    trace: MergeTrace
    picked_automatically: bool


def most_merged(chunks: list[Chunk]) -> int:
    """Index of the chunk that takes the most merge steps (the first of equals), among short enough ones."""
    best, best_steps = 0, -1
    for c in chunks:
        if len(c.data) <= MAX_CHUNK_BYTES:
            steps = len(merges.merge_trace(c.text).steps)
            if steps > best_steps:
                best, best_steps = c.index, steps
    return best


def merge_view(text: str, index: int) -> MergeView:
    """The chunks of ``text`` and the merges of chunk ``index`` (-1: the chunk with the most merges)."""
    chunks = merges.pretokenize(text)
    if not chunks:
        raise InputError("The prompt is empty: type some text first.")
    auto = index == -1
    if auto:
        index = most_merged(chunks)
    elif not 0 <= index < len(chunks):
        raise InputError(f"Chunk {index} does not exist: this prompt has {len(chunks):,} chunks, "
                         f"numbered 0 to {len(chunks) - 1:,} (or -1 for the one with the most merges).")
    chunk = chunks[index]
    if len(chunk.data) > MAX_CHUNK_BYTES:
        raise InputError(f"Chunk {index} is {len(chunk.data):,} bytes long; the merge view takes chunks of "
                         f"up to {MAX_CHUNK_BYTES} bytes. Pick another chunk.")
    return MergeView(chunks, chunk, merges.merge_trace(chunk.text), auto)


def byte_rows(chunk: Chunk) -> list[list]:
    """One row per byte: the character it comes from, its value, and the symbol GPT-2's map gives it."""
    table = merges.byte_to_unicode()
    rows, k = [], 0
    for ch in chunk.text:
        for b in ch.encode("utf-8"):
            symbol = table[b]
            rows.append([k, printable(ch.encode("utf-8")), f"0x{b:02X}", symbol,
                         "no" if symbol == chr(b) else f"yes, to U+{ord(symbol):04X}"])
            k += 1
    return rows


def merge_rows(trace: MergeTrace) -> list[list]:
    """The merge table: a start row (the bytes), then one row per merge in the order BPE made them."""
    rows = [[0, "(start: one symbol per byte)", "", "", " · ".join(trace.start), len(trace.start)]]
    for s in trace.steps:
        rows.append([s.step, f"{s.left} + {s.right}", s.rank, s.places, " · ".join(s.pieces), len(s.pieces)])
    return rows


def map_markdown() -> str:
    """Why GPT-2 maps bytes to characters, with the map's own counts."""
    table = merges.byte_to_unicode()
    same = sum(1 for b, ch in table.items() if ch == chr(b))
    moved = len(table) - same
    return (f"**Why the byte-to-unicode map exists.** BPE works on the text's bytes, but GPT-2's merge list "
            f"`vocab.bpe` is a text file of symbols separated by spaces, one merge a line. A space byte "
            f"would break the format, and newlines, control bytes and the halves of multi-byte characters "
            f"are invisible. So each of the 256 bytes gets a visible stand-in: {same} printable bytes stand "
            f"for themselves, the other {moved} are shifted to the characters from U+0100 up. A space "
            f"becomes `{table[0x20]}`, a newline `{table[0x0A]}`, a tab `{table[0x09]}`.")


def summary_markdown(view: MergeView) -> str:
    t, c = view.trace, view.chunk
    ids = t.ids
    how = " (the one with the most merges; type a number to pick another)" if view.picked_automatically else ""
    tokens = " ".join(f"`` {printable(b)} `` ({i})" for b, i in zip(t.token_bytes, ids))
    return (f"The prompt is cut into **{len(view.chunks):,} chunks** before BPE; merges never cross a chunk. "
            f"**Chunk {c.index}**{how}: {len(c.data)} bytes → **{len(t.steps)} merges** → "
            f"**{len(ids)} token{'s' if len(ids) != 1 else ''}**: {tokens}. BPE stops when no adjacent pair "
            f"of pieces appears in vocab.bpe; these are the same tokens tiktoken makes for this chunk.")
