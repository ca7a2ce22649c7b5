import json
import math

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
import torch.nn.functional as F

from explorer.compute.attention import attention_run, future_mask, head_average, pool_patterns, query_row
from explorer.figures.attention import (GRID_MAX_CELLS, GRID_MIN_CELLS, MASK_NOTE, _GAP_CODE, _MASKED_CODE,
                                        attention_heatmap, head_grid, query_heads)
from explorer.figures.common import unique_labels
from explorer.inputs import MAX_VIEW_TOKENS, prepare_prompt
from gpt2core import GPT2, get_config
from tests.conftest import plot_json

TEXT = "The cat sat on the mat because the cat was tired."


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(1)
    return GPT2(get_config("tiny", n_layer=3, n_head=4, n_embd=32)).eval()


@pytest.fixture(scope="module")
def ids():
    return prepare_prompt(TEXT).ids


def random_patterns(L, H, T, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(L, H, T, T)) * 3
    x[..., future_mask(T)] = -np.inf
    p = np.exp(x - x.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)).astype(np.float32)


# ---- compute ---------------------------------------------------------------------------------

def test_future_mask_is_keys_after_the_query():
    m = future_mask(5)
    assert all(m[i, j] == (j > i) for i in range(5) for j in range(5))


def test_patterns_rows_sum_to_one_and_only_future_is_masked(tiny, ids):
    run = attention_run(tiny, ids)
    T = len(ids)
    assert run.patterns.shape == (3, 4, T, T) and run.scores is None
    future = np.greater.outer(np.arange(T), np.arange(T)).T      # key index > query index
    assert np.all(run.patterns[..., future] == 0)
    assert np.all(run.patterns[..., ~future] > 0)
    np.testing.assert_allclose(run.patterns.sum(-1), 1, atol=1e-5)


def test_layer0_pattern_matches_a_hand_computation(tiny, ids):
    """softmax(q k^T / sqrt(d_head)) with a causal mask, from the weights, for layer 0."""
    T, nh = len(ids), tiny.config.n_head
    with torch.no_grad():
        x = tiny.wte.weight[ids] + tiny.wpe.weight[:T]
        ln = tiny.blocks[0].ln_1
        h = F.layer_norm(x, (x.shape[-1],), ln.weight, ln.bias, ln.eps)
        q, k, _ = tiny.blocks[0].attn.c_attn(h).split(x.shape[-1], dim=-1)
        q = q.view(T, nh, -1).transpose(0, 1)
        k = k.view(T, nh, -1).transpose(0, 1)
        s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
        expected = torch.softmax(s, -1).numpy()
    np.testing.assert_allclose(attention_run(tiny, ids).patterns[0], expected, atol=1e-5)


def test_scores_are_nan_where_masked_and_softmax_to_the_pattern(tiny, ids):
    run = attention_run(tiny, ids, scores_layer=1)
    T = len(ids)
    assert run.scores.shape == (4, T, T) and run.scores_layer == 1
    assert np.array_equal(np.isnan(run.scores), np.broadcast_to(future_mask(T), run.scores.shape))
    again = torch.softmax(torch.from_numpy(np.nan_to_num(run.scores, nan=-np.inf)), -1).numpy()
    np.testing.assert_allclose(again, run.patterns[1], atol=1e-5)


def test_head_average_and_query_row_match_torch(tiny, ids):
    _, cache = tiny.run_with_cache(ids, names=["blocks.2.attn.hook_pattern"])
    pattern = cache["blocks.2.attn.hook_pattern"]
    run = attention_run(tiny, ids)
    np.testing.assert_allclose(head_average(run.patterns, 2), pattern.mean(0).numpy(), atol=1e-6)
    q = 4
    np.testing.assert_array_equal(query_row(run.patterns, 2, q), pattern[:, q, :q + 1].numpy())


