import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from explorer.compute.gelu import (NEAR_ZERO, abs_quantile, clipped_histogram, clipped_histograms, curves_summary,
                                   gelu_curves, gelu_stats, histogram_edges, layer_summary, nice_ceil)
from explorer.figures.gelu import all_layers_heatmap, curves_figure, layer_histogram, shares_bars
from explorer.inputs import prepare_prompt
from gpt2core import GPT2, get_config
from tests.conftest import plot_json

PROMPT = "The quick brown fox jumps over the lazy dog, again and again."


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(2)
    m = GPT2(get_config("tiny", n_layer=3)).eval()
    with torch.no_grad():   # bigger pre-activations than the init, so some fall outside the bins
        for block in m.blocks:
            block.mlp.c_fc.weight.mul_(20)
            block.mlp.c_fc.bias.add_(torch.randn_like(block.mlp.c_fc.bias))
    return m


@torch.no_grad()
def reference_pre_post(model, ids):
    """GELU inputs rebuilt from resid_mid with F.layer_norm and c_fc; outputs with the exact erf GELU."""
    _, cache = model.run_with_cache(ids, names="*hook_resid_mid")
    pres, posts = [], []
    for i, block in enumerate(model.blocks):
        x = cache[f"blocks.{i}.hook_resid_mid"]
        h = F.layer_norm(x, (x.shape[-1],), block.ln_2.weight, block.ln_2.bias, block.ln_2.eps)
        pre = h @ block.mlp.c_fc.weight.T + block.mlp.c_fc.bias
        pres.append(pre.numpy())
        posts.append(F.gelu(pre, approximate="tanh").numpy())
    return np.stack(pres), np.stack(posts)


def test_gelu_curve_values():
    c = gelu_curves()
    mid = int(np.argmin(np.abs(c.x)))
    assert c.x[0] == -4 and c.x[-1] == 4 and c.x[mid] == 0
    assert c.gelu[mid] == 0 and c.gelu_grad[mid] == pytest.approx(0.5, abs=1e-12)
    # The tanh approximation stays within 1e-3 of the exact x * Phi(x).
    exact = c.x * 0.5 * (1 + np.vectorize(math.erf)(c.x / math.sqrt(2)))
    assert np.abs(c.gelu - exact).max() < 1e-3
    assert c.max_diff_exact == pytest.approx(np.abs(c.gelu - exact).max(), rel=1e-6)
    # Autograd slope against central finite differences of the curve itself.
    h = 1e-5
    x = torch.tensor(c.x, dtype=torch.float64)
    from gpt2core.reference.model import gelu
    fd = ((gelu(x + h) - gelu(x - h)) / (2 * h)).numpy()
    np.testing.assert_allclose(c.gelu_grad, fd, atol=1e-7)
    np.testing.assert_array_equal(c.relu, np.maximum(c.x, 0))
    np.testing.assert_array_equal(c.relu_grad, (c.x > 0).astype(float))
    assert c.min_gelu == pytest.approx(-0.17, abs=0.001) and c.argmin_gelu == pytest.approx(-0.75, abs=0.03)
    text = curves_summary(c)
    assert "0.500" in text and f"{c.max_diff_exact:.1e}" in text


def test_nice_ceil_and_edges():
    assert [nice_ceil(v) for v in (0.7, 1.0, 1.2, 2.2, 7, 33, 0.031)] == pytest.approx([0.8, 1, 1.5, 2.5, 8, 40, 0.04])
    assert nice_ceil(0) == 1 and nice_ceil(float("nan")) == 1
    edges = histogram_edges(np.array([-3.1, 0.2, 2.0]), n_bins=10, quantile=1.0)
    assert edges[0] == -4 and edges[-1] == 4 and len(edges) == 11 and 0 in edges
    with pytest.raises(ValueError):
        histogram_edges(np.ones(3), n_bins=7)


def test_clipped_histogram_keeps_every_value():
    counts, outside = clipped_histogram(np.array([-9.0, -0.5, 0.5, 0.5, 1.0, 9.0]), np.array([-1.0, 0.0, 1.0]))
    assert list(counts) == [2, 4] and outside == 2


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 50_000, 300_001])
def test_abs_quantile_of_a_tensor_is_numpys(n):
    values = torch.randn(n, generator=torch.Generator().manual_seed(n)) * 3
    for q in (0.5, 0.9, 0.999, 1.0):
        assert abs_quantile(values, q) == pytest.approx(float(np.quantile(np.abs(values.numpy()), q)), rel=1e-6)
    assert histogram_edges(values)[-1] == histogram_edges(values.numpy())[-1]


