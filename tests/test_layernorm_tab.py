import numpy as np
import pytest
import torch
import torch.nn.functional as F

from explorer.compute.layernorm import (layernorm_names, layernorm_stats, learned_scale_shift, residual_summary,
                                        scale_shift_summary, stage_labels, token_summary)
from explorer.figures.layernorm import before_after_heatmaps, residual_norm_lines, token_profile
from explorer.inputs import prepare_prompt
from gpt2core import GPT2, get_config
from tests.conftest import plot_json

PROMPT = "The cat sat on the mat. <tag> & 100%"


@pytest.fixture(scope="module")
def perturbed_model():
    """A tiny model whose LayerNorm scales and shifts are not 1 and 0, so 'after' is not 0/1."""
    torch.manual_seed(1)
    model = GPT2(get_config("tiny", n_layer=3)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln_" in name:
                p.add_(torch.randn_like(p) * 0.5)
    return model


@torch.no_grad()
def reference_stats(model, ids):
    """Each LayerNorm's input rebuilt from the residual stream, its output from F.layer_norm."""
    n = model.config.n_layer
    _, cache = model.run_with_cache(ids, names=["*hook_resid_pre", "*hook_resid_mid", "*hook_resid_post"])
    inputs, modules = [], []
    for i in range(n):
        inputs += [cache[f"blocks.{i}.hook_resid_pre"], cache[f"blocks.{i}.hook_resid_mid"]]
        modules += [model.blocks[i].ln_1, model.blocks[i].ln_2]
    inputs.append(cache[f"blocks.{n - 1}.hook_resid_post"])
    modules.append(model.ln_f)
    rows = {"in_mean": [], "in_std": [], "out_mean": [], "out_std": []}
    for x, ln in zip(inputs, modules):
        x = x.double()
        out = F.layer_norm(x, (x.shape[-1],), ln.weight.double(), ln.bias.double(), ln.eps)
        rows["in_mean"].append(x.mean(-1))
        rows["in_std"].append(x.std(-1, unbiased=False))
        rows["out_mean"].append(out.mean(-1))
        rows["out_std"].append(out.std(-1, unbiased=False))
    resid = [cache["blocks.0.hook_resid_pre"]] + [cache[f"blocks.{i}.hook_resid_post"] for i in range(n)]
    norms = torch.stack([torch.linalg.vector_norm(r.double(), dim=-1) for r in resid]).numpy()
    return {k: torch.stack(v).numpy() for k, v in rows.items()}, norms


def test_names_and_stages():
    names = layernorm_names(2)
    assert names == [("L0 ln_1", "blocks.0.ln_1"), ("L0 ln_2", "blocks.0.ln_2"),
                     ("L1 ln_1", "blocks.1.ln_1"), ("L1 ln_2", "blocks.1.ln_2"), ("ln_f", "ln_f")]
    assert stage_labels(3) == ["embed", "L0", "L1", "L2"]


def test_stats_match_an_independent_layernorm(perturbed_model):
    ids = prepare_prompt(PROMPT).ids
    stats = layernorm_stats(perturbed_model, ids)
    ref, norms = reference_stats(perturbed_model, ids)
    T, N = len(ids), 2 * 3 + 1
    assert stats.labels[0] == "L0 ln_1" and stats.labels[-1] == "ln_f" and len(stats.labels) == N
    for key in ref:
        got = getattr(stats, key)
        assert got.shape == (N, T)
        np.testing.assert_allclose(got, ref[key], rtol=1e-4, atol=1e-5, err_msg=key)
    np.testing.assert_allclose(stats.resid_norm, norms, rtol=1e-5)
    assert stats.stages == ["embed", "L0", "L1", "L2"]
    # The learned scale/shift move "after" away from 0 / 1.
    assert np.abs(stats.out_std - 1).max() > 0.05 and np.abs(stats.out_mean).max() > 0.05


def test_untrained_layernorm_gives_mean_0_and_std_near_1():
    torch.manual_seed(0)
    model = GPT2(get_config("tiny")).eval()
    stats = layernorm_stats(model, prepare_prompt(PROMPT).ids)
    eps = model.config.layer_norm_eps
    assert np.abs(stats.out_mean).max() < 1e-5
    # Exactly sqrt(var / (var + eps)) since the scale is 1 and the shift 0.
    np.testing.assert_allclose(stats.out_std, stats.in_std / np.sqrt(stats.in_std ** 2 + eps), rtol=1e-4)
    assert "between 1 and 1" in scale_shift_summary(model)


def test_summaries_use_the_numbers(perturbed_model):
    prompt = prepare_prompt(PROMPT)
    stats = layernorm_stats(perturbed_model, prompt.ids)
    text = token_summary(stats, 2, prompt.tokens[2])
    assert f"{stats.in_std[:, 2].max():.3g}" in text and f"{stats.out_std[:, 2].min():.3g}" in text
    top = int(np.argmax(stats.resid_norm[-1]))
    assert f"token {top}" in residual_summary(stats, prompt.tokens)
    w = [r[1] for r in learned_scale_shift(perturbed_model)]
    assert f"{min(w):.3g}" in scale_shift_summary(perturbed_model)


def test_before_after_heatmaps():
    labels, tokens = ["L0 ln_1", "ln_f"], ["a", "<0x0A>", "a"]
    before, after = np.array([[1.0, 2, 3], [4, 5, 6]]), np.array([[0.5, -1, 1], [0, 0, 2]])
    fig = before_after_heatmaps(labels, tokens, before, after, kind="mean")
    assert [t.type for t in fig.data] == ["heatmap", "heatmap"]
    assert np.asarray(fig.data[1].z).shape == (2, 3)
    assert fig.data[0].zmid == 0 and fig.data[1].zmin == -2 and fig.data[1].zmax == 2
    assert list(fig.data[0].x) == ["0:a", "1:&lt;0x0A&gt;", "2:a"] and list(fig.data[0].y) == labels
    std = before_after_heatmaps(labels, tokens, before, np.abs(after), kind="std")
    assert std.data[0].zmin == 0 and std.data[0].zmax == 6 and std.data[0].colorscale != fig.data[0].colorscale
    tiny = before_after_heatmaps(labels, tokens, before * 1e-9, after * 1e-9, kind="mean")
    assert tiny.data[1].zmax == 1e-3   # ~0 means show as 0, not as amplified noise
    with pytest.raises(ValueError):
        before_after_heatmaps(labels, tokens, before, after, kind="var")


def test_token_profile():
    fig = token_profile(["a", "b"], [0.1, 0.2], [3, 4], [0, 0.5], [1, 0.9], "2: cat")
    assert [t.type for t in fig.data] == ["bar"] * 4
    assert [t.name for t in fig.data] == ["before", "after", "before", "after"]
    assert list(fig.data[0].y) == pytest.approx([3, 4]) and list(fig.data[3].y) == pytest.approx([0, 0.5])
    assert "2: cat" in fig.layout.title.text


def test_residual_norm_lines():
    norms = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 9.0]])
    fig = residual_norm_lines(["embed", "L0"], norms, ["x", "<y>", "z"])
    assert len(fig.data) == 4 and all(t.type == "scatter" for t in fig.data)
    assert list(fig.data[1].x) == ["embed", "L0"] and list(fig.data[1].y) == pytest.approx([2, 4])
    assert "&lt;y&gt;" in fig.data[1].hovertemplate
    assert list(fig.data[-1].y) == pytest.approx([2, 4]) and fig.data[-1].name == "median over tokens"


