"""The Circuits tab: its compute functions, its figures and its endpoints."""
import json

import numpy as np
import pytest
import torch

from explorer.compute.circuits import (PROMPT, RANDOM, best_heads, detector_view, head_view, parse_head,
                                       patch_prompts, patching_view)
from explorer.figures.circuits import (head_score_heatmap, patch_head_heatmap, patch_position_heatmap,
                                       repeat_loss_line)
from explorer.inputs import InputError
from explorer.tabs.circuits_tab import PATCH_EXAMPLES
from gpt2core import GPT2, get_config
from gpt2core.analysis import circuits
from tests.conftest import plot_json

CLEAN, CORRUPT, ANSWER, WRONG = PATCH_EXAMPLES[0]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(2)
    return GPT2(get_config("tiny", n_layer=3, n_head=4, n_embd=32)).eval().requires_grad_(False)


# ---- compute -----------------------------------------------------------------------------------------
def test_detector_view_on_random_tokens_and_on_a_prompt(tiny):
    view = detector_view(tiny, RANDOM, "", 12, 3)
    assert view.ids == circuits.repeated_random_tokens(12, 1, 3)[0].tolist() and view.repeat_from == 13
    ref, patterns = circuits.detect_heads(tiny, view.ids)
    for kind in circuits.HEAD_TYPES:
        np.testing.assert_allclose(view.scores[kind], ref[kind].numpy())
    assert view.loss.shape == (24,) and "first copy" in view.summary
    prompt = detector_view(tiny, PROMPT, "one two three one two three", 5, 0)
    assert prompt.repeat_from is None and len(prompt.tokens) == 6 and "your prompt (6 tokens)" in prompt.summary
    with pytest.raises(InputError, match="between 2 and"):
        detector_view(tiny, RANDOM, "", 500, 0)
    with pytest.raises(InputError, match="sequence must be"):
        detector_view(tiny, "Shakespeare", "", 10, 0)
    with pytest.raises(InputError, match="at least 2 tokens"):
        detector_view(tiny, PROMPT, "Hi", 10, 0)