def test_pool_patterns_against_loops():
    T, cells = 10, 4
    p = random_patterns(2, 3, T)
    pooled, step = pool_patterns(p, cells)
    assert step == 3 and pooled.shape == (2, 3, 4, 4)
    groups = [range(0, 3), range(3, 6), range(6, 9), range(9, 10)]
    for a, qg in enumerate(groups):
        for b, kg in enumerate(groups):
            if min(kg) > max(qg):
                assert np.isnan(pooled[..., a, b]).all()
            else:
                want = np.mean([p[..., i, list(kg)].sum(-1) for i in qg], axis=0)
                np.testing.assert_allclose(pooled[..., a, b], want, atol=1e-6)
    np.testing.assert_allclose(np.nansum(pooled, -1), 1, atol=1e-5)   # rows still add up to 1
    same, step1 = pool_patterns(p, 16)
    assert step1 == 1 and np.array_equal(np.isnan(same[0, 0]), future_mask(T))


# ---- figures ---------------------------------------------------------------------------------

def test_attention_heatmap_labels_mask_and_hover():
    tokens = ["The", " cat", " sat", " the", " the"]      # repeated tokens keep their own row
    m = random_patterns(1, 1, 5)[0, 0]
    fig = attention_heatmap(m, tokens, "a head", query=2)
    assert [t.type for t in fig.data] == ["heatmap", "scatter"]
    hm = fig.data[0]
    assert list(hm.x) == list(hm.y) == unique_labels(tokens)
    z = np.array(hm.z, dtype=float)
    assert np.array_equal(np.isnan(z), future_mask(5))
    np.testing.assert_allclose(z[~future_mask(5)], m[~future_mask(5)], atol=1e-4)
    assert hm.zmin == 0 and hm.zmax == 1 and hm.hoverongaps is False
    assert "%{y} ← %{x}: %{z" in hm.hovertemplate
    assert fig.data[1].name == MASK_NOTE and fig.layout.plot_bgcolor == fig.data[1].marker.color
    rect = fig.layout.shapes[0]
    assert (rect.y0, rect.y1, rect.x1) == (1.5, 2.5, 2.5)
    assert fig.layout.yaxis.autorange == "reversed"


def test_attention_heatmap_scores_are_diverging():
    s = np.random.default_rng(0).normal(size=(4, 4)) * 5
    fig = attention_heatmap(s, list("abcd"), "scores", scores=True)
    hm = fig.data[0]
    assert hm.zmid == 0 and hm.zmin == -hm.zmax
    assert np.isnan(np.array(hm.z, dtype=float)[0, 3])
    assert hm.zmax == pytest.approx(np.abs(s[~future_mask(4)]).max(), rel=1e-4)


def _tile(fig, layer, head, H, size):
    """Read one thumbnail back out of the grid image, using its title's position."""
    z = np.asarray(fig.data[0].z)
    ann = fig.layout.annotations[layer * H + head]
    col0, row0 = int(round(ann.x - (size - 1) / 2)), int(round(ann.y + 0.6))
    return z, row0, col0, z[row0:row0 + size, col0:col0 + size]


def test_head_grid_tiles_titles_and_selection():
    L, H, T = 3, 4, 20
    pooled, step = pool_patterns(random_patterns(L, H, T), GRID_MAX_CELLS)
    fig = head_grid(pooled, step, selected=(1, 2))
    hm = fig.data[0]
    assert hm.type == "heatmap" and np.asarray(hm.z).dtype == np.uint8
    titles = [a.text for a in fig.layout.annotations]
    assert titles == [f"L{l} H{h}" for l in range(L) for h in range(H)]
    z, row0, col0, tile = _tile(fig, 1, 2, H, T)
    assert (z != _GAP_CODE).sum() == L * H * T * T          # every cell of every tile, nothing else
    want = np.where(future_mask(T), _MASKED_CODE, np.rint(pooled[1, 2] * 100))
    np.testing.assert_array_equal(tile, want)                # percent codes; masked code on the future
    rect = fig.layout.shapes[0]
    assert rect.x0 < col0 < col0 + T - 1 < rect.x1 and rect.y0 < row0 < row0 + T - 1 < rect.y1
    assert any(t.name == MASK_NOTE for t in fig.data)
    assert "each cell" not in fig.layout.title.text


