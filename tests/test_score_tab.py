"""Score tab: GLTR buckets, the summary, the coloured text and figures, and the /score_text endpoint."""
import html
import math
import re

import numpy as np
import pytest
import torch

from explorer.compute.score import (BUCKET_NAMES, RANK_EDGES, bucket_counts, bucket_of, rank_histogram,
                                    score_view, summary_markdown, surprising_rows, token_texts)
from explorer.figures.score import (BUCKET_COLORS, UNSCORED, rank_histogram_bars, scored_text_html,
                                    surprisal_color, surprisal_line)
from explorer.inputs import InputError, Prompt, prepare_prompt
from gpt2core import EOT_ID, GPT2, get_config
from gpt2core.text import tokenizer
from gpt2core.analysis.score import score_tokens
from tests.conftest import plot_json

TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun."


def visible_text(markup: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


@pytest.fixture(scope="module")
def model(registry):
    return registry.get(registry.default).model


# ---- compute -------------------------------------------------------------------------------------

def test_bucket_limits_and_counts():
    ranks = np.array([1, 10, 11, 100, 101, 1000, 1001, 50257, 3, 7])
    assert bucket_of(ranks).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 0, 0]
    assert bucket_counts(ranks).tolist() == [4, 2, 2, 2]
    assert bucket_counts(np.array([5, 5])).tolist() == [2, 0, 0, 0]   # empty buckets are counted as 0


def test_rank_histogram_bins_stay_inside_buckets():
    ranks = np.array([1, 1, 2, 3, 4, 10, 11, 30, 31, 100, 101, 1000, 1001, 50257])
    counts, labels, buckets = rank_histogram(ranks)
    assert counts.sum() == len(ranks) and len(labels) == len(RANK_EDGES) - 1 == len(buckets)
    assert labels[0] == "1" and labels[1] == "2–3" and labels[-1] == "30,001–50,257"
    assert counts[0] == 2 and counts[1] == 2 and counts[2] == 2      # 1,1 | 2,3 | 4,10
    # the histogram grouped by bucket gives the bucket counts
    assert np.bincount(buckets, weights=counts, minlength=4).tolist() == bucket_counts(ranks).tolist()


def test_score_view_matches_the_core(model):
    prompt = prepare_prompt(TEXT)
    view = score_view(model, prompt)
    s = score_tokens(model, prompt.ids, start_token=EOT_ID)    # GLTR's start: every token is scored
    assert view.first == 0 and s.first == 0
    assert np.allclose(view.probs, np.exp(s.logprobs)) and (view.ranks == s.ranks).all()
    assert len(view.texts) == len(prompt.ids) and "".join(view.texts) == prompt.text
    assert len(view.alternatives) == len(prompt.ids) and all(len(a) == 5 for a in view.alternatives)
    # the top alternative of a rank-1 token is that token
    k = int(np.flatnonzero(view.ranks == 1)[0])
    assert view.alternatives[k][0][0] == view.labels[k]
    md = summary_markdown(view)
    counts = bucket_counts(view.ranks)
    assert f"**{len(prompt.ids)} tokens scored**" in md and f"top 10: **{counts[0]}**" in md
    assert "<|endoftext|>` token, so the first token is scored" in md
    assert f"Perplexity {math.exp(-s.logprobs.mean()):,.1f}" in md
    assert f"Mean surprisal {float(np.mean(-s.logprobs / math.log(2))):.2f} bits" in md
    assert "one forward pass" in md


def test_long_text_is_scored_in_windows(model):
    n_ctx = model.config.n_ctx
    prompt = prepare_prompt("To be, or not to be, that is the question. " * 40, keep="start")
    assert len(prompt.ids) > n_ctx
    view = score_view(model, prompt)
    assert len(view.ranks) == len(prompt.ids)
    md = summary_markdown(view)
    s = view.scores
    assert s.n_windows > 1 and f"**{s.n_windows} windows** of {n_ctx} tokens" in md
    assert f"an overlap of {n_ctx - n_ctx // 2} tokens" in md


def test_surprising_rows(model):
    view = score_view(model, prepare_prompt(TEXT))
    rows = surprising_rows(view)
    assert len(rows) == 10
    bits = [r[4] for r in rows]
    assert bits == sorted(bits, reverse=True) and bits[0] == round(float(view.bits.max()), 2)
    top = rows[0]
    pos = top[0]
    assert top[1] == view.labels[pos] and top[3] == int(view.ranks[pos - view.first])
    assert top[6].replace("↵", "\n") == "".join(view.texts[:pos])[-40:]


def test_token_texts_show_split_characters_once():
    ids = tokenizer.encode("a 😀 b")
    texts = token_texts(ids)
    assert "".join(texts) == "a 😀 b" and sum("😀" in t for t in texts) == 1


