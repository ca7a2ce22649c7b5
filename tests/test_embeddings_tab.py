"""Embeddings tab: nearest tokens, PCA, position similarities; figures; endpoints through gradio_client."""
import numpy as np
import pytest
import torch

from explorer.compute.embeddings import (inverse_row_norms, nearest_tokens, parse_words, pca_2d, pool_square,
                                         position_summary, position_view, resolve_token, token_projection,
                                         untrained_wpe)
from explorer.figures.embeddings import neighbour_bars, position_heatmap, position_norms, projection_scatter
from explorer.inputs import InputError
from gpt2core import GPT2, encode, get_config
from tests.conftest import plot_json


@pytest.fixture()
def tiny():
    torch.manual_seed(4)
    return GPT2(get_config("tiny", n_layer=1, n_head=2, n_embd=16, n_ctx=40)).eval()


# ---- compute ---------------------------------------------------------------------------------

@pytest.mark.parametrize("token", [" king", ".", "the"])
def test_nearest_tokens_match_a_brute_force_search(tiny, token):
    tid = encode(token)[0]
    w = tiny.wte.weight.detach().double().numpy()                                 # (V, d)
    cos = w @ w[tid] / (np.linalg.norm(w, axis=1) * np.linalg.norm(w[tid]))
    cos[tid] = -np.inf
    want = np.argsort(-cos, kind="stable")[:10]
    nb = nearest_tokens(tiny, tid)
    assert nb.ids == want.tolist() and tid not in nb.ids
    np.testing.assert_allclose(nb.similarities, cos[want], rtol=1e-5)
    assert list(nb.similarities) == sorted(nb.similarities, reverse=True)


def test_row_norms_are_made_once_per_weight_version(tiny):
    first = inverse_row_norms(tiny)
    assert inverse_row_norms(tiny) is first
    with torch.no_grad():
        tiny.wte.weight[7].mul_(3.0)                    # in place: the version counter moves
    again = inverse_row_norms(tiny)
    assert again is not first
    assert float(again[7]) == pytest.approx(float(first[7]) / 3, rel=1e-5)
    other = GPT2(get_config("tiny", n_layer=1, n_head=2, n_embd=16, n_ctx=40))
    assert inverse_row_norms(other) is not again        # keyed per model


def test_resolve_token_reads_the_space_mark_and_refuses_several_tokens():
    assert resolve_token("␣king") == encode(" king")[0] == resolve_token(" king")
    assert resolve_token("king") == encode("king")[0]
    with pytest.raises(InputError, match="is 2 tokens"):
        resolve_token("kingly")
    for bad in ("", None, 3):
        with pytest.raises(InputError, match="Type a token"):
            resolve_token(bad)


def test_parse_words_takes_each_word_with_a_space_and_names_the_bad_ones():
    assert parse_words(["king", " queen", "king", "␣lord"]) == [encode(f" {w}")[0] for w in ("king", "queen", "lord")]
    assert parse_words("one, two\nthree") == [encode(f" {w}")[0] for w in ("one", "two", "three")]
    with pytest.raises(InputError, match=r"'duke' \(␣d \+ uke\)"):
        parse_words(["king", "queen", "duke"])
    with pytest.raises(InputError, match="'kingliness'"):
        parse_words(["king", "queen", "kingliness"])
    with pytest.raises(InputError, match="at least 3"):
        parse_words(["king", "king", " "])
    with pytest.raises(InputError, match="at most 60"):
        parse_words([f"w{i}" for i in range(61)])
    with pytest.raises(InputError, match="list of words"):
        parse_words([1, 2, 3])


def test_the_tabs_default_words_and_tokens_are_single_tokens():
    from explorer.tabs.embeddings_tab import DEFAULT_WORDS, EXAMPLE_TOKENS
    assert len(parse_words(DEFAULT_WORDS)) == len(DEFAULT_WORDS)
    assert len({resolve_token(t) for t in EXAMPLE_TOKENS}) == len(EXAMPLE_TOKENS)


