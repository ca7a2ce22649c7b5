import html
import math
import re

import pytest

from explorer.compute import generation
from explorer.compute.generation import GeneratedToken, continuation_text, generate_tokens, summary
from explorer.figures.generation import (esc, legend_html, prob_color, probability_line, scale_position,
                                         tokens_html)
from explorer.inputs import MAX_NEW_TOKENS, prepare_prompt
from gpt2core import Step, decode, generate
from tests.conftest import plot_json

PROMPT = "Once upon a time"


def visible_text(markup: str) -> str:
    """What a browser shows: tags removed, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


def tok(text="a", prob=0.5, is_eot=False):
    return GeneratedToken(0, 1, text, text.replace(" ", "␣"), prob, prob, [("a", 0.5), ("␣b", 0.2)], is_eot)


# ---- compute -------------------------------------------------------------------------------------
def test_generate_tokens_match_the_core_generator(registry):
    model = registry.get(registry.default).model
    ids = prepare_prompt(PROMPT).ids
    tokens = list(generate_tokens(model, ids, 8, 0.9, 40, 0.95, seed=5))
    expected = generate(model, ids, 8, temperature=0.9, top_k=40, top_p=0.95, seed=5)
    assert [t.id for t in tokens] == expected
    assert continuation_text(tokens) == decode(expected)
    assert all(0 < t.prob <= 1 and 0 < t.sampled_prob <= 1 for t in tokens)
    assert all(len(t.alternatives) == 5 for t in tokens)


def test_split_characters_appear_once(monkeypatch):
    """'€' is three bytes; split over two tokens it shows at the second. A dangling byte becomes U+FFFD."""
    chunks = [b"\xe2\x82", b"\xac", b" x", b"\xe2"]

    def fake_stream(model, ids, **kwargs):
        for i, raw in enumerate(chunks):
            yield Step(i, 100 + i, raw, 0.1, 0.2, [(5, 0.3)])

    monkeypatch.setattr(generation, "stream", fake_stream)
    monkeypatch.setattr(generation, "token_bytes", lambda i: b"!")
    tokens = list(generate_tokens(None, [1], 4, 1.0, 0, 1.0, 0))
    assert [t.text for t in tokens] == ["", "€", " x", "\ufffd"]
    assert [t.label for t in tokens] == ["<0xE2><0x82>", "<0xAC>", "␣x", "<0xE2>"]
    assert tokens[0].alternatives == [("!", 0.3)]


def test_summary_matches_direct_computation():
    probs = [0.5, 0.1, 0.8]
    tokens = [GeneratedToken(i, i, "x", f"t{i}", p, p) for i, p in enumerate(probs)]
    s = summary(tokens)
    assert s["mean_prob"] == pytest.approx(sum(probs) / 3)
    assert s["perplexity"] == pytest.approx((0.5 * 0.1 * 0.8) ** (-1 / 3))
    assert (s["least_label"], s["least_index"]) == ("t1", 1)
    assert summary([]) == {"n": 0}


# ---- figures -------------------------------------------------------------------------------------
def test_colour_scale_is_log_spaced_viridis():
    assert scale_position(1.0) == 1.0 and scale_position(1e-4) == 0.0 and scale_position(0.0) == 0.0
    assert scale_position(1e-2) == pytest.approx(0.5) and scale_position(1e-7) == 0.0
    assert prob_color(1e-4) == "#440154" and prob_color(1.0) == "#fde725"   # Viridis ends


def test_tokens_html_escapes_and_keeps_newlines():
    prompt = "line one\n<script>alert(1)</script> {{x}} ${y}"
    markup = tokens_html(prompt, [tok(" new", 0.9), tok("<b>", 0.001), tok("<|endoftext|>", 0.01, True)], "done")
    assert "<script" not in markup and "<b>" not in markup and "{{" not in markup and "${" not in markup
    assert visible_text(markup).startswith(prompt + " new<b><|endoftext|>done")
    assert "white-space:pre-wrap" in markup and "line one\n" in markup
    assert markup.count("<span style=\"background:") == 3
    assert f"background:{prob_color(0.9)}" in markup and "color:#000" in markup   # light end: dark text
    assert ('title="␣new: 90.0% (model), 90.0% after the filters&#10;'
            'model&#x27;s top choices: a 50.0% · ␣b 20.0%"') in markup
    assert "font-style:italic" in markup     # the end-of-text token is marked
    assert legend_html() in markup
    assert "0.01%0.1%1%10%100%" in visible_text(legend_html())


def test_esc():
    assert esc('a<b>&"{$`}') == "a&lt;b&gt;&amp;&quot;&#123;&#36;&#96;&#125;"


def test_probability_line():
    fig = probability_line(["a", "␣b", "c"], [0.5, 0.123456789, 0.9], [0.6, 0.2, 1.0])
    model, after = fig.data
    assert model.type == after.type == "scatter"
    assert list(model.x) == [1, 2, 3] and list(model.y) == [0.5, 0.12346, 0.9]
    assert list(model.marker.color) == [prob_color(p) for p in (0.5, 0.12346, 0.9)]
    assert list(after.y) == [0.6, 0.2, 1.0] and list(model.customdata) == ["a", "␣b", "c"]
    assert "average 50.8%" in fig.layout.title.text


# ---- endpoint ------------------------------------------------------------------------------------
def run_generate(client, *args):
    job = client.submit(*args, api_name="/generate")
    return job.result(), job.outputs()


def test_generate_endpoint_streams_and_is_deterministic(client, registry):
    args = (PROMPT, 0.9, 40, 1.0, 12, 3, registry.default)
    (notice, markup, plot, info), outputs = run_generate(client, *args)
    model = registry.get(registry.default).model
    expected = generate(model, prepare_prompt(PROMPT).ids, 12, temperature=0.9, top_k=40, seed=3)
    assert visible_text(markup).startswith(PROMPT + decode(expected))
    assert len(outputs) >= 2      # the first (empty) view, the final view; between them as time passes
    assert markup.count('<span style="background:') == len(expected)
    fig = plot_json(plot)
    assert len(fig["data"][0]["y"]) == len(expected)
    assert f"**{len(expected)}** new tokens" in info
    (_, again, _, again_info), _ = run_generate(client, *args)
    assert again == markup and again_info == info
    (_, other, _, _), _ = run_generate(client, PROMPT, 0.9, 40, 1.0, 12, 4, registry.default)
    assert other != markup


SPAN = re.compile(r'<span style="background:.*?</span>', re.DOTALL)


class FakeClock:
    """Stands in for the tab's ``time``: each generated token takes ``per_token`` seconds."""

    def __init__(self, per_token: float):
        self.now, self.per_token = 1000.0, per_token

    def monotonic(self) -> float:
        return self.now


