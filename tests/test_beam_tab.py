"""The Generate tab's beam search: the tree's arrays, its figure, the compare view, and the endpoints
/generate_beam and /generate_compare through gradio_client (bad input gives a plain message)."""
import re
from types import SimpleNamespace

import pytest

from explorer.compute.beam import (FINISHED, KEPT, RANKED, UNRANKED, WINNER, beam_tree, compare_continuations,
                                   continuation_logprobs, layout_rows, shown_hypotheses)
from explorer.figures.beam import STATUS_STYLE, beam_tree_figure, compare_html, finished_html
from explorer.session import BUNDLED_DIR
from explorer.tabs.generate_tab import BEAM_EXAMPLES, MAX_BEAM_TOKENS, MAX_BEAM_WIDTH, beam_prompt
from gpt2core import decode, generate
from gpt2core.decoding.beam import beam_search
from tests.conftest import plot_json
from tests.reliability_util import message_problem, visible_text

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def model(registry):
    return registry.get(registry.default).model


@pytest.fixture(scope="module")
def tree(model):
    prompt, _ = beam_prompt(PROMPT, model.config.n_ctx, 8)
    return beam_tree(model, prompt.ids, prompt.text, 3, 8, 1.0, False, shown_per_beam=2)


# ---- compute -------------------------------------------------------------------------------------
def test_the_tree_is_the_search(model, tree):
    search = beam_search(model, beam_prompt(PROMPT, model.config.n_ctx, 8)[0].ids, 3, 8, 1.0, False)
    assert tree.best.text == decode(search.best.token_ids)
    assert [f.score for f in tree.finished] == [f.score for f in search.finished]
    root, nodes = tree.nodes[0], tree.nodes[1:]
    assert root.step == 0 and root.parent == -1 and root.token.endswith(PROMPT)
    winners = [n for n in nodes if n.status == WINNER]
    assert [n.step for n in winners] == list(range(1, len(search.best.token_ids) + 1))
    assert winners[-1].text == tree.best.text
    for step in range(1, tree.steps + 1):
        here = [n for n in nodes if n.step == step]
        assert sorted(n.rank for n in here if n.rank >= 0) == list(range(6))   # every candidate drawn
        assert len({n.row for n in here}) == len(here)                          # no two share a row
        for n in here:
            parent = tree.nodes[n.parent]
            assert parent.step == step - 1 and (parent.status in (KEPT, WINNER) or n.parent == 0)
            assert n.text.startswith(parent.text)
            assert n.cum_logprob == pytest.approx(parent.cum_logprob + n.token_logprob, abs=1e-4)
    assert {n.status for n in nodes} <= {WINNER, KEPT, FINISHED, RANKED, UNRANKED} == set(STATUS_STYLE)
    assert tree.hypotheses_recorded == len(search.hypotheses) >= len(nodes)


def test_shown_hypotheses_keep_each_beams_best_and_every_candidate():
    def h(i, step, beam, rank):
        return SimpleNamespace(id=i, step=step, beam=beam, rank=rank, candidate=rank >= 0)
    search = SimpleNamespace(hypotheses=[h(0, 0, 0, 0), h(1, 0, 0, -1), h(2, 0, 0, 1), h(3, 0, 0, -1),
                                         h(4, 1, 0, -1), h(5, 1, 0, -1), h(6, 1, 1, 0), h(7, 1, 1, -1)])
    assert [x.id for x in shown_hypotheses(search, 2)] == [0, 1, 2, 4, 5, 6, 7]
    assert [x.id for x in shown_hypotheses(search, 1)] == [0, 2, 4, 6]


def test_layout_rows_put_leaves_in_order_and_parents_between_their_children():
    rows = layout_rows({0: [1, 2], 1: [3, 4, 5], 2: [6]}, 0)
    assert [rows[i] for i in (3, 4, 5, 6)] == [0, 1, 2, 3]
    assert rows[1] == 1 and rows[2] == 3 and rows[0] == 2