def test_one_token_is_scored_after_the_start_token(model):
    view = score_view(model, prepare_prompt("Hi"))
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([[EOT_ID]]))[0, 0].double(), -1)
    assert len(view.ranks) == 1 and view.probs[0] == pytest.approx(float(lp[tokenizer.encode("Hi")[0]].exp()),
                                                                   rel=1e-5)
    with pytest.raises(InputError, match="empty"):
        score_view(model, Prompt("", [], []))


# ---- figures -------------------------------------------------------------------------------------

def test_scored_text_html_rank_and_surprisal():
    texts, labels = ["To", " be", "<b>"], ["To", "␣be", "<b>"]
    probs, ranks, bits = np.array([0.5, 1e-6]), np.array([1, 5000]), np.array([1.0, 19.9])
    alts = [[("␣be", 0.5)] * 5, [("␣x", 0.1)] * 5]
    out = scored_text_html(texts, labels, 1, probs, ranks, bits, bucket_of(ranks), alts, BUCKET_NAMES, "rank")
    assert visible_text(out).startswith("To be<b>")
    assert UNSCORED in out and BUCKET_COLORS[0] in out and BUCKET_COLORS[3] in out
    assert "rank 5,000" in html.unescape(out) and "probability 50.0%" in html.unescape(out)
    assert "<script" not in out and "&lt;b&gt;" in out
    sur = scored_text_html(texts, labels, 1, probs, ranks, bits, bucket_of(ranks), alts, BUCKET_NAMES,
                           "surprisal")
    assert surprisal_color(1.0) in sur and surprisal_color(19.9) in sur and BUCKET_COLORS[3] not in sur
    assert surprisal_color(0) != surprisal_color(20) and surprisal_color(25) == surprisal_color(20)


def test_rank_histogram_bars():
    counts, labels, buckets = rank_histogram(np.array([1, 2, 50, 5000]))
    fig = rank_histogram_bars(counts, labels, buckets, BUCKET_NAMES)
    bar = fig.data[0]
    assert list(bar.x) == labels and list(bar.y) == counts.tolist()
    assert bar.marker.color[0] == BUCKET_COLORS[0] and bar.marker.color[-1] == BUCKET_COLORS[3]
    assert "4 scored tokens" in fig.layout.title.text


def test_surprisal_line():
    fig = surprisal_line(["a", "<0xF0>", "c"], 1, np.array([1.0, 3.0]), np.array([1, 200]), np.array([0, 2]))
    sc = fig.data[0]
    assert list(sc.x) == [1, 2] and list(sc.y) == [1.0, 3.0]
    assert sc.customdata[0][0] == "&lt;0xF0&gt;" and sc.marker.color[1] == BUCKET_COLORS[2]
    assert "mean 2.00 bits" in fig.layout.title.text


# ---- endpoint ------------------------------------------------------------------------------------

def test_score_endpoint(client, registry, model):
    notice, text_html, md, hist, line, table = client.predict(TEXT, "rank", registry.default,
                                                              api_name="/score_text")
    prompt = prepare_prompt(TEXT, keep="start")
    s = score_tokens(model, prompt.ids, start_token=EOT_ID)
    assert visible_text(text_html).startswith("ROMEO:\nBut soft")
    assert f"Perplexity {s.perplexity:,.1f}" in md and notice == ""
    counts, _, _ = rank_histogram(s.ranks)
    assert plot_json(hist)["data"][0]["y"] == counts.tolist()
    assert len(plot_json(line)["data"][0]["y"]) == len(prompt.ids)
    rows = table["data"]
    assert len(rows) == 10 and int(rows[0][3]) == int(s.ranks[int(np.argmax(-s.logprobs))])
    _, sur_html, *_ = client.predict(TEXT, "surprisal", registry.default, api_name="/score_text")
    assert BUCKET_COLORS[0] not in sur_html and BUCKET_COLORS[0] in text_html


def test_score_endpoint_long_text(client, registry):
    notice, _, md, *_ = client.predict("word " * 700, "rank", registry.default, api_name="/score_text")
    # the start token makes the 512th: the app's limit holds
    assert "only the first 511" in notice and "**511 tokens scored**" in md and "windows" in md


@pytest.mark.parametrize("args, message", [
    (("", "rank"), "The prompt is empty"),
    ((" \n\t ", "rank"), "The prompt is empty"),
    (("\x00\x07\x1b", "rank"), "The prompt is empty"),
    ((TEXT, "colour"), "Colour by must be 'rank' or 'surprisal', got 'colour'"),
])
def test_score_endpoint_bad_input(client, registry, args, message):
    with pytest.raises(Exception, match=message):
        client.predict(*args, registry.default, api_name="/score_text")


def test_score_with_a_random_model_in_windows():
    """A model with a 16-token context scores a 40-token text in windows, with the HF-free reference."""
    torch.manual_seed(0)
    model = GPT2(get_config("tiny", n_layer=1, n_embd=32, n_head=2, n_ctx=16)).eval()
    prompt = prepare_prompt(TEXT)
    view = score_view(model, prompt)
    assert view.scores.n_windows > 1 and len(view.ranks) == len(prompt.ids)
