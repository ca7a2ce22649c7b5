import numpy as np
import pytest
import torch

from explorer.compute.sampling_view import (CUT_GREEDY, CUT_TOP_K, CUT_TOP_P, KEPT, draw_counts, draws_markdown,
                                            draws_view, final_distribution, model_fingerprint, next_token_logits,
                                            sampling_view, share, summary_markdown, top_indices, total_variation)
from explorer.figures.sampling_view import (STATUS_COLORS, distinct_labels, distribution_bars, draws_bars,
                                            percent_format)
from explorer.inputs import prepare_prompt
from tests.conftest import plot_json

V = 50257
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def logits():
    """Peaked random logits over the whole vocabulary, so top-p keeps a handful of tokens."""
    g = torch.Generator().manual_seed(0)
    return (torch.randn(V, generator=g) * 3).numpy()


def np_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def np_entropy_bits(p):
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def np_filter(logits, temperature, k, p):
    """Temperature, top-k, top-p written out independently in numpy: (tempered, after_k, final)."""
    tempered = np_softmax(np.asarray(logits, dtype=np.float64) / temperature)
    order = np.argsort(-tempered, kind="stable")
    after_k = np.zeros_like(tempered)
    after_k[order[:k]] = tempered[order[:k]]
    after_k /= after_k.sum()
    cum = np.cumsum(after_k[order])
    n_keep = int(np.searchsorted(cum, p) + 1)          # first index where the running sum reaches p
    final = np.zeros_like(after_k)
    final[order[:n_keep]] = after_k[order[:n_keep]]
    return tempered, after_k, final / final.sum()


# ---- compute -------------------------------------------------------------------------------------
def test_top_indices_orders_by_value():
    values = np.array([0.1, 0.5, 0.2, 0.5, 0.05])
    assert top_indices(values, 3).tolist() == [1, 3, 2]
    assert top_indices(values, 10).tolist() == [1, 3, 2, 0, 4]


def test_top_k_keeps_exactly_k(logits):
    view = sampling_view(logits, 1.0, 7, 1.0, n_top=20)
    assert view.status.count(KEPT) == 7 and view.counts[KEPT] == 7
    assert view.status[:7] == [KEPT] * 7 and set(view.status[7:]) == {CUT_TOP_K}
    assert view.counts[CUT_TOP_K] == V - 7 and view.counts[CUT_TOP_P] == 0
    assert set(view.ids[:7]) == set(np.argsort(-logits)[:7].tolist())
    assert view.final_probs[:7].sum() == pytest.approx(1.0, abs=1e-5)
    probs = np_softmax(logits)
    assert view.mass_cut_by_top_k == pytest.approx(1 - np.sort(probs)[-7:].sum(), abs=1e-5)
    assert view.model_probs == pytest.approx(np.sort(probs)[::-1][:20], rel=1e-4)


def test_top_p_keeps_the_smallest_set_reaching_p():
    """Zipf-like logits (probability ~ 1/rank^1.5 in shuffled order): top-p keeps a dozen or so."""
    logits = (-1.5 * np.log(np.random.default_rng(0).permutation(V) + 1)).astype(np.float32)
    p = 0.6
    view = sampling_view(logits, 1.2, 0, p, n_top=50)
    n_kept = view.counts[KEPT]
    assert 1 < n_kept < 50 and view.counts[CUT_TOP_P] == V - n_kept
    tempered = np_softmax(logits / 1.2)
    kept = np.sort(tempered[view.ids[:n_kept]])[::-1]
    assert view.status[:n_kept] == [KEPT] * n_kept and set(view.status[n_kept:]) == {CUT_TOP_P}
    assert kept.sum() >= p - 1e-6                       # enough mass
    assert kept[:-1].sum() < p                          # and minimal: one token fewer is not enough
    assert view.mass_cut_by_top_p == pytest.approx(1 - kept.sum(), abs=1e-5)
    assert view.final_probs[:n_kept] == pytest.approx(kept / kept.sum(), rel=1e-4)


def test_top_p_acts_after_top_k(logits):
    view = sampling_view(logits, 1.0, 3, 0.5, n_top=10)
    _, after_k, final = np_filter(logits, 1.0, 3, 0.5)
    assert view.counts[KEPT] == int((final > 0).sum())
    assert view.counts[CUT_TOP_P] == 3 - view.counts[KEPT]
    assert view.final_probs == pytest.approx(final[view.ids], abs=1e-5)


