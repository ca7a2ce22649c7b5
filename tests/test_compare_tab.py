"""Compare tab: the union of top tokens, both patterns and their difference, and /compare_view."""
import html
import re

import numpy as np
import pytest
import torch

from explorer.compute.compare import (UntrainedTwin, check_layer_head, compare_distributions, first_difference,
                                      pattern_difference, run_side, summary_markdown, top_ids, total_variation)
from explorer.figures.compare import attention_difference, attention_pair, distribution_pair_bars
from explorer.inputs import InputError, prepare_prompt
from explorer.tabs.compare_tab import PROMPT_A, PROMPT_B
from tests.conftest import plot_json


@pytest.fixture(scope="module")
def model(registry):
    return registry.get(registry.default).model


def sides(model, text_a, text_b, layer=1, head=2, model_b=None):
    a = run_side("A", "m", model, prepare_prompt(text_a), layer, head)
    b = run_side("B", "m2" if model_b is not None else "m", model_b or model, prepare_prompt(text_b), layer, head)
    return a, b


# ---- compute -------------------------------------------------------------------------------------

def test_union_sorted_by_difference():
    p_a = np.array([0.5, 0.2, 0.1, 0.1, 0.05, 0.05])
    p_b = np.array([0.1, 0.2, 0.5, 0.0, 0.15, 0.05])
    d = compare_distributions(p_a, p_b, k=2)
    assert set(d.ids) == {0, 1, 2}                      # A's top 2 {0, 1} ∪ B's top 2 {2, 1}
    assert d.ids == [0, 1, 2] and d.diff.tolist() == pytest.approx([0.4, 0.0, -0.4])
    assert list(d.p_a) == [0.5, 0.2, 0.1] and list(d.p_b) == [0.1, 0.2, 0.5]
    assert total_variation(p_a, p_b) == pytest.approx(0.5 * (0.4 + 0 + 0.4 + 0.1 + 0.1 + 0))
    with pytest.raises(InputError, match="different vocabularies"):
        compare_distributions(p_a, p_b[:5])
    assert top_ids(np.array([0.1, 0.3, 0.3, 0.2]), 3).tolist() == [1, 2, 3]


def test_run_side_matches_the_model(model):
    prompt = prepare_prompt(PROMPT_A)
    side = run_side("A", "m", model, prompt, 1, 2)
    with torch.no_grad():
        logits = model(torch.tensor([prompt.ids]))[0, -1]
    assert np.allclose(side.probs, torch.softmax(logits.double(), -1).numpy(), atol=1e-6)
    _, cache = model.run_with_cache(prompt.ids, names=["blocks.1.attn.hook_pattern"])
    assert np.allclose(side.pattern, cache["blocks.1.attn.hook_pattern"][2].numpy(), atol=1e-6)
    assert side.tokens == prompt.tokens and side.pattern.shape == (len(prompt.ids),) * 2


def test_difference_of_same_length_prompts(model):
    a, b = sides(model, PROMPT_A, PROMPT_B)
    assert len(a.prompt.ids) == len(b.prompt.ids)
    diff = pattern_difference(a, b)
    assert np.allclose(diff, b.pattern - a.pattern)
    k = first_difference(a.prompt.ids, b.prompt.ids)
    assert k == 1 and a.tokens[k] == "␣lord" and b.tokens[k] == "␣lady"
    # causal: rows before the first changed token attend to the same tokens, so their difference is 0
    assert np.allclose(diff[:k], 0, atol=1e-6)
    md = summary_markdown(a, b, compare_distributions(a.probs, b.probs), diff, 1, 2)
    assert "first differ at position 1" in md and f"**{total_variation(a.probs, b.probs):.3f}**" in md
    assert "largest change in attention" in md


def test_different_lengths_give_no_difference(model):
    a, b = sides(model, "ROMEO:\nO", "JULIET:\nO")
    assert pattern_difference(a, b) is None
    md = summary_markdown(a, b, compare_distributions(a.probs, b.probs), None, 1, 2)
    assert f"have {len(a.prompt.ids)} and {len(b.prompt.ids)} tokens" in md
    assert first_difference([1, 2], [1, 2, 3]) == 2 and first_difference([1, 2], [1, 2]) is None


def test_two_models_on_one_prompt(model):
    twin = UntrainedTwin(model)
    random_model = twin.get()
    assert twin.get() is random_model and random_model.config == model.config
    state = torch.random.get_rng_state()
    assert torch.equal(UntrainedTwin(model).get().lm_head.weight, random_model.lm_head.weight)  # seeded
    assert torch.equal(torch.random.get_rng_state(), state)     # the process's generator is left alone
    a, b = sides(model, PROMPT_A, PROMPT_A, model_b=random_model)
    assert a.prompt.ids == b.prompt.ids and not np.allclose(a.probs, b.probs)
    md = summary_markdown(a, b, compare_distributions(a.probs, b.probs), pattern_difference(a, b), 1, 2)
    assert "any difference comes from the models" in md
    # an untrained model's distribution is far flatter than the trained one's
    assert b.probs.max() < a.probs.max()


def test_layer_and_head_must_exist_in_both(model):
    assert check_layer_head(1, 2, [model, model]) == (1, 2)
    n = model.config.n_layer
    with pytest.raises(InputError, match=rf"Layer \(0 to {n - 1}\) must be between 0 and {n - 1}, got {n}"):
        check_layer_head(n, 0, [model])