def test_compare_is_greedy_sampling_and_beam_search(model):
    ids = beam_prompt(PROMPT, model.config.n_ctx, 8)[0].ids
    rows = compare_continuations(model, ids, 8, 0.8, 40, 1.0, 5, 3, 0.0, False)
    assert [r.method for r in rows] == ["greedy", "sampling", "beam search"]
    assert rows[0].token_ids == generate(model, ids, 8, temperature=0.0)
    assert rows[1].token_ids == generate(model, ids, 8, temperature=0.8, top_k=40, seed=5)
    beam = beam_search(model, ids, 3, 8, 0.0, False).best
    assert rows[2].token_ids == beam.token_ids
    assert rows[2].total_logprob == pytest.approx(beam.cum_logprob, abs=1e-3)   # scored without a cache
    # With no length penalty beam search maximises the total: never below greedy's (same length, no EOS here).
    assert rows[2].total_logprob >= rows[0].total_logprob - 1e-4
    for r in rows:
        assert r.text == decode(r.token_ids)
        assert r.mean_logprob == pytest.approx(r.total_logprob / len(r.token_ids))
    assert continuation_logprobs(model, ids, []) == []


@pytest.mark.skipif(not (BUNDLED_DIR / "model.safetensors").is_file(), reason="the bundled model's claims")
@pytest.mark.parametrize("text", BEAM_EXAMPLES)
def test_the_beam_examples_part_from_greedy_for_a_likelier_text(registry, text):
    """What the explanation says of the example prompts, on the bundled model at the tab's defaults."""
    model = registry.get(registry.default).model
    ids = beam_prompt(text, model.config.n_ctx, 8)[0].ids
    greedy, sampling, beam = compare_continuations(model, ids, 8, 0.8, 40, 1.0, 0, 3, 1.0, False)
    assert beam.token_ids != greedy.token_ids
    assert beam.total_logprob > greedy.total_logprob


# ---- figures -------------------------------------------------------------------------------------
def test_tree_figure(tree):
    fig = beam_tree_figure(tree)
    named = {t.name: t for t in fig.data if t.name}
    assert set(named) <= {"best path", "finished (ended)", "kept as a beam", "ranked in the best 2W, dropped",
                          "outside the best 2W"}
    best = named["best path"]
    assert len(best.x) == tree.best.n_tokens and list(best.x) == list(range(1, tree.best.n_tokens + 1))
    assert sum(len(t.x) for t in named.values()) == len(tree.nodes) - 1
    path_edges = next(t for t in fig.data if t.mode == "lines" and t.line.width > 2)
    assert len(path_edges.x) == 3 * tree.best.n_tokens            # (parent, child, gap) per winner node
    winner = next(n for n in tree.nodes if n.status == WINNER and n.step == tree.best.n_tokens)
    hover = best.hovertext[-1]
    assert "text so far:" in hover and "cumulative log-prob" in hover and "the winner" in hover
    assert f"{winner.cum_logprob:.2f}".replace("-", "−") in hover
    labels = [a.text for a in fig.layout.annotations]
    assert len(labels) == len(tree.nodes) - 1 and all(re.search(r" −?\d+\.\d$", t) for t in labels)
    assert fig.layout.height >= 17 * (max(n.row for n in tree.nodes) + 1)


def test_hover_and_labels_escape_token_text():
    node = SimpleNamespace(step=1, parent=0, row=0.0, token="<|endoftext|>", text="<|endoftext|>",
                           token_logprob=-0.5, cum_logprob=-0.5, score=-0.5, status=WINNER, rank=0)
    root = SimpleNamespace(step=0, parent=-1, row=0.0, token="a <b>", text="", token_logprob=0.0,
                           cum_logprob=0.0, score=0.0, status="", rank=-1)
    tree = SimpleNamespace(nodes=[root, node], width=1, n_candidates=2, length_penalty=1.0, steps=1,
                           best=SimpleNamespace(n_tokens=1))
    fig = beam_tree_figure(tree)
    hover = next(t for t in fig.data if t.name == "best path").hovertext[0]
    assert "&lt;|endoftext|&gt;" in hover and "a &lt;b&gt;" in hover and "<|" not in hover
    assert fig.layout.annotations[0].text.startswith("&lt;|endoftext|&gt;")


def test_finished_and_compare_html_escape_and_mark_the_best(tree):
    markup = finished_html(tree)
    assert visible_text(markup).startswith(tree.prompt_text + tree.best.text)
    assert markup.count("<tr") == len(tree.finished) + 1
    rows = [SimpleNamespace(method=m, settings="s", text=t, token_ids=[1] * n, total_logprob=tot,
                            mean_logprob=tot / n) for m, t, n, tot in
            [("greedy", "<b>x</b>", 2, -3.0), ("sampling", "y", 2, -5.0), ("beam search", "z", 2, -1.5)]]
    html_ = compare_html("a {prompt}", rows)
    assert "<b>x</b>" not in html_ and "&#123;prompt&#125;" in html_
    cards = html_.split('<div style="flex:1')[1:]
    assert "font-weight:600" in cards[2] and "font-weight:600" not in cards[0]
    assert "−1.50" in cards[2] and "−0.75" in cards[2]