def test_generate_stream_batches_tokens_per_update(client, registry, monkeypatch):
    """Updates go out at most every UPDATE_EVERY seconds of generation, each with every token made so far,
    fewer updates than tokens; the last is complete and is the unstreamed generation's view."""
    from explorer.tabs import generate_tab
    clock, real = FakeClock(0.03), generate_tab.generate_tokens

    def timed(*args, **kwargs):
        for t in real(*args, **kwargs):
            clock.now += clock.per_token
            yield t

    monkeypatch.setattr(generate_tab, "time", clock)
    monkeypatch.setattr(generate_tab, "generate_tokens", timed)
    n = 20
    (_, markup, plot, info), outputs = run_generate(client, PROMPT, 0.9, 40, 1.0, n, 3, registry.default)
    prompt = prepare_prompt(PROMPT)
    tokens = list(real(registry.get(registry.default).model, prompt.ids, n, 0.9, 40, 1.0, 3))
    assert len(tokens) == n       # no end-of-text in these 20 (else the counts below would differ)
    assert markup == tokens_html(prompt.text, tokens)
    assert f"**{n}** new tokens" in info and len(plot_json(plot)["data"][0]["y"]) == n
    every = math.ceil(generate_tab.UPDATE_EVERY / clock.per_token)      # tokens per update: 3
    counts = [len(SPAN.findall(o[1])) for o in outputs]
    assert counts == [0, *range(every, n, every), n] and len(outputs) < n
    final = SPAN.findall(markup)
    for o, k in zip(outputs[1:-1], counts[1:-1]):
        assert SPAN.findall(o[1]) == final[:k] and f"generating… {k}/{n}" in o[1]


def test_generate_greedy_ignores_the_seed(client, registry):
    (_, a, _, _), _ = run_generate(client, PROMPT, 0.0, 0, 1.0, 5, 1, registry.default)
    (_, b, _, _), _ = run_generate(client, PROMPT, 0.0, 0, 1.0, 5, 2, registry.default)
    assert a == b


@pytest.mark.parametrize("args, message", [
    (("", 1.0, 0, 1.0, 5, 0), "prompt is empty"),
    ((PROMPT, 2.5, 0, 1.0, 5, 0), r"Temperature \(0 = greedy\) must be between 0 and 2, got 2.5"),
    ((PROMPT, 1.0, 0, 0.0, 5, 0), r"Top-p \(1 = off\) must be between 0.05 and 1, got 0"),
    ((PROMPT, 1.0, 0, 1.5, 5, 0), r"Top-p \(1 = off\) must be between 0.05 and 1, got 1.5"),
    ((PROMPT, 1.0, 0, 1.0, 0, 0), r"New tokens must be between 1 and"),
    ((PROMPT, 1.0, 0, 1.0, MAX_NEW_TOKENS + 1, 0), rf"New tokens must be between 1 and {MAX_NEW_TOKENS}, got {MAX_NEW_TOKENS + 1}"),
    ((PROMPT, 1.0, 0, 1.0, 5, -1), r"Seed must be between 0 and"),
])
def test_generate_bad_input(client, registry, args, message):
    with pytest.raises(Exception, match=message):
        client.submit(*args, registry.default, api_name="/generate").result()


def test_md_text_escapes_markdown():
    from explorer.tabs.generate_tab import md_text
    assert md_text("<|endoftext|> *a_b*") == r"\<\|endoftext\|\> \*a\_b\*"