def test_pca_2d_matches_the_covariance_eigenvectors():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 6)) * [5, 3, 1, 0.5, 0.2, 0.1] + 2
    coords, explained = pca_2d(x)
    centred = x - x.mean(0)
    vals, vecs = np.linalg.eigh(np.cov(centred.T))
    order = np.argsort(vals)[::-1][:2]
    want = centred @ vecs[:, order]
    np.testing.assert_allclose(np.abs(coords), np.abs(want), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(explained, vals[order] / vals.sum(), rtol=1e-6)
    # the sign rule: each component's largest loading is positive, so the picture doesn't flip
    again, _ = pca_2d(x[::-1])
    np.testing.assert_allclose(again[::-1], coords, atol=1e-9)


def test_token_projection_dedupes_and_needs_two_tokens(tiny):
    ids = encode(" king queen king lord")
    proj = token_projection(tiny, ids)
    assert proj.ids == list(dict.fromkeys(ids)) and proj.coords.shape == (3, 2)
    assert proj.tokens[0] == "␣king"
    with pytest.raises(InputError, match="at least 2"):
        token_projection(tiny, encode(" the the"))


def test_pool_square_averages_blocks():
    m = np.arange(25, dtype=float).reshape(5, 5)
    pooled, step = pool_square(m, 2)
    assert step == 3 and pooled.shape == (2, 2)
    np.testing.assert_allclose(pooled, [[m[:3, :3].mean(), m[:3, 3:].mean()], [m[3:, :3].mean(), m[3:, 3:].mean()]])
    same, one = pool_square(m, 5)
    assert one == 1 and np.array_equal(same, m)


def test_position_view_is_the_cosine_matrix_and_shrinks_long_contexts():
    wpe = torch.randn(1024, 24)
    big = position_view(wpe)
    assert big.step == 8 and big.similarity.shape == (128, 128) and big.norms.shape == (1024,)
    unit = torch.nn.functional.normalize(wpe.double(), dim=1)
    full = (unit @ unit.T).numpy()
    np.testing.assert_allclose(big.similarity[3, 5], full[24:32, 40:48].mean(), rtol=1e-5)
    small = position_view(wpe[:40])
    assert small.step == 1
    np.testing.assert_allclose(np.diag(small.similarity), 1, atol=1e-6)
    np.testing.assert_allclose(small.norms, wpe[:40].norm(dim=1).numpy(), rtol=1e-6)


def test_untrained_table_is_the_init_distribution_and_cached():
    w = untrained_wpe(1024, 64)
    assert w.shape == (1024, 64) and untrained_wpe(1024, 64) is w
    assert float(w.std()) == pytest.approx(0.02, rel=0.02)


def test_trained_positions_are_smoother_than_untrained_ones():
    """A table whose rows drift slowly (like learned positions) shows near > far; a random one doesn't."""
    drift = torch.cumsum(torch.randn(128, 32, generator=torch.Generator().manual_seed(1)), dim=0)
    smooth, noise = position_view(drift), position_view(untrained_wpe(128, 32))
    text = position_summary(smooth, noise)
    near = float(np.mean(np.diag(smooth.similarity, 1)))
    assert near > 0.8 and abs(float(np.mean(np.diag(noise.similarity, 1)))) < 0.1
    assert f"**{near:.2f}**" in text


# ---- figures ---------------------------------------------------------------------------------

def test_neighbour_bars_label_tokens_as_text():
    fig = neighbour_bars(["␣queen", "<b>"], [0.7, 0.5], "␣king")
    bar = fig.data[0]
    assert list(bar.y) == ["0:␣queen", "1:&lt;b&gt;"] and list(bar.text) == ["0.700", "0.500"]
    assert "␣king" in bar.hovertemplate and "␣king" in fig.layout.title.text


def test_projection_scatter_labels_every_point():
    fig = projection_scatter(np.array([[1.0, 2.0], [-1.0, 0.5]]), ["␣a", "␣b"], np.array([0.6, 0.3]), "t")
    pts = fig.data[0]
    assert list(pts.text) == ["␣a", "␣b"] and list(pts.x) == [1.0, -1.0]
    assert "60%" in fig.layout.xaxis.title.text and "30%" in fig.layout.yaxis.title.text


def test_position_heatmap_ticks_name_the_pooled_ranges():
    hm = position_heatmap(np.eye(3), 8, "t").data[0]
    assert list(hm.x) == ["0–7", "8–15", "16–23"] and hm.zmin == -1 and hm.zmax == 1
    assert list(position_heatmap(np.eye(2), 1, "t").data[0].x) == ["0", "1"]


def test_position_norms_draw_both_tables():
    fig = position_norms([1.0, 2.0], [0.5, 0.5])
    assert [t.name for t in fig.data] == ["this model", "untrained (random init)"]
    assert list(fig.data[0].y) == [1.0, 2.0]


# ---- endpoints -------------------------------------------------------------------------------

def test_neighbours_endpoint(client, registry):
    plot, table, token_update = client.predict("␣king", "To be, or not to be", registry.default,
                                               api_name="/embeddings_neighbours")
    nb = nearest_tokens(registry.get(registry.default).model, encode(" king")[0])
    bars = plot_json(plot)["data"][0]
    assert bars["y"] == [f"{i}:{t}" for i, t in enumerate(nb.tokens)]
    np.testing.assert_allclose(bars["x"], nb.similarities, atol=1e-4)
    assert f"| 1 | `` {nb.tokens[0]} `` | {nb.ids[0]} | {nb.similarities[0]:.3f} |" in table
    assert ["␣be", "␣be"] in token_update["choices"]          # the prompt's tokens join the list


def test_projection_endpoint_for_words_and_for_the_prompt(client, registry):
    plot, info = client.predict("x", "the word list", ["king", "queen", "one", "two"], registry.default,
                                api_name="/embeddings_projection")
    assert plot_json(plot)["data"][0]["text"] == ["␣king", "␣queen", "␣one", "␣two"] and "4 vectors" in info
    plot, _ = client.predict("To be, or not to be", "the prompt's tokens", [], registry.default,
                             api_name="/embeddings_projection")
    assert plot_json(plot)["data"][0]["text"] == ["To", "␣be", ",", "␣or", "␣not", "␣to"]


def test_positions_endpoint(client, registry):
    info, trained, untrained, norms = client.predict(registry.default, api_name="/embeddings_positions")
    n_ctx = registry.get(registry.default).model.config.n_ctx
    z = np.array(plot_json(trained)["data"][0]["z"], dtype=float)
    assert z.shape == (min(n_ctx, 128),) * 2 and np.allclose(np.diag(z), 1, atol=1e-3)
    assert len(plot_json(norms)["data"][0]["y"]) == n_ctx and "untrained" in info


@pytest.mark.parametrize("args, api, message", [
    (("kingly", "x"), "/embeddings_neighbours", "is 2 tokens"),
    (("", "x"), "/embeddings_neighbours", "Type a token"),
    (("x", "the word list", ["king", "kingliness", "one"]), "/embeddings_projection", "'kingliness'"),
    (("x", "the word list", []), "/embeddings_projection", "at least 3"),
    (("   ", "the prompt's tokens", []), "/embeddings_projection", "empty"),
    (("x", "sideways", []), "/embeddings_projection", "Project must be one of")])
def test_endpoints_answer_bad_input_plainly(client, registry, args, api, message):
    with pytest.raises(Exception, match=message):
        client.predict(*args, registry.default, api_name=api)
