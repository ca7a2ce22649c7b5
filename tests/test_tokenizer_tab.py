import html

import numpy as np
import pytest

from explorer.compute.tokens import (coverage, partial_labels, sliding_windows, split_characters, split_rows,
                                     stats_markdown, text_stats, token_view, tokens_per_word, windows_markdown,
                                     word_token_counts)
from explorer.figures.tokens import PALETTE, coverage_lines, token_chips_html, tokens_per_word_bars, window_grid
from explorer.inputs import Prompt, prepare_prompt
from gpt2core.text import tokenizer
from tests.conftest import plot_json

MIXED = "Café 😀 ok\n日本"


def view_of(text):
    return token_view(prepare_prompt(text, keep="start"))


# ---- compute -------------------------------------------------------------------------------------

def test_hello_world_ids_and_spans():
    v = view_of("Hello, world!")
    assert [t.id for t in v.infos] == [15496, 11, 995, 0]
    assert [v.text[t.start:t.end] for t in v.infos] == ["Hello", ",", " world", "!"]
    assert v.notices == []


def test_split_characters_match_utf8_bytes():
    v = view_of(MIXED)
    assert [t.id for t in v.infos] == tokenizer.encode(MIXED)
    splits = split_characters(v.text, v.infos)
    # independent check: walk the bytes of each token and record which character each byte belongs to
    owner = [ci for ci, ch in enumerate(MIXED) for _ in ch.encode("utf-8")]
    tokens_of = {}
    offset = 0
    for k, t in enumerate(v.infos):
        for b in range(offset, offset + len(t.bytes)):
            tokens_of.setdefault(owner[b], set()).add(k)
        offset += len(t.bytes)
    expected = [MIXED[ci] for ci, ks in sorted(tokens_of.items()) if len(ks) > 1]
    assert [s.char for s in splits] == expected and "😀" in expected
    for s in splits:
        assert b"".join(v.infos[k].bytes for k in s.tokens).find(s.utf8) >= 0
        assert all(v.infos[k].partial for k in s.tokens)
    emoji = next(s for s in splits if s.char == "😀")
    assert emoji.codepoint == "U+1F600" and emoji.utf8 == "😀".encode()
    labels = partial_labels(splits)
    assert all(labels[k] == "😀" for k in emoji.tokens)
    assert set(labels) == {t.index for t in v.infos if t.partial}
    row = next(r for r in split_rows(splits, v.infos) if r[0] == "😀")
    assert row[2] == "f0 9f 98 80" and row[3] == len(emoji.tokens)


def test_ascii_has_no_split_characters():
    v = view_of("plain ascii text")
    assert split_characters(v.text, v.infos) == [] and not any(t.partial for t in v.infos)


def test_word_counts_and_histogram():
    text = "the cat sat, antidisestablishmentarianism!"
    v = view_of(text)
    words, counts = word_token_counts(v.text, v.infos)
    assert words == ["the", "cat", "sat", "antidisestablishmentarianism"]
    expected = [len(tokenizer.encode(w if i == 0 else " " + w)) for i, w in enumerate(words)]
    assert counts.tolist() == expected
    hist = tokens_per_word(words, counts)
    assert sum(n for n, _ in hist.values()) == 4
    assert "antidisestablishmentarianism" in hist[expected[-1]][1]


def test_coverage_and_stats():
    v = view_of(MIXED)
    chars_after, bytes_after = coverage(v.text, v.infos)
    assert bytes_after[-1] == len(MIXED.encode()) and chars_after[-1] == len(MIXED)
    # after each token, the whole characters decodable from the bytes so far
    data = b"".join(t.bytes for t in v.infos)
    for k in range(len(v.infos)):
        assert chars_after[k] == len(data[:bytes_after[k]].decode("utf-8", errors="ignore"))
    words, counts = word_token_counts(v.text, v.infos)
    splits = split_characters(v.text, v.infos)
    stats = text_stats(v.text, v.infos, counts, len(splits))
    assert stats["tokens"] == len(tokenizer.encode(MIXED)) and stats["characters"] == len(MIXED)
    assert stats["bytes"] == len(MIXED.encode()) and stats["words"] == 3   # Café, ok, 日本
    assert stats["characters per token"] == pytest.approx(len(MIXED) / stats["tokens"])
    md = stats_markdown(stats, 50257)
    assert f"**{stats['tokens']}**" in md and f"{len(splits)}** character" in md and "50,257" in md