def test_abs_quantile_when_the_sampled_threshold_is_too_high(monkeypatch):
    # The large values sit only where the strided sample looks (every 15th of 10^6): the guessed threshold
    # leaves fewer values above it than the quantile needs, and a top-k of every value decides.
    values = torch.zeros(1_000_000)
    values[::15] = torch.arange(1, 66_668, dtype=torch.float32)
    sizes, topk = [], torch.topk
    monkeypatch.setattr(torch, "topk", lambda t, k, *a, **kw: sizes.append(t.numel()) or topk(t, k, *a, **kw))
    assert abs_quantile(values, 0.999) == pytest.approx(float(np.quantile(values.numpy(), 0.999)))
    assert sizes == [values.numel()]
    sizes.clear()
    assert abs_quantile(torch.randn(1_000_000, generator=torch.Generator().manual_seed(0)), 0.999) > 0
    assert sizes and max(sizes) < 100_000      # the usual case: a top-k of the few above the threshold


@pytest.mark.parametrize("r", [2.0, 1.5, 0.3, 40.0])
def test_clipped_histograms_match_numpy(r):
    """The torch counts against np.histogram of the clipped values: the same for random values, for the
    exact (and negative) zeros and tiny negatives GELU makes, for ±r itself and for values beyond it."""
    g = torch.Generator().manual_seed(int(r * 10))
    special = [0.0, -0.0, -1e-30, 1e-30, -3e-7, -2 * r, 3 * r]
    if float(np.float32(r)) == r:   # edges that float32 holds: ±r and ±r/2 themselves (0.3's are the documented
        special += [-r, r, r / 2, -r / 2]    # case of a value within a rounding step of an edge)
    special = torch.tensor(special, dtype=torch.float32)
    # (T, 4d)-shaped like the captured tensors, each with the special values among random ones
    tensors = [torch.cat([torch.randn(4000 - len(special), generator=g) * r * k, special]).reshape(40, 100)
               for k in (0.5, 1, 3)]
    edges = np.linspace(-r, r, 81)
    counts, outside = clipped_histograms(tensors, r, 80)
    assert counts.shape == (len(tensors), 80) and counts.dtype == np.int64
    for t, c, o in zip(tensors, counts, outside):
        expected, expected_outside = clipped_histogram(t.numpy().ravel(), edges)
        np.testing.assert_array_equal(c, expected)
        assert o == expected_outside and c.sum() == t.numel()
    # the exact zeros and the tiny negatives: either side of the middle edge
    c, _ = clipped_histograms([torch.tensor([0.0, -0.0, 0.0, -1e-30, -3e-7])], r, 80)
    assert c[0, 40] == 3 and c[0, 39] == 2 and c.sum() == 5


def test_gelu_stats_match_a_direct_computation(model):
    ids = prepare_prompt(PROMPT).ids
    stats = gelu_stats(model, ids)
    pre, post = reference_pre_post(model, ids)
    L, T, n = pre.shape
    assert (stats.n_tokens, stats.n_neurons, stats.n_values) == (T, n, T * n) and n == 4 * model.config.n_embd
    assert stats.pre_counts.shape == stats.post_counts.shape == (L, len(stats.edges) - 1)
    assert (stats.pre_counts.sum(1) == T * n).all() and (stats.post_counts.sum(1) == T * n).all()
    lo, hi = stats.edges[0], stats.edges[-1]
    assert lo == -hi
    for i in range(L):
        expected = np.histogram(np.clip(pre[i], lo, hi), bins=stats.edges)[0]
        # A value sitting on a bin edge may land one bin over after float rounding differences.
        assert np.abs(stats.pre_counts[i] - expected).sum() <= 4
        assert stats.pre_outside[i] == np.count_nonzero(np.abs(pre[i]) > hi)
    np.testing.assert_allclose(stats.neg_share, (pre < 0).mean(axis=(1, 2)), atol=2 / (T * n))
    # from the captured tensors themselves (the reference above rebuilds them, to float rounding): exact
    _, cache = model.run_with_cache(ids, names=["blocks.*.mlp.hook_pre", "blocks.*.mlp.hook_post"])
    cap_pre = cache.stack("blocks.{}.mlp.hook_pre", L).numpy()
    cap_post = cache.stack("blocks.{}.mlp.hook_post", L).numpy()
    np.testing.assert_array_equal(stats.edges, histogram_edges(cap_pre))
    np.testing.assert_array_equal(stats.neg_share, (cap_pre < 0).mean(axis=(1, 2)))
    np.testing.assert_array_equal(stats.zero_share, (np.abs(cap_post) < NEAR_ZERO).mean(axis=(1, 2)))
    for i in range(L):
        for captured, counts, outside in ((cap_pre, stats.pre_counts, stats.pre_outside),
                                          (cap_post, stats.post_counts, stats.post_outside)):
            expected, expected_outside = clipped_histogram(captured[i].ravel(), stats.edges)
            assert np.abs(counts[i] - expected).sum() <= 2     # float32 rounding at an edge other than 0
            assert outside[i] == expected_outside
    np.testing.assert_allclose(stats.zero_share, (np.abs(post) < NEAR_ZERO).mean(axis=(1, 2)), atol=2 / (T * n))
    assert stats.threshold == NEAR_ZERO
    text = layer_summary(stats, 1)
    assert f"{stats.neg_share[1]:.1%}" in text and f"|out| < {NEAR_ZERO:g}" in text and f"{T * n:,}" in text