# ---- figures -------------------------------------------------------------------------------------

def test_distribution_pair_bars():
    fig = distribution_pair_bars(["␣a", "<0xF0>", "␣a"], [0.5, 0.2, 0.1], [0.1, 0.2, 0.4], "A: m", "B: m")
    ta, tb = fig.data
    assert list(ta.y) == ["0:␣a", "1:&lt;0xF0&gt;", "2:␣a"] and list(ta.x) == [0.5, 0.2, 0.1]
    assert list(tb.x) == [0.1, 0.2, 0.4] and ta.name == "A: m"
    assert ta.customdata[0][3] == "+40.00" and ta.customdata[2][3] == "-30.00"


def test_attention_pair_and_difference():
    pa = np.tril(np.full((3, 3), 0.5))
    pb = np.tril(np.full((3, 3), 0.25))
    fig = attention_pair(pa, pb, ["a", "b", "c"], ["a", "x", "c"], "A", "B")
    assert len(fig.data) == 2 and fig.data[0].zmax == 1
    z = np.array(fig.data[1].z, dtype=float)
    assert np.isnan(z[0, 1]) and z[2, 0] == 0.25
    d = attention_difference(pb - pa, ["a", "b", "c"], ["a", "x", "c"], "B − A")
    hm = d.data[0]
    assert hm.zmid == 0 and hm.zmin == -0.25 and hm.zmax == 0.25 and hm.colorscale[0][1] != hm.colorscale[-1][1]
    assert list(hm.x) == ["0:a", "1:b→x", "2:c"]
    none = attention_difference(None, ["a"], ["a", "b"], "B − A")
    assert len(none.data) == 0 and "1 and 2 tokens" in none.layout.annotations[0].text


# ---- endpoint ------------------------------------------------------------------------------------

def test_compare_endpoint(client, registry, model):
    name = registry.default
    notice, md, bars, chips_a, chips_b, attn, diff = client.predict(
        PROMPT_A, PROMPT_B, name, name, 1, 2, api_name="/compare_view")
    a, b = sides(model, PROMPT_A, PROMPT_B)
    d = compare_distributions(a.probs, b.probs)
    fig = plot_json(bars)
    # Both sides round to 6 places; float noise between the two runs can tip the last place (abs 2e-6).
    assert fig["data"][0]["x"] == pytest.approx(np.round(d.p_a, 6).tolist(), abs=2e-6)
    assert len(fig["data"][0]["y"]) == len(d.ids)
    for i in a.prompt.ids:
        assert f">{i}</span>" in chips_a
    assert "lady" in html.unescape(re.sub(r"<[^>]+>", "", chips_b))
    hm = plot_json(diff)["data"][0]
    assert np.allclose(np.nan_to_num(np.array(hm["z"], dtype=float)),
                       np.nan_to_num(np.where(np.triu(np.ones_like(a.pattern), 1) > 0, np.nan, b.pattern - a.pattern)),
                       atol=1e-5)
    assert len(plot_json(attn)["data"]) == 2 and notice == ""


def test_compare_endpoint_two_models(client, registry):
    twin_name = f"untrained twin of {registry.default} (random weights)"
    _, md, *_ = client.predict(PROMPT_A, PROMPT_A, registry.default, twin_name, 0, 0, api_name="/compare_view")
    assert "any difference comes from the models" in md and twin_name in md


@pytest.mark.parametrize("args, message", [
    (("", PROMPT_B, "", "", 0, 0), "Prompt A: The prompt is empty"),
    ((PROMPT_A, " \n ", "", "", 0, 0), "Prompt B: The prompt is empty"),
    ((PROMPT_A, "\x01\x02", "", "", 0, 0), "Prompt B: The prompt is empty"),
    ((PROMPT_A, PROMPT_B, "", "", 99, 0), "Layer .* must be between 0 and"),
    ((PROMPT_A, PROMPT_B, "", "", 0, -1), "Head .* must be between 0 and"),
    ((PROMPT_A, PROMPT_B, "", "", "x", 0), "must be a number"),
    ((PROMPT_A, PROMPT_B, "", "no such model", 0, 0), "Model B: Unknown model 'no such model'"),
    ((PROMPT_A, PROMPT_B, None, "", 0, 0), "Model A: choose a model, one of: "),
])
def test_compare_endpoint_bad_input(client, registry, args, message):
    with pytest.raises(Exception, match=message):
        client.predict(*args, api_name="/compare_view")


def test_batched_pair_equals_two_single_runs(model):
    pa, pb = prepare_prompt(PROMPT_A), prepare_prompt(PROMPT_B)
    from explorer.compute.compare import run_pair
    a, b = run_pair(("m", "m"), (model, model), (pa, pb), 2, 1)    # one batched forward
    sa, sb = run_side("A", "m", model, pa, 2, 1), run_side("B", "m", model, pb, 2, 1)
    for batched, single in ((a, sa), (b, sb)):
        assert np.allclose(batched.probs, single.probs, atol=1e-6)
        assert np.allclose(batched.pattern, single.pattern, atol=1e-6)
        assert batched.tokens == single.tokens
    short = prepare_prompt("ROMEO:")
    a, b = run_pair(("m", "m"), (model, model), (pa, short), 2, 1)  # lengths differ: two forwards
    assert b.pattern.shape == (len(short.ids),) * 2 and np.allclose(b.probs, run_side("B", "m", model, short, 2, 1).probs)