def test_detector_loss_is_the_models_own_next_token_loss(tiny):
    """The loss along the sequence comes from the same captured pass as the patterns: it equals the cross-entropy
    of an ordinary forward pass's logits."""
    view = detector_view(tiny, RANDOM, "", 12, 3)
    logits = tiny(torch.tensor([view.ids]))[0]
    ref = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(view.ids[1:]), reduction="none")
    np.testing.assert_allclose(view.loss, ref.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("source,text", [(RANDOM, ""), (PROMPT, "one two three one two three four")])
def test_head_view_is_the_detectors_head(tiny, source, text):
    """One head's pattern and scores from a pass that captures its layer alone equal the full detector's."""
    full = detector_view(tiny, source, text, 12, 3)
    for layer, head in ((0, 0), (1, 3), (2, 1)):
        view = head_view(tiny, source, text, 12, 3, layer, head)
        assert view.tokens == full.tokens
        np.testing.assert_allclose(view.pattern, full.patterns[layer, head], atol=1e-6)
        for kind in circuits.HEAD_TYPES:
            np.testing.assert_allclose(view.scores[kind], full.scores[kind][layer, head], atol=1e-6)


def test_best_heads_and_parse_head(tiny):
    s = np.array([[0.1, np.nan], [0.9, 0.5]])
    assert best_heads(s, 2) == [(1, 0, 0.9), (1, 1, 0.5)]
    assert parse_head("2.3", tiny) == (2, 3)
    for bad in ("3.0", "1", "a.b", None):
        with pytest.raises(InputError):
            parse_head(bad, tiny)


def test_patching_view_equals_the_core_sweep(tiny):
    clean, corrupt = patch_prompts(tiny, "The cat sat on the mat. The cat", "The dog sat on the mat. The cat")
    logits = [tiny(torch.tensor([p]))[0, -1] for p in (clean, corrupt)]
    shift = logits[0] - logits[1]
    answer, wrong = f"#{int(shift.argmax())}", f"#{int(shift.argmin())}"
    view = patching_view(tiny, "The cat sat on the mat. The cat", "The dog sat on the mat. The cat", answer, wrong)
    sweep = circuits.patching_sweep(tiny, clean, corrupt, int(shift.argmax()), int(shift.argmin()))
    for kind in circuits.PATCH_KINDS:
        np.testing.assert_allclose(view.scores[kind], sweep.scores[kind].numpy())
    assert "differ at position 1" in view.summary and view.clean_tokens[1] == "␣cat"


def test_patching_bad_input_says_what_is_wrong(tiny):
    with pytest.raises(InputError, match=r"clean prompt has 3 tokens .* the corrupted one 4"):
        patch_prompts(tiny, "one two three", "one two three four")
    with pytest.raises(InputError, match="same tokens"):
        patch_prompts(tiny, "one two", "one two")
    with pytest.raises(InputError, match="is 2 tokens"):
        patching_view(tiny, "a b c", "a b d", " Parisian", "")
    with pytest.raises(InputError, match="longer than"):
        patch_prompts(tiny, "a " * 70, "b " * 70)
    with pytest.raises(InputError, match="same token"):
        patching_view(tiny, "a b c", "a b d", " x", " x")


# ---- figures -----------------------------------------------------------------------------------------
def test_head_score_heatmap_is_sequential_from_0_to_1():
    fig = head_score_heatmap(np.array([[0.2, np.nan], [1.0, 0.0]]), "induction score")
    trace = fig.data[0]
    assert trace.zmin == 0 and trace.zmax == 1 and trace.text[0][1] == "–" and list(trace.y) == ["L0", "L1"]


def test_patch_heatmaps_are_diverging_and_centred():
    fig = patch_position_heatmap(np.array([[0.0, 1.0, -0.5]]), ["a", "␣b", "a"], "t")
    trace = fig.data[0]
    assert trace.zmid == 0 and trace.zmin == -trace.zmax and list(trace.x) == ["0:a", "1:␣b", "2:a"]
    assert trace.customdata[0][1] == "␣b"
    heads = patch_head_heatmap(np.array([[0.3, -2.0]]), "t")
    assert heads.data[0].zmin == -2.0 and heads.data[0].zmid == 0


def test_repeat_loss_line_marks_the_second_copy():
    fig = repeat_loss_line(np.array([10.0, 9.0, 1.0, 0.5]), ["<eot>", "x", "y", "x", "y"], 3, "loss")
    assert list(fig.data[0].x) == [1, 2, 3, 4] and fig.layout.shapes[0].x0 == 3
    assert "predicting 3: x after y" in fig.data[0].text[2]
    assert not repeat_loss_line(np.array([1.0]), ["a", "b"], None, "t").layout.shapes


# ---- endpoints ---------------------------------------------------------------------------------------
def test_detect_endpoint(client, registry):
    out = client.predict(RANDOM, "", 20, 0, registry.default, api_name="/circuits_detect")
    summary, line, *maps, head, pattern = out
    model = registry.get(registry.default).model
    view = detector_view(model, RANDOM, "", 20, 0)
    assert summary == view.summary
    for fig, kind in zip(maps, circuits.HEAD_TYPES):
        z = np.array(plot_json(fig)["data"][0]["z"], dtype=float)
        np.testing.assert_allclose(z, view.scores[kind], atol=1e-4)
    top = best_heads(view.scores["induction"], 1)[0]
    assert head["value"] == f"{top[0]}.{top[1]}" and len(head["choices"]) == model.config.n_layer * model.config.n_head
    z = np.array(plot_json(pattern)["data"][0]["z"], dtype=float)
    np.testing.assert_allclose(np.tril(np.nan_to_num(z)), view.patterns[top[0], top[1]], atol=1e-4)
    assert len(json.dumps(plot_json(pattern))) < 1_000_000
    fig = client.predict("1.2", PROMPT, "To be, or not to be", 20, 0, registry.default, api_name="/circuits_head")
    assert "Head 1.2" in plot_json(fig)["layout"]["title"]["text"]
    # The head menu's figure is the detector's pattern of that head, with its scores in the title.
    fig = client.predict(f"{top[0]}.{top[1]}", RANDOM, "", 20, 0, registry.default, api_name="/circuits_head")
    z = np.array(plot_json(fig)["data"][0]["z"], dtype=float)
    np.testing.assert_allclose(np.tril(np.nan_to_num(z)), view.patterns[top[0], top[1]], atol=1e-4)
    assert plot_json(fig)["layout"]["title"]["text"] == plot_json(pattern)["layout"]["title"]["text"]


def test_patch_endpoint(client, registry):
    summary, resid, attn, mlp, heads = client.predict(CLEAN, CORRUPT, ANSWER, WRONG, registry.default,
                                                      api_name="/circuits_patch")
    view = patching_view(registry.get(registry.default).model, CLEAN, CORRUPT, ANSWER, WRONG)
    assert summary == view.summary
    for fig, kind in ((resid, "resid_pre"), (attn, "attn_out"), (mlp, "mlp_out"), (heads, "heads")):
        z = np.array(plot_json(fig)["data"][0]["z"], dtype=float)
        np.testing.assert_allclose(z, view.scores[kind], atol=2e-3)


@pytest.mark.parametrize("example", PATCH_EXAMPLES, ids=lambda e: e[0][:20])
def test_every_example_pair_patches_on_the_bundled_model(registry, example):
    """Same token counts, single-token answers the two prompts disagree on, and a summary that says how
    strongly the model tells them apart (the bundled model barely does on most pairs)."""
    view = patching_view(registry.get(registry.default).model, *example)
    assert view.scores["resid_pre"].shape[1] == len(view.clean_tokens)
    assert ("Careful" in view.summary) == (view.gap < 0.5)


def test_bad_input_is_a_clean_error(client, registry):
    name = registry.default
    with pytest.raises(Exception, match="same number of tokens"):
        client.predict("one two three", "one two three four", "", "", name, api_name="/circuits_patch")
    with pytest.raises(Exception, match="same tokens"):
        client.predict("one two", "one two", "", "", name, api_name="/circuits_patch")
    with pytest.raises(Exception, match="is 2 tokens"):
        client.predict(CLEAN, CORRUPT, " Parisian", "", name, api_name="/circuits_patch")
    with pytest.raises(Exception, match="between 2 and"):
        client.predict(RANDOM, "", 1000, 0, name, api_name="/circuits_detect")
    with pytest.raises(Exception, match="layer.head"):
        client.predict("x", RANDOM, "", 20, 0, name, api_name="/circuits_head")
    assert client.predict(RANDOM, "", 10, 0, name, api_name="/circuits_detect")[0]