def test_layernorm_view_endpoint(client, registry):
    model = registry.get(registry.default).model
    prompt = prepare_prompt(PROMPT)
    out = client.predict(PROMPT, 3, registry.default, api_name="/layernorm_view")
    notice, token, scale_md, std_fig, mean_fig, token_fig, token_md, resid_fig, resid_md = out
    assert token == 3 and notice == "" and "Token 3" in token_md
    ref, norms = reference_stats(model, prompt.ids)
    std = plot_json(std_fig)["data"]
    np.testing.assert_allclose(std[0]["z"], ref["in_std"], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(std[1]["z"], ref["out_std"], rtol=1e-3, atol=1e-4)
    mean = plot_json(mean_fig)["data"]
    assert mean[0]["zmid"] == 0
    np.testing.assert_allclose(mean[0]["z"], ref["in_mean"], atol=1e-4)
    bars = plot_json(token_fig)["data"]
    np.testing.assert_allclose(bars[0]["y"], ref["in_std"][:, 3], rtol=1e-3, atol=1e-4)
    lines = plot_json(resid_fig)["data"]
    assert len(lines) == len(prompt.ids) + 1
    np.testing.assert_allclose(lines[0]["y"], norms[:, 0], rtol=1e-3)
    assert "Median norm" in resid_md and "scale (weight)" in scale_md


def test_token_past_the_end_shows_the_last_token(client, registry):
    out = client.predict("Hello there", 100, registry.default, api_name="/layernorm_view")
    assert out[1] == 1 and "past the end" in out[0] and "Token 1" in out[6]


@pytest.mark.parametrize("prompt, token, message", [
    ("", 0, "empty"),
    ("   ", 0, "empty"),
    ("Hello", -1, r"must be between 0 and 127, got -1"),
    ("Hello", 1000, r"must be between 0 and 127, got 1000"),
    ("Hello", 1.5, "whole number"),
])
def test_layernorm_view_bad_input(client, registry, prompt, token, message):
    with pytest.raises(Exception, match=message):
        client.predict(prompt, token, registry.default, api_name="/layernorm_view")


def test_residual_norm_lines_long_prompt_is_one_trace_with_gaps():
    T = 40
    norms = np.arange(2 * T, dtype=float).reshape(2, T)
    fig = residual_norm_lines(["embed", "L0"], norms, [f"t{i}" for i in range(T)])
    assert len(fig.data) == 2 and fig.data[-1].name == "median over tokens"
    lines = fig.data[0]
    assert len(lines.x) == len(lines.y) == len(lines.text) == 3 * T
    assert list(lines.x[3:5]) == ["embed", "L0"] and lines.x[5] is None and lines.y[5] is None
    assert list(lines.y[3:5]) == pytest.approx([1, T + 1]) and lines.text[3] == "1: t1"