def test_temperature_zero_puts_all_mass_on_the_argmax(logits):
    view = sampling_view(logits, 0.0, 0, 1.0, n_top=10)
    assert view.ids[0] == int(np.argmax(logits))
    assert view.final_probs[0] == 1.0 and view.final_probs[1:].sum() == 0.0
    assert view.status == [KEPT] + [CUT_GREEDY] * 9
    assert view.counts == {KEPT: 1, CUT_TOP_K: 0, CUT_TOP_P: 0, CUT_GREEDY: V - 1}
    assert view.mass_cut_by_greedy == pytest.approx(1 - np_softmax(logits).max(), abs=1e-6)
    assert view.entropy_bits["final"] == pytest.approx(0.0, abs=1e-6)
    assert "greedy" in summary_markdown(view, 0.0, 0, 1.0)


def test_low_temperature_is_not_greedy(logits):
    """Tiny but non-zero temperatures underflow to 0 probabilities without counting as 'cut'."""
    view = sampling_view(logits, 0.05, 0, 1.0, n_top=10)
    assert view.counts[CUT_GREEDY] == 0 and view.counts[KEPT] == V


def test_entropy_matches_numpy(logits):
    view = sampling_view(logits, 0.7, 50, 0.9, n_top=20)
    tempered, _, final = np_filter(logits, 0.7, 50, 0.9)
    assert view.entropy_bits["model"] == pytest.approx(np_entropy_bits(np_softmax(logits)), abs=2e-3)
    assert view.entropy_bits["tempered"] == pytest.approx(np_entropy_bits(tempered), abs=2e-3)
    assert view.entropy_bits["final"] == pytest.approx(np_entropy_bits(final), abs=2e-3)
    md = summary_markdown(view, 0.7, 50, 0.9)
    assert f"{np_entropy_bits(final):.2f}" in md and f"{view.counts[KEPT]:,}" in md


def test_next_token_logits_is_the_last_position(registry):
    model = registry.get(registry.default).model
    ids = prepare_prompt(PROMPT).ids
    logits = next_token_logits(model, ids)
    full, _ = model.run_with_cache(ids, names=[])
    assert logits.shape == (V,) and np.allclose(logits, full[-1].numpy(), atol=1e-5)


def test_model_fingerprint_changes_when_trained():
    from gpt2core import GPT2, get_config
    model = GPT2(get_config("tiny"))
    before = model_fingerprint(model)
    assert model_fingerprint(model) == before
    with torch.no_grad():
        model.ln_f.weight.add_(0.01)
    assert model_fingerprint(model) != before


def test_draws_are_seeded_and_approach_the_probabilities(logits):
    final = final_distribution(logits, 1.0, 5, 1.0)
    a, b = draw_counts(final, 2000, seed=7), draw_counts(final, 2000, seed=7)
    assert np.array_equal(a, b) and a.sum() == 2000
    assert not np.array_equal(a, draw_counts(final, 2000, seed=8))
    assert set(np.flatnonzero(a)) <= set(np.flatnonzero(final))      # only kept tokens come up
    assert np.abs(a / 2000 - final).max() < 0.05
    tvd = total_variation(a / 2000, final)
    assert tvd == pytest.approx(0.5 * np.abs(a / 2000 - final).sum()) and tvd < 0.06
    # more draws, closer (fixed seeds, loose bound)
    assert total_variation(draw_counts(final, 50_000, seed=7) / 50_000, final) < tvd


def test_draws_view_lumps_the_rest(logits):
    final = final_distribution(logits, 1.0, 0, 1.0)
    counts = draw_counts(final, 500, seed=1)
    view = draws_view(final, counts, n_top=10)
    assert len(view.ids) == 10 and view.ids == top_indices(final, 10).tolist()
    assert view.expected.sum() + view.other_expected == pytest.approx(1.0)
    assert view.observed.sum() + view.other_observed == pytest.approx(1.0)
    assert view.n_draws == 500 and view.n_distinct == int((counts > 0).sum())
    assert f"{view.tvd:.3f}" in draws_markdown(view)


# ---- figures -------------------------------------------------------------------------------------
def test_percent_format_has_enough_decimals():
    assert [percent_format(x) for x in (1e-4, 0.003, 0.05, 0.5, 0.0)] == [".3~%", ".2~%", ".1~%", ".0~%", ".0%"]


def test_share_never_rounds_to_the_ends():
    assert [share(x) for x in (0.0, 0.0004, 0.25, 0.9996, 1.0)] == ["0.0%", "<0.1%", "25.0%", ">99.9%", "100.0%"]


def test_distinct_labels():
    assert distinct_labels(["a", "b", "a"], [1, 2, 3]) == ["a (#1)", "b", "a (#3)"]
    assert distinct_labels(["<|endoftext|>", "&"], [50256, 5]) == ["&lt;|endoftext|&gt;", "&amp;"]


