"""The Tokenizer tab's BPE section: chunks, bytes, merge table, ladder figure, and its endpoint."""
import html

import pytest

from explorer.compute import merges as mc
from explorer.figures.merges import MERGED, chunks_html, merge_ladder
from explorer.inputs import InputError
from gpt2core.text import merges, tokenizer
from tests.conftest import plot_json

TEXT = "ROMEO:\nWherefore art thou, Romeo?"


def ladder_of(trace):
    return merge_ladder(trace.start, [(s.left, s.right, s.rank, s.pieces) for s in trace.steps],
                        lambda p: len(merges.bytes_of(p)))


def test_merge_view_picks_the_chunk_with_most_merges():
    view = mc.merge_view(TEXT, -1)
    counts = [len(merges.merge_trace(c.text).steps) for c in view.chunks]
    assert view.picked_automatically and view.chunk.index == counts.index(max(counts))
    assert view.chunk.text == "Wherefore"
    assert b"".join(view.trace.token_bytes) == view.chunk.data
    assert view.trace.ids == tokenizer.encode(view.chunk.text)


def test_merge_view_bad_index():
    with pytest.raises(InputError, match=r"Chunk 99 does not exist: this prompt has \d+ chunks, numbered 0 to"):
        mc.merge_view(TEXT, 99)
    with pytest.raises(InputError, match="empty"):
        mc.merge_view("", 0)
    with pytest.raises(InputError, match="bytes long"):
        mc.merge_view("a" * 300, 0)


def test_rows():
    view = mc.merge_view(TEXT, 0)            # "ROMEO"
    rows = mc.merge_rows(view.trace)
    assert rows[0][4] == "R · O · M · E · O" and rows[0][5] == 5
    assert len(rows) == len(view.trace.steps) + 1
    for row, step in zip(rows[1:], view.trace.steps):
        assert row[1] == f"{step.left} + {step.right}" and row[2] == merges.merge_ranks()[(step.left, step.right)]
        assert row[5] == len(step.pieces)
    assert rows[-1][4].split(" · ") == list(view.trace.pieces)
    nl = mc.merge_view(TEXT, 2)               # the newline chunk
    assert nl.chunk.text == "\n"
    assert mc.byte_rows(nl.chunk) == [[0, "↵", "0x0A", "Ċ", "yes, to U+010A"]]
    emoji = mc.merge_view("a 😀", 1)
    b = mc.byte_rows(emoji.chunk)
    assert [r[2] for r in b] == ["0x20", "0xF0", "0x9F", "0x98", "0x80"] and b[1][3] == "ð" and b[1][4] == "no"
    md = mc.map_markdown()
    assert "188 printable bytes" in md and "other 68" in md and "`Ġ`" in md and "`Ċ`" in md


def test_summary_markdown():
    view = mc.merge_view(TEXT, -1)
    md = mc.summary_markdown(view)
    assert f"**{len(view.chunks)} chunks**" in md and f"**{len(view.trace.steps)} merges**" in md
    assert f"({view.trace.ids[0]})" in md and "most merges" in md


def test_chunks_html():
    out = chunks_html(["ROMEO", ":", "↵", "<b>&"], 1)
    assert out.count("<span style") == 3 * 4 and "<b>" not in out and "&lt;b&gt;&amp;" in out
    assert out.count("#c0504d") == 1 and ">1</span>" in out


def test_merge_ladder():
    trace = merges.merge_trace(" question")
    fig = ladder_of(trace)
    bar = fig.data[0]
    rows = len(trace.steps) + 1
    assert len(set(bar.y)) == rows
    assert sum(1 for c in bar.marker.color if c == MERGED) == len(trace.steps)   # one new piece per step
    last = [t for y, t in zip(bar.y, bar.text) if y == bar.y[-1]]
    assert last == ["Ġquestion"]
    # every row covers the chunk's bytes end to end
    for name in set(bar.y):
        widths = [w for y, w in zip(bar.y, bar.x) if y == name]
        assert sum(widths) == 9
    assert "9 bytes → 1 token in 8 merges" in fig.layout.title.text
    assert "rank 0" not in "".join(bar.customdata[:9])


def test_merges_endpoint(client):
    chunks, md, ladder, table, byte_table = client.predict(TEXT, -1, api_name="/tokenizer_merges")
    trace = merges.merge_trace("Wherefore")
    assert "Wherefore" in html.unescape(chunks) and "**Chunk 3**" in md
    rows = table["data"]
    assert len(rows) == len(trace.steps) + 1
    assert [int(r[2]) for r in rows[1:]] == [s.rank for s in trace.steps]
    assert len(byte_table["data"]) == len("Wherefore") and byte_table["data"][0][3] == "W"
    fig = plot_json(ladder)
    assert len(set(fig["data"][0]["y"])) == len(trace.steps) + 1
    chunks, md, *_ = client.predict(TEXT, 0, api_name="/tokenizer_merges")
    assert "**Chunk 0**" in md


@pytest.mark.parametrize("args, message", [
    ((TEXT, 50), "Chunk 50 does not exist"),
    ((TEXT, "two"), "must be a number"),
    ((TEXT, -2), "between -1 and 511"),
    ((TEXT, 512), "between -1 and 511"),
    (("  \n ", 0), "The prompt is empty"),
    (("\x00\x01", 0), "The prompt is empty"),
])
def test_merges_endpoint_bad_input(client, args, message):
    with pytest.raises(Exception, match=message):
        client.predict(*args, api_name="/tokenizer_merges")
