"""Walkthrough tab: compute, figures, and its endpoint through gradio_client."""
import json
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from explorer.compute.walkthrough import (block_choices, picture, residual_norms, step_markdown, walkthrough_run,
                                          write_log)
from explorer.tabs.walkthrough_tab import _figure
from explorer.figures.walkthrough import (MASK_GREY, head_rows, key_rows, logit_histogram, residual_norm_path,
                                          top_tokens, vector_strip)
from explorer.inputs import prepare_prompt
from gpt2core import GPT2, get_config
from gpt2core.analysis.trace import format_log
from tests.conftest import plot_json

TEXT = "To be, or not to be, that is the question:"


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(2)
    return GPT2(get_config("tiny", n_layer=2, n_head=4, n_embd=32)).eval()


@pytest.fixture(scope="module")
def prompt():
    return prepare_prompt(TEXT)


# ---- compute ---------------------------------------------------------------------------------

def test_pictures_follow_each_steps_kind(tiny, prompt):
    tr = walkthrough_run(tiny, prompt.ids, 3)
    kinds = {s.key: picture(s, prompt.tokens) for s in tr.steps}
    assert kinds["embed.wte"].kind == "strip" and kinds["blocks.1.mlp.gelu"].values.shape == (128,)
    assert kinds["blocks.0.attn.q"].kind == "heads" and kinds["blocks.0.attn.q"].values.shape == (4, 8)
    keys = kinds["blocks.0.attn.pattern"]
    assert keys.kind == "keys" and keys.probabilities and keys.labels == prompt.tokens
    np.testing.assert_allclose(keys.values.sum(-1), 1, atol=1e-5)
    assert not kinds["blocks.0.attn.masked"].probabilities
    hist = kinds["final.logits"]
    assert hist.kind == "histogram" and hist.values.sum() == tiny.config.vocab_size
    assert hist.edges[0] == pytest.approx(float(tr.logits.min()))
    assert hist.edges[-1] == pytest.approx(float(tr.logits.max()))
    top = kinds["final.probs"]
    assert top.kind == "top" and list(top.values) == sorted(top.values, reverse=True) and len(top.labels) == 5


def test_step_markdown_prints_the_computed_statistics(tiny, prompt):
    tr = walkthrough_run(tiny, prompt.ids, 3)
    step = tr.step("blocks.0.ln_1")
    md = step_markdown(step, 4, 3)
    s, n = step.stats, step.notes
    T = len(prompt.ids)
    assert md.startswith("**4. ln_1") and f"shape ({T}, 32) for the prompt; token 3: (32,)" in md
    assert f"std {s['std']:.4g}" in md and f"‖v‖ {s['norm']:.4g}" in md
    assert f"std {n['std_in']:.4g} → after" in md
    masked = step_markdown(tr.step("blocks.0.attn.masked"), 9, 3)
    assert f"4 keys visible, {T - 4} later ones masked" in masked
    last = walkthrough_run(tiny, prompt.ids, -1).step("blocks.0.attn.masked")
    assert f"all {T} keys visible" in step_markdown(last, 9, T - 1)
    assert "next token:" in step_markdown(tr.step("final.probs"), 22, 3)


def test_block_list_and_residual_norms_come_from_the_trace(tiny, prompt):
    tr = walkthrough_run(tiny, prompt.ids, -1)
    choices = block_choices(tr)
    assert [v for _, v in choices] == [0, 1]
    assert choices[1][0] == f"block 1 · ‖x‖ {tr.blocks[1].norm_in:.3g} → {tr.blocks[1].norm_out:.3g}"
    norms, stages = residual_norms(tr)
    assert stages == ["embedding", "block 0", "block 1"]
    np.testing.assert_allclose(norms, [float(tr.step("embed.sum").vector.norm()),
                                       float(tr.step("blocks.0.resid_post").vector.norm()),
                                       float(tr.step("blocks.1.resid_post").vector.norm())], rtol=1e-5)


def test_log_file_holds_the_log_and_is_reused(tiny, prompt):
    tr = walkthrough_run(tiny, prompt.ids, 2)
    text, path = write_log(tr)
    assert text == format_log(tr) and path.read_text(encoding="utf-8") == text
    again, same = write_log(walkthrough_run(tiny, prompt.ids, 2))
    assert same == path and again == text
    assert not list(path.parent.glob("*.part"))


# ---- figures ---------------------------------------------------------------------------------

def test_vector_strip_is_one_row_centred_on_zero():
    v = np.array([0.5, -2.0, 1.0])
    hm = vector_strip(v).data[0]
    assert hm.type == "heatmap" and np.array(hm.z).shape == (1, 3)
    np.testing.assert_allclose(np.array(hm.z)[0], v)
    assert hm.zmin == -2 and hm.zmax == 2 and hm.zmid == 0