def test_cropped_prompt_view_agrees_with_ids():
    text = "word " * 700 + "é😀"
    prompt = prepare_prompt(text, max_tokens=512, keep="start")
    v = token_view(prompt)
    assert len(v.infos) == 512 and [t.id for t in v.infos] == prompt.ids
    # a cut through a character: the view keeps whole characters and says so
    ids = tokenizer.encode("ab 😀 cd")
    k = next(i for i, t in enumerate(tokenizer.breakdown("ab 😀 cd")) if t.partial) + 1   # after part of 😀
    cut = Prompt(tokenizer.decode(ids[:k]), ids[:k], [])
    v = token_view(cut)
    assert [t.id for t in v.infos] == ids[:len(v.infos)] and len(v.infos) < k
    assert v.text == "ab" and any("first" in n for n in v.notices)


def test_sliding_windows_shift_by_one():
    ids = list(range(100, 140))
    w = sliding_windows(ids, 8, 3)
    assert w.count == (40 - 8 - 1) // 3 + 1 == 11
    assert len(w.inputs) == 11 and w.starts[:3] == [0, 3, 6]
    for s, x, y in zip(w.starts, w.inputs, w.targets):
        assert x == ids[s:s + 8] and y == ids[s + 1:s + 9] and x[1:] == y[:-1]
    assert len(sliding_windows(list(range(200)), 2, 1).inputs) == 12     # capped
    assert sliding_windows(ids[:8], 8, 1).count == 0                     # needs n + 1 tokens


def test_windows_markdown_formula_and_lessons():
    prompt = prepare_prompt("To be, or not to be, that is the question:")
    tokens = prompt.tokens
    w = sliding_windows(prompt.ids, 4, 2)
    md = windows_markdown(tokens, 4, 2, w, 1024)
    N = len(tokens)
    assert f"⌊({N} − 4 − 1) / 2⌋ + 1 = **{(N - 5) // 2 + 1}**" in md
    assert "after `` To `` comes `` ␣be ``" in md and "overlap by 2 tokens" in md
    short = windows_markdown(tokens, 32, 2, sliding_windows(prompt.ids, 32, 2), 1024)
    assert "33 tokens" in short and f"only **{N}**" in short


# ---- figures -------------------------------------------------------------------------------------

def test_token_chips_html():
    v = view_of(MIXED + "\n\nend <b>&")
    splits = split_characters(v.text, v.infos)
    out = token_chips_html(v.infos, partial_labels(splits))
    assert "<script" not in out.lower() and "<b>" not in out and "&lt;" in out and ">&amp;<" in out
    for t in v.infos:
        assert f">{t.id}</span>" in out
        assert f"id {t.id} · bytes {t.bytes.hex(' ')}" in html.unescape(out)
    assert out.count("dashed") == sum(t.partial for t in v.infos)
    assert "part of &#x27;😀&#x27;" in out or "part of '😀'" in out
    n_newlines = sum(t.bytes.count(b"\n") for t in v.infos)
    assert out.count("flex-basis:100%") == n_newlines == 3
    assert PALETTE[0][0] in out and PALETTE[1][0] in out


def test_coverage_lines():
    fig = coverage_lines(np.array([1, 3, 4]), np.array([1, 4, 5]), ["a", "<0xF0>", "c"])
    assert [t.type for t in fig.data] == ["scatter"] * 3
    assert list(fig.data[1].y) == [1, 3, 4] and list(fig.data[0].x) == [1, 2, 3]
    assert "&lt;0xF0&gt;" in fig.data[0].text[1]
    assert "3 tokens for 4 characters (1.33 per token)" in fig.layout.title.text