# ---- endpoints -----------------------------------------------------------------------------------
def test_generate_beam_endpoint(client, registry, model):
    notice, markup, plot, info = client.predict(PROMPT, 3, 8, 1.0, False, registry.default,
                                                api_name="/generate_beam")
    prompt, _ = beam_prompt(PROMPT, model.config.n_ctx, 8)
    search = beam_search(model, prompt.ids, 3, 8, 1.0, False)
    assert visible_text(markup).startswith(PROMPT + decode(search.best.token_ids))
    fig = plot_json(plot)
    best = next(t for t in fig["data"] if t.get("name") == "best path")
    assert len(best["x"]) == len(search.best.token_ids)
    assert "total log-prob **" + f"{search.best.cum_logprob:.2f}".replace("-", "−") in info
    assert "best 6 (2 × width)" in info and notice == ""
    again = client.predict(PROMPT, 3, 8, 1.0, False, registry.default, api_name="/generate_beam")
    assert again[1] == markup and again[3] == info
    wider = client.predict(PROMPT, 5, 4, 0.0, True, registry.default, api_name="/generate_beam")
    assert "best 10 (2 × width)" in wider[3]


def test_generate_compare_endpoint(client, registry, model):
    notice, markup = client.predict(PROMPT, 0.8, 40, 1.0, 5, 3, 8, 1.0, False, registry.default,
                                    api_name="/generate_compare")
    ids = beam_prompt(PROMPT, model.config.n_ctx, 8)[0].ids
    rows = compare_continuations(model, ids, 8, 0.8, 40, 1.0, 5, 3, 1.0, False)
    assert markup == compare_html(beam_prompt(PROMPT, model.config.n_ctx, 8)[0].text, rows)
    shown = visible_text(markup)
    for r in rows:
        assert f"{r.total_logprob:.2f}".replace("-", "−") in shown and r.method in shown


def test_a_long_prompt_is_cropped_to_fit_the_context(client, registry, model):
    text = "To be or not to be, that is the question. " * 60
    notice, markup, _, _ = client.predict(text, 2, 8, 1.0, False, registry.default, api_name="/generate_beam")
    room = min(512, model.config.n_ctx - 8)
    assert f"only the last {room:,} are used" in notice and "context" in notice
    assert visible_text(markup).startswith(beam_prompt(text, model.config.n_ctx, 8)[0].text)


@pytest.mark.parametrize("args, message", [
    (("", 3, 8, 1.0, False), "prompt is empty"),
    ((PROMPT, 0, 8, 1.0, False), r"Beam width must be between 1 and"),
    ((PROMPT, MAX_BEAM_WIDTH + 1, 8, 1.0, False), rf"Beam width must be between 1 and {MAX_BEAM_WIDTH}, got 9"),
    ((PROMPT, 2.5, 8, 1.0, False), r"Beam width"),
    ((PROMPT, 3, MAX_BEAM_TOKENS + 1, 1.0, False), r"New tokens \(beam search\) must be between 1 and 32"),
    ((PROMPT, 3, 8, 5.0, False), r"Length penalty .* must be between -1 and 3, got 5"),
    ((PROMPT, 3, 8, 1.0, "maybe"), r"Early stopping must be true or false"),
    ((PROMPT, 3, 8, 1.0, False, "no-such-model"), r"Unknown model"),
])
def test_bad_input_gives_a_plain_message(client, registry, args, message):
    full = args if len(args) == 6 else (*args, registry.default)
    for api, call in (("/generate_beam", full), ("/generate_compare", (full[0], 0.8, 40, 1.0, 0, *full[1:]))):
        with pytest.raises(Exception, match=message) as e:
            client.predict(*call, api_name=api)
        assert message_problem(str(e.value)) is None, str(e.value)


def test_beam_prompt_refuses_a_context_too_small():
    from explorer.inputs import InputError
    with pytest.raises(InputError, match="at most 7 new tokens"):
        beam_prompt(PROMPT, 8, 8)