def test_curves_figure():
    c = gelu_curves()
    fig = curves_figure(c)
    assert [t.type for t in fig.data] == ["scatter"] * 4
    assert [t.xaxis for t in fig.data] == ["x", "x", "x2", "x2"]
    assert len(fig.data[0].x) == len(c.x) and fig.data[0].name.startswith("GELU")
    assert fig.data[3].line.shape == "hv"
    fig = curves_figure(c, show_exact=True)
    assert len(fig.data) == 5 and "exact" in fig.data[2].name


def test_layer_histogram():
    edges = np.array([-1.0, 0.0, 1.0, 2.0])
    fig = layer_histogram(edges, [1, 2, 3], [0, 5, 1], layer=2, log_y=True)
    assert [t.type for t in fig.data] == ["bar", "bar"]
    assert list(fig.data[0].x) == pytest.approx([-0.5, 0.5, 1.5]) and list(fig.data[1].y) == [0, 5, 1]
    assert fig.layout.yaxis.type == "log" and "Layer 2" in fig.layout.title.text
    assert list(fig.data[1].customdata) == pytest.approx([0, 5 / 6, 1 / 6], abs=1e-5)


def test_all_layers_heatmap():
    edges = np.linspace(-1, 1, 5)
    pre, post = np.array([[1, 1, 1, 1], [0, 0, 2, 2]]), np.array([[0, 4, 0, 0], [0, 2, 2, 0]])
    fig = all_layers_heatmap(edges, pre, post)
    assert [t.type for t in fig.data] == ["heatmap", "heatmap"]
    assert np.asarray(fig.data[0].z).shape == (2, 4) and list(fig.data[0].y) == ["L0", "L1"]
    np.testing.assert_allclose(np.asarray(fig.data[1].z).sum(1), [1, 1])
    assert fig.data[0].zmax == 1
    # two panels side by side on one layer axis, each titled
    lay = fig.layout
    assert [(t.xaxis, t.yaxis) for t in fig.data] == [("x", "y"), ("x2", "y2")]
    assert lay.xaxis.domain[1] < lay.xaxis2.domain[0] and lay.yaxis2.matches == "y"
    assert lay.yaxis.autorange == lay.yaxis2.autorange == "reversed"
    assert [a.text for a in lay.annotations] == ["GELU inputs", "GELU outputs"]
    assert [t.showscale for t in fig.data] == [False, True]


def test_shares_bars():
    fig = shares_bars([0.5, 0.25], [0.1, 0.2], 0.01, selected=1)
    assert [t.type for t in fig.data] == ["bar", "bar"]
    assert "|out| < 0.01" in fig.data[1].name and list(fig.data[0].y) == pytest.approx([0.5, 0.25])
    assert list(fig.data[0].text) == ["50%", "25%"]
    assert len(fig.layout.shapes) == 1 and fig.layout.shapes[0].x0 == 0.5 and fig.layout.shapes[0].x1 == 1.5
    assert len(shares_bars([0.5], [0.1], 0.01).layout.shapes) == 0


def test_gelu_curves_endpoint(client):
    fig, md = client.predict(True, api_name="/gelu_curves")
    data = plot_json(fig)["data"]
    assert len(data) == 5 and "exact" in data[2]["name"] and "0.500" in md
    fig, _ = client.predict(False, api_name="/gelu_curves")
    assert len(plot_json(fig)["data"]) == 4
    with pytest.raises(Exception, match="show_exact must be true or false"):
        client.predict("yes", api_name="/gelu_curves")


def test_gelu_view_endpoint(client, registry):
    model = registry.get(registry.default).model
    layer = model.config.n_layer - 1
    notice, layer_out, summary, hist, shares, all_layers = client.predict(
        PROMPT, layer, False, registry.default, api_name="/gelu_view")
    assert notice == "" and layer_out == layer and f"Layer {layer}" in summary
    pre, post = reference_pre_post(model, prepare_prompt(PROMPT).ids)
    L, T, n = pre.shape
    bars = plot_json(hist)["data"]
    assert sum(bars[0]["y"]) == T * n and sum(bars[1]["y"]) == T * n
    share = plot_json(shares)["data"]
    np.testing.assert_allclose(share[0]["y"], (pre < 0).mean(axis=(1, 2)), atol=1e-3)
    np.testing.assert_allclose(share[1]["y"], (np.abs(post) < NEAR_ZERO).mean(axis=(1, 2)), atol=1e-3)
    heat = plot_json(all_layers)["data"]
    assert np.asarray(heat[0]["z"]).shape[0] == L


@pytest.mark.parametrize("prompt, layer, message", [
    ("", 0, "empty"),
    ("Hello", 999, "layer must be between 0 and"),
    ("Hello", None, "Layer .* must be a number, got nothing"),
    ("Hello", -1, r"Layer .* must be at least 0, got -1"),
])
def test_gelu_view_bad_input(client, registry, prompt, layer, message):
    with pytest.raises(Exception, match=message):
        client.predict(prompt, layer, False, registry.default, api_name="/gelu_view")