def test_head_grid_blows_up_short_prompts():
    pooled, step = pool_patterns(random_patterns(2, 2, 3), GRID_MAX_CELLS)
    fig = head_grid(pooled, step)
    k = -(-GRID_MIN_CELLS // 3)
    _, _, _, tile = _tile(fig, 1, 1, 2, 3 * k)
    want = np.where(future_mask(3), _MASKED_CODE, np.rint(pooled[1, 1] * 100))
    np.testing.assert_array_equal(tile, want.repeat(k, 0).repeat(k, 1))


@pytest.mark.parametrize("T,selected", [(3, None), (20, (1, 2)), (128, (0, 0))])
def test_head_grid_passes_plotlys_validation(T, selected):
    """head_grid skips plotly's validation for speed: everything it makes must pass it, unchanged."""
    pooled, step = pool_patterns(random_patterns(3, 4, T), GRID_MAX_CELLS)
    fig = head_grid(pooled, step, selected=selected)
    checked = go.Figure(fig.to_dict())                       # validated: raises on any invalid property
    assert json.loads(checked.to_json()) == json.loads(fig.to_json())


@pytest.mark.parametrize("T", [64, 128])
def test_head_grid_payload_gpt2_sized(T):
    pooled, step = pool_patterns(random_patterns(12, 12, T), GRID_MAX_CELLS)
    fig = head_grid(pooled, step, selected=(0, 0))
    assert len(fig.to_json()) < 500_000
    assert f"each cell = {step}×{step} tokens" in fig.layout.title.text


def test_query_heads_values_and_labels():
    tokens = ["a", " b", " a", " c"]
    p = random_patterns(1, 3, 4)[0]
    rows = p[:, 2, :3]
    fig = query_heads(rows, tokens, 2, layer=5, selected_head=1)
    hm = fig.data[0]
    assert list(hm.x) == unique_labels(tokens)[:3] and list(hm.y) == ["head 0", "head 1", "head 2"]
    np.testing.assert_allclose(np.array(hm.z, dtype=float), rows, atol=1e-4)
    assert hm.meta == "2: a"
    assert "%{meta} ← %{x}" in hm.hovertemplate and "Layer 5" in fig.layout.title.text
    with pytest.raises(ValueError):
        query_heads(rows, tokens, 3, layer=0)


# ---- the endpoint ----------------------------------------------------------------------------

def _expected(registry, text, layer):
    model = registry.get(registry.default).model
    prompt = prepare_prompt(text, max_tokens=min(MAX_VIEW_TOKENS, model.config.n_ctx))
    _, cache = model.run_with_cache(prompt.ids, names=[f"blocks.{layer}.attn.hook_pattern",
                                                       f"blocks.{layer}.attn.hook_attn_scores"])
    return model.config, prompt, cache


def test_attention_view_endpoint(client, registry):
    cfg = registry.get(registry.default).model.config
    layer, head = cfg.n_layer - 1, cfg.n_head - 1
    cfg, prompt, cache = _expected(registry, TEXT, layer)
    pattern = cache[f"blocks.{layer}.attn.hook_pattern"].numpy()
    T = len(prompt.ids)
    big, avg, per_head, grid, info = client.predict(TEXT, layer, head, -1, False, registry.default,
                                                    api_name="/attention_view")
    big, avg, per_head, grid = map(plot_json, (big, avg, per_head, grid))
    labels = unique_labels(prompt.tokens)
    hm = big["data"][0]
    assert hm["x"] == labels and hm["y"] == labels
    z = np.array(hm["z"], dtype=float)
    assert np.array_equal(np.isnan(z), future_mask(T))
    np.testing.assert_allclose(z[~future_mask(T)], pattern[head][~future_mask(T)], atol=2e-4)
    za = np.array(avg["data"][0]["z"], dtype=float)
    np.testing.assert_allclose(za[~future_mask(T)], pattern.mean(0)[~future_mask(T)], atol=2e-4)
    zq = np.array(per_head["data"][0]["z"], dtype=float)       # default query: the last token
    np.testing.assert_allclose(zq, pattern[:, T - 1, :], atol=2e-4)
    assert per_head["data"][0]["x"] == labels
    titles = [a["text"] for a in grid["layout"]["annotations"]]
    assert len(titles) == cfg.n_layer * cfg.n_head and f"L{layer} H{head}" in titles
    assert len(json.dumps(grid)) < 1_000_000
    assert f"{T} tokens" in info and f"Layer {layer}, head {head}" in info


def test_attention_view_scores_and_query(client, registry):
    cfg, prompt, cache = _expected(registry, TEXT, 0)
    scores = cache["blocks.0.attn.hook_attn_scores"].numpy()
    pattern = cache["blocks.0.attn.hook_pattern"].numpy()
    big, _, per_head, _, _ = client.predict(TEXT, 0, 0, 3, True, registry.default, api_name="/attention_view")
    hm = plot_json(big)["data"][0]
    T = len(prompt.ids)
    assert hm["zmid"] == 0
    z = np.array(hm["z"], dtype=float)
    assert np.array_equal(np.isnan(z), future_mask(T))
    np.testing.assert_allclose(z[~future_mask(T)], scores[0][~future_mask(T)], atol=2e-4)
    zq = np.array(plot_json(per_head)["data"][0]["z"], dtype=float)
    np.testing.assert_allclose(zq, pattern[:, 3, :4], atol=2e-4)


def test_attention_view_bad_input_is_a_clean_error(client, registry):
    cfg = registry.get(registry.default).model.config
    name = registry.default
    with pytest.raises(Exception, match=f"Layer must be between 0 and {cfg.n_layer - 1}"):
        client.predict(TEXT, cfg.n_layer, 0, -1, False, name, api_name="/attention_view")
    with pytest.raises(Exception, match=f"Head must be between 0 and {cfg.n_head - 1}"):
        client.predict(TEXT, 0, -2, -1, False, name, api_name="/attention_view")
    with pytest.raises(Exception, match="Head must be a finite number"):
        client.predict(TEXT, 0, "nan", -1, False, name, api_name="/attention_view")
    with pytest.raises(Exception, match="Layer must be a number"):
        client.predict(TEXT, "top", 0, -1, False, name, api_name="/attention_view")
    with pytest.raises(Exception, match=r"Query position .* between 0 and"):
        client.predict(TEXT, 0, 0, 500, False, name, api_name="/attention_view")
    with pytest.raises(Exception, match="true or false"):
        client.predict(TEXT, 0, 0, -1, "maybe", name, api_name="/attention_view")
    with pytest.raises(Exception, match="empty"):
        client.predict("   ", 0, 0, -1, False, name, api_name="/attention_view")


def test_the_draw_reads_the_prompt_the_sliders_were_fitted_to(client):
    """The sliders are fitted to one prompt, then the figures are drawn: the draw must read that same prompt,
    not the prompt box, which may hold newer text by then (typed, or a link's), past whose end a fitted query
    slider can point (a race once seen as an error toast under load)."""
    cfg = client.config
    by_elem = {c.get("props", {}).get("elem_id"): c["id"] for c in cfg["components"]}
    fitted, prompt, query = by_elem["attention-fitted-prompt"], by_elem["prompt"], by_elem["attention-query"]
    view = next(d for d in cfg["dependencies"] if d.get("api_name") == "attention_view")
    fitting = [d for d in cfg["dependencies"] if fitted in d["outputs"]]
    assert view["inputs"][0] == fitted and prompt not in view["inputs"]
    assert len(fitting) == 1 and query in fitting[0]["outputs"] and prompt in fitting[0]["inputs"]