def test_distribution_bars(logits):
    view = sampling_view(logits, 1.0, 4, 1.0, n_top=12)
    fig = distribution_bars(view.tokens, view.ids, view.model_probs, view.final_probs, view.status, "T")
    names = [t.name for t in fig.data]
    assert names == ["model's probability: kept", "model's probability: cut by top-k",
                     "final probability (after filters, renormalised)"]
    kept, cut, final = fig.data
    assert len(kept.x) == 4 and len(cut.x) == 8 and len(final.x) == 12
    assert kept.marker.color == STATUS_COLORS[KEPT] and cut.marker.color == STATUS_COLORS[CUT_TOP_K]
    assert kept.offsetgroup == cut.offsetgroup != final.offsetgroup
    assert fig.layout.xaxis.type == "category"
    assert list(fig.layout.xaxis.categoryarray) == distinct_labels(view.tokens, view.ids)
    assert fig.layout.yaxis.tickformat == percent_format(max(final.y))
    assert sum(final.y) == pytest.approx(1.0, abs=1e-4)
    assert len(fig.to_json()) < 50_000


def test_draws_bars():
    fig = draws_bars(["␣a", "b"], [10, 20], [0.6, 0.3], [0.55, 0.3], other_expected=0.1, other_observed=0.15,
                     n_draws=20, tvd=0.05)
    assert [t.type for t in fig.data] == ["bar", "bar"]
    assert list(fig.data[0].x) == ["␣a", "b", "(all other tokens)"]
    assert list(fig.data[0].y) == [0.6, 0.3, 0.1] and list(fig.data[1].y) == [0.55, 0.3, 0.15]
    assert [c[1] for c in fig.data[1].customdata] == [11, 6, 3]
    assert "0.050" in fig.layout.title.text and "20 draws" in fig.data[1].name


# ---- endpoints -----------------------------------------------------------------------------------
def test_sampling_distribution_endpoint(client, registry):
    notice, plot, summary = client.predict(PROMPT, 1.0, 6, 1.0, 20, registry.default,
                                           api_name="/sampling_distribution")
    fig = plot_json(plot)
    traces = {t["name"]: t for t in fig["data"]}
    assert len(traces["model's probability: kept"]["x"]) == 6
    model = registry.get(registry.default).model
    logits = next_token_logits(model, prepare_prompt(PROMPT).ids)
    expected = np.sort(np_softmax(logits))[::-1][:6]
    assert traces["model's probability: kept"]["y"] == pytest.approx(expected, abs=1e-4)
    assert "50,251" in summary       # tokens removed by top-k
    assert notice == ""


def test_sampling_draws_endpoint_is_seeded(client, registry):
    args = (PROMPT, 1.0, 5, 1.0, 10, 300)
    first = client.predict(*args, 3, registry.default, api_name="/sampling_draws")
    again = client.predict(*args, 3, registry.default, api_name="/sampling_draws")
    other = client.predict(*args, 4, registry.default, api_name="/sampling_draws")
    observed = lambda result: plot_json(result[0])["data"][1]["y"]  # noqa: E731
    assert observed(first) == observed(again) and first[1] == again[1]
    assert observed(first) != observed(other)
    assert sum(observed(first)) == pytest.approx(1.0, abs=1e-3)
    assert "300 draws" in first[1]


@pytest.mark.parametrize("args, message", [
    (("", 1.0, 0, 1.0, 20), "prompt is empty"),
    (("hi", 3.0, 0, 1.0, 20), r"Temperature \(0 = greedy\) must be between 0 and 2, got 3"),
    (("hi", 1.0, 0, 0.0, 20), r"Top-p \(1 = off\) must be between 0.05 and 1, got 0"),
    (("hi", 1.0, -1, 1.0, 20), r"Top-k \(0 = off\) must be between 0 and 200, got -1"),
    (("hi", 1.0, 0, 1.0, 20.5), r"tokens to show must be a whole number"),
])
def test_sampling_distribution_bad_input(client, registry, args, message):
    with pytest.raises(Exception, match=message):
        client.predict(*args, registry.default, api_name="/sampling_distribution")


def test_sampling_draws_bad_input(client, registry):
    with pytest.raises(Exception, match=r"Number of draws must be between 10 and 2000"):
        client.predict(PROMPT, 1.0, 0, 1.0, 20, 5000, 0, registry.default, api_name="/sampling_draws")
    with pytest.raises(Exception, match=r"Seed must be between 0 and"):
        client.predict(PROMPT, 1.0, 0, 1.0, 20, 100, -3, registry.default, api_name="/sampling_draws")