def test_tokens_per_word_bars():
    fig = tokens_per_word_bars({1: (5, ["a", "b"]), 3: (1, ["antidis"])})
    bar = fig.data[0]
    assert bar.type == "bar" and list(bar.x) == ["1 token", "3 tokens"] and list(bar.y) == [5, 1]
    assert "antidis" in bar.customdata[1] and "6 words" in fig.layout.title.text


def test_window_grid():
    tokens = [f"t{i}" for i in range(20)] + ["<0xF0>"]
    w = sliding_windows(list(range(21)), 4, 4)
    fig = window_grid(w.inputs, w.targets, w.starts, tokens)
    hm = fig.data[0]
    assert hm.type == "heatmap" and len(hm.y) == 2 * w.count == 10 and list(hm.x) == [0, 1, 2, 3]
    assert list(hm.text[0]) == ["t0", "t1", "t2", "t3"] and list(hm.text[1]) == ["t1", "t2", "t3", "t4"]
    assert hm.text[-1][-1] == "&lt;0xF0&gt;"
    z = np.array(hm.z)
    assert (z[1::2, :-1] == z[0::2, 1:]).all()   # target colours = input colours moved one step left
    assert hm.y[0] == "w1 input" and hm.y[1] == "w1 target"
    empty = window_grid([], [], [], tokens)
    assert "too short" in empty.layout.title.text


# ---- endpoints -----------------------------------------------------------------------------------

def test_breakdown_endpoint(client, registry):
    text = "Hello, world! 😀"
    chips, stats, cov, words, splits, notices = client.predict(text, registry.default,
                                                               api_name="/tokenizer_breakdown")
    ids = tokenizer.encode(text)
    for i in ids:
        assert f">{i}</span>" in chips
    assert chips.count("dashed") == 2 and "😀" in chips
    assert f"**{len(ids)}**" in stats
    cov = plot_json(cov)
    assert cov["data"][0]["y"][-1] == len(text.encode())
    assert cov["data"][1]["y"][-1] == len(text)
    assert len(plot_json(words)["data"]) == 1
    rows = splits["data"]
    assert len(rows) == 1 and rows[0][0] == "😀" and rows[0][2] == "f0 9f 98 80"
    assert notices == ""


def test_breakdown_endpoint_long_prompt_notice(client, registry):
    chips, stats, *_, notices = client.predict("hi " * 600, registry.default, api_name="/tokenizer_breakdown")
    assert "only the first 512" in notices and "**512**" in stats


def test_windows_endpoint(client, registry):
    text = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer"
    md, grid = client.predict(text, 6, 3, registry.default, api_name="/tokenizer_windows")
    ids = tokenizer.encode(text)
    n_win = (len(ids) - 6 - 1) // 3 + 1
    assert f"**{n_win}**" in md
    hm = plot_json(grid)["data"][0]
    assert len(hm["y"]) == 2 * min(n_win, 12)
    printable = [tokenizer.printable(tokenizer.token_bytes(i)) for i in ids]
    assert [html.unescape(c) for c in hm["text"][1]] == printable[1:7]
    assert [html.unescape(c) for c in hm["text"][2]] == printable[3:9]


@pytest.mark.parametrize("args, message", [
    # the slider itself refuses out-of-range values before the handler runs; either message is clean
    (("some text", 8, 0), r"Stride .*must be between 1 and 32, got 0"),
    (("some text", 8, 99), r"Stride .*must be between 1 and 32, got 99"),
    (("some text", 1, 4), r"Context length .*must be between 2 and 32, got 1"),
    (("some text", 8, 2.5), "Stride must be a whole number"),
    (("   ", 8, 4), "The prompt is empty"),
])
def test_windows_endpoint_bad_input(client, registry, args, message):
    with pytest.raises(Exception, match=message):
        client.predict(*args, registry.default, api_name="/tokenizer_windows")


def test_breakdown_endpoint_empty_prompt(client, registry):
    with pytest.raises(Exception, match="The prompt is empty"):
        client.predict("", registry.default, api_name="/tokenizer_breakdown")