def test_head_rows_has_one_row_per_head():
    fig = head_rows(np.arange(12.0).reshape(3, 4) - 6)
    assert list(fig.data[0].y) == ["head 0", "head 1", "head 2"] and fig.data[0].zmax == 6


def test_key_rows_label_tokens_and_grey_out_the_mask():
    v = np.array([[0.2, -np.inf, -np.inf], [1.5, 0.1, -np.inf]])
    fig = key_rows(v, ["<b>", " cat", " cat"])
    hm = fig.data[0]
    assert list(hm.x) == ["0:&lt;b&gt;", "1: cat", "2: cat"]     # text, not markup; repeats keep a column
    z = np.array(hm.z, dtype=float)
    assert np.array_equal(np.isnan(z), ~np.isfinite(v)) and fig.layout.plot_bgcolor == MASK_GREY
    assert hm.zmin == -1.5 and hm.hoverongaps is False
    probs = key_rows(np.array([[1.0, 0.0]]), ["a", "b"], probabilities=True).data[0]
    assert probs.zmin == 0 and probs.zmax == 1


def test_logit_histogram_and_top_tokens():
    counts, edges = np.histogram(np.random.default_rng(0).normal(size=1000), bins=10)
    bar = logit_histogram(counts, edges).data[0]
    assert list(bar.y) == list(counts) and len(bar.x) == 10
    np.testing.assert_allclose(bar.x, (edges[:-1] + edges[1:]) / 2, atol=1e-4)   # rounded to 4 places
    top = top_tokens([" the", ","], [0.3, 0.1]).data[0]
    assert list(top.y) == ["0: the", "1:,"] and list(top.text) == ["30.0%", "10.0%"]


def test_residual_norm_path_marks_the_expanded_block():
    fig = residual_norm_path(["embedding", "block 0", "block 1"], [1.0, 2.0, 3.0], expanded=1)
    assert list(fig.data[0].marker.color) == ["#4c78a8", "#4c78a8", "#f58518"]


# ---- endpoint --------------------------------------------------------------------------------

def test_every_picture_passes_plotlys_validation(tiny, prompt):
    """The pictures skip plotly's validation of the figure for speed: each kind, titled or not, and the residual
    norm path, must pass it unchanged."""
    tr = walkthrough_run(tiny, prompt.ids, 3)
    figs = [_figure(picture(s, prompt.tokens)) for s in tr.steps]
    norms, stages = residual_norms(tr)
    figs += [vector_strip(np.arange(4.0), "a title"), residual_norm_path(stages, norms, expanded=1)]
    assert {f.data[0].type for f in figs} == {"heatmap", "bar", "scatter"}
    for fig in figs:
        checked = go.Figure(fig.to_dict())                   # validated: raises on any invalid property
        assert json.loads(checked.to_json()) == json.loads(fig.to_json())


def test_endpoint_returns_every_step(client, registry):
    out = client.predict(TEXT, -1, 1, registry.default, api_name="/walkthrough_view")
    cfg = registry.get(registry.default).model.config
    T = len(prepare_prompt(TEXT).ids)
    info, norms, *rest = out
    assert f"token **{T - 1}**" in info and "Block 1 is expanded" in info
    assert len(plot_json(norms)["data"][0]["y"]) == cfg.n_layer + 1
    embed, (blocks, title), block, final = rest[:6], rest[6:8], rest[8:40], rest[40:46]
    log, log_file = rest[46:]
    assert embed[0].startswith("**1. token embedding") and block[0].startswith("**4. ln_1")
    assert block[30].startswith("**19. residual add") and final[4].startswith("**22. softmax")
    assert blocks["value"] == 1 and len(blocks["choices"]) == cfg.n_layer
    assert title.startswith("#### Block 1")
    pattern = plot_json(block[13])["data"][0]          # step 7, softmax: heads x keys
    assert np.array(pattern["z"], dtype=float).shape == (cfg.n_head, T)
    assert f"[block {cfg.n_layer - 1}]" in log and "(not expanded)" not in log
    # gr.Code drops the last newline
    assert Path(log_file).read_text(encoding="utf-8").rstrip("\n") == log.rstrip("\n")


@pytest.mark.parametrize("position, block, message", [
    (99, 0, "must be between 0 and"), (0, 99, "Block (this model has"), (1.5, 0, "whole number"),
    ("two", 0, "must be a number")])
def test_endpoint_answers_bad_input_plainly(client, registry, position, block, message):
    with pytest.raises(Exception, match=message.replace("(", r"\(")):
        client.predict(TEXT, position, block, registry.default, api_name="/walkthrough_view")


def test_endpoint_refuses_an_empty_prompt(client, registry):
    with pytest.raises(Exception, match="empty"):
        client.predict("   ", -1, 0, registry.default, api_name="/walkthrough_view")
