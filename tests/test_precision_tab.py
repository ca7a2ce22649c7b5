"""Precision tab: the figures, /precision_view (int8 included) through gradio_client, bad input, and the
app's --dtype mode (model.precision on the served models, the error next to the model status)."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from explorer.compute.precision import (PrecisionView, megabytes, precision_view, status_markdown, summary_markdown,
                                        token_text)
from explorer.figures.precision import cost_bars, error_bars, position_errors, top_tokens_bars
from explorer.inputs import MAX_VIEW_TOKENS, prepare_prompt
from explorer.tabs.precision_tab import EXAMPLES
from gpt2core.kernels import backend
from gpt2core.analysis import precision as core
from tests.conftest import ROOT, plot_json

PROMPT = EXAMPLES[0]


@pytest.fixture(scope="module")
def model(registry):
    return registry.get(registry.default).model


@pytest.fixture(scope="module")
def view(model):
    return precision_view(model, prepare_prompt(PROMPT))


# ---- figures -------------------------------------------------------------------------------------

def test_top_tokens_bars():
    fig = top_tokens_bars(["fp32", "int8"], [["␣a", "<|x|>"], ["␣b", "␣a"]], [[0.5, 0.25], [0.4, 0.3]])
    a, b = fig.data
    assert list(a.y) == ["0:␣a", "1:&lt;|x|&gt;"] and list(a.x) == [0.5, 0.25] and list(b.x) == [0.4, 0.3]
    assert a.customdata[1][0] == "&lt;|x|&gt;" and a.customdata[0][1] == "50.00%"   # token text in the hover
    assert "int8" in b.hovertemplate and a.xaxis == "x" and b.xaxis == "x2"
    assert [ann.text for ann in fig.layout.annotations] == ["fp32", "int8"]
    assert fig.layout.xaxis.range[1] == pytest.approx(0.5 * 1.05)


def test_error_bars():
    fig = error_bars(["fp32", "bf16"], [0.0, 0.1], [1.0, 0.9], [0.0, 0.003], ["the reference", "layer 1, head 2"])
    logit, agree, attn = fig.data
    assert list(logit.y) == [0.0, 0.1] and list(agree.y) == [1.0, 0.9] and list(attn.y) == [0.0, 0.003]
    assert list(attn.x) == ["fp32", "bf16"] and attn.customdata[1][0] == "layer 1, head 2"
    assert logit.marker.color[0] != logit.marker.color[1] and fig.layout.yaxis2.range[1] == 1.15
    assert fig.layout.yaxis.range[1] == pytest.approx(0.12) and fig.layout.yaxis3.range[1] == pytest.approx(0.0036)


def test_position_errors():
    fig = position_errors(["fp32", "bf16", "int8"], ["a", "b", "c"],
                          [[0, 0, 0], [0.1, 0.2, 0.05], [0.5, 1.0, 0.2]],
                          [[True] * 3, [True, True, True], [True, False, True]])
    assert [t.name for t in fig.data] == ["bf16", "int8"]               # fp32 is all zeros: left out
    int8 = fig.data[1]
    assert list(int8.x) == ["0:a", "1:b", "2:c"] and list(int8.y) == [0.5, 1.0, 0.2]
    assert list(int8.marker.symbol) == ["circle", "x", "circle"] and "DIFFERENT" in int8.customdata[1][0]
    assert fig.layout.yaxis.type == "log"


def test_cost_bars():
    fig = cost_bars(["fp32", "bf16", "int8"], [30.0, 15.0, 33.0], [5.0, 4.0, 3.5])
    mem, ms = fig.data
    assert list(mem.y) == [30.0, 15.0, 33.0] and list(ms.y) == [5.0, 4.0, 3.5]
    assert [c[0] for c in mem.customdata] == ["100%", "50%", "110%"]


# ---- compute -------------------------------------------------------------------------------------

def test_view_is_core_compare(model, view):
    rows = core.compare(model, prepare_prompt(PROMPT).ids)
    assert view.names == list(backend.PRECISIONS) == [r.precision for r in rows]
    for got, want in zip(view.rows, rows):
        assert got.top_ids.tolist() == want.top_ids.tolist() and got.weight_bytes == want.weight_bytes
        assert got.max_logit_delta == pytest.approx(want.max_logit_delta)
    assert view.top_tokens(view.rows[0]) == [token_text(i) for i in view.rows[0].top_ids]


def test_summary_names_every_figure(view):
    md = summary_markdown(view)
    T = len(view.prompt.ids)
    for row in view.rows:
        assert f"| **{row.precision}** |" in md
        assert f"{row.max_logit_delta:.4g}" in md and f"{megabytes(row.weight_bytes):,.1f} MB" in md
        assert f"({round(row.top1_agreement * T)}/{T})" in md
    layer, head, q, k = view.rows[-1].attention_where
    assert f"layer {layer}, head {head}: query {q} `` {view.tokens[q]} `` → key {k}" in md
    worst = max(view.rows, key=lambda r: r.max_logit_delta)
    assert f"**{worst.precision}**'s ({worst.max_logit_delta:.3g})" in md


def test_summary_of_a_made_up_view():
    """A table cell can't hold a raw |, ties are called ties, and int8 bigger than fp32 is explained."""
    def row(name, top, probs, dl, nbytes):
        return core.PrecisionRun(name, 2, dl, 1.0, dl / 10, (0, 0, 1, 0), np.array([dl, dl]), np.array([True, True]),
                                 top_ids=np.array(top), top_probs=np.array(probs), weight_bytes=nbytes, seconds=0.001)
    v = PrecisionView(prepare_prompt("a|b"), [row("fp32", [91, 13], [0.5, 0.2], 0.0, 100),
                                               row("bf16", [13, 91], [0.3, 0.3], 0.1, 50),
                                               row("int8", [91, 13], [0.5, 0.2], 0.5, 120)])
    md = summary_markdown(v)
    assert "`` \\| ``" in md                                    # token 91 is "|"
    assert "**differs from fp32**" in md and "exactly tied with" in md and "An exact tie" in md
    assert "int8 needs *more* memory than fp32" in md and "under bf16" in md


def test_an_example_shows_a_difference(registry, model):
    """The examples were chosen because some precision changes the top next token on the bundled model."""
    if registry.get(registry.default).card.get("display_name") != "shakespeare (bundled)":
        pytest.skip("the examples are for the bundled model")
    changed = []
    for text in EXAMPLES:
        v = precision_view(model, prepare_prompt(text))
        changed += [(text, r.precision) for r in v.rows[1:] if int(r.top_ids[0]) != int(v.rows[0].top_ids[0])]
    assert len({t for t, _ in changed}) >= 2, changed


def test_status_line(monkeypatch):
    monkeypatch.delenv("GPT2_BF16", raising=False)                  # auto: emulated where there are no units
    rep = core.ErrorReport("bf16", 7, 0.1234, 6 / 7, 0.00321, (1, 2, 3, 0), np.zeros(7), np.ones(7, bool))
    slow = status_markdown(rep, "bf16", "this prompt", (False, "no AMX here"))
    assert "max |Δ logit| **0.123**" in slow and "top-1 agreement **85.7%**" in slow
    assert "max |Δ attention weight| **0.00321**" in slow and "(7 tokens)" in slow
    assert "No bf16 units: operands rounded to bf16, multiplied in fp32" in slow and "no AMX here" in slow
    fast = status_markdown(rep, "bf16", "this prompt", (True, "AMX-BF16 found"))
    assert "operands rounded" not in fast and "AMX-BF16 found" in fast
    assert "operands rounded" not in status_markdown(rep, "bf16", "this prompt", None)   # not a CPU


# ---- endpoint ------------------------------------------------------------------------------------

def test_precision_endpoint(client, registry, model):
    notice, md, top, errors, positions, cost = client.predict(PROMPT, registry.default, api_name="/precision_view")
    v = precision_view(model, prepare_prompt(PROMPT))
    assert notice == "" and all(f"| **{p}** |" in md for p in backend.PRECISIONS)
    top = plot_json(top)
    assert [t["name"] for t in top["data"]] == list(backend.PRECISIONS)
    for trace, row in zip(top["data"], v.rows):
        assert trace["x"] == pytest.approx(np.round(row.top_probs, 6).tolist(), abs=2e-6)
        assert [c[0] for c in trace["customdata"]] == v.top_tokens(row)   # token text in the hovers
    logit, agree, attn = plot_json(errors)["data"]
    assert logit["y"] == pytest.approx([r.max_logit_delta for r in v.rows], rel=1e-5, abs=1e-7)
    assert agree["y"] == pytest.approx([r.top1_agreement for r in v.rows])
    assert attn["y"] == pytest.approx([r.max_attention_delta for r in v.rows], rel=1e-5, abs=1e-8)
    assert logit["y"][0] == 0 and agree["y"][0] == 1 and min(logit["y"][1:]) > 0
    pos = plot_json(positions)["data"]
    assert [t["name"] for t in pos] == list(backend.PRECISIONS[1:]) and len(pos[0]["x"]) == len(v.prompt.ids)
    mem = plot_json(cost)["data"][0]
    assert mem["y"] == pytest.approx([round(megabytes(backend.weight_bytes(model, p)), 3) for p in backend.PRECISIONS])


def test_int8_through_gradio_client(client, registry, model):
    """int8 (PyTorch's dynamic quantisation) served by the app: its figures are the int8 run's own."""
    text = EXAMPLES[1]
    _, md, top, errors, positions, cost = client.predict(text, registry.default, api_name="/precision_view")
    i = list(backend.PRECISIONS).index("int8")
    rep = core.error_report(model, prepare_prompt(text).ids, "int8")
    logit, agree, attn = plot_json(errors)["data"]
    assert logit["x"][i] == "int8" and logit["y"][i] == pytest.approx(rep.max_logit_delta, rel=1e-5)
    assert agree["y"][i] == pytest.approx(rep.top1_agreement) and attn["y"][i] == pytest.approx(
        rep.max_attention_delta, rel=1e-5)
    assert rep.max_logit_delta > 0 and rep.max_logit_delta > logit["y"][list(backend.PRECISIONS).index("fp16")]
    layer, head, q, k = rep.attention_where
    assert f"layer {layer}, head {head}: query {q}" in attn["customdata"][i][0]
    int8_top = plot_json(top)["data"][i]
    with backend.precision("int8"):   # every position, as the view runs it: one activation scale per call
        logits, _ = model.run_with_cache(prepare_prompt(text).ids)
    probs = torch.softmax(logits[-1].double(), -1)
    assert int8_top["x"][0] == pytest.approx(float(probs.max()), abs=2e-6)
    assert int8_top["customdata"][0][0] == token_text(int(probs.argmax()))
    mem = plot_json(cost)["data"][0]
    assert mem["y"][i] == pytest.approx(round(backend.weight_bytes(model, "int8") / 1e6, 3))
    assert "| **int8** |" in md


def test_long_prompt_is_cut_to_the_view_cap(client, registry, model):
    text = "To be, or not to be, that is the question. " * 60
    notice, _, _, _, positions, _ = client.predict(text, registry.default, api_name="/precision_view")
    cap = min(MAX_VIEW_TOKENS, model.config.n_ctx)
    assert f"only the last {cap:,} are used here" in notice
    assert len(plot_json(positions)["data"][0]["x"]) == cap


@pytest.mark.parametrize("args, message", [
    (("", None), "The prompt is empty"),
    ((" \n\t ", None), "The prompt is empty"),
    (("\x00\x01", None), "The prompt is empty"),
    ((PROMPT, "no such model"), "Unknown model 'no such model'"),
    ((PROMPT, 7), "model"),
])
def test_precision_endpoint_bad_input(client, registry, args, message):
    text, name = args
    with pytest.raises(Exception, match=message):
        client.predict(text, registry.default if name is None else name, api_name="/precision_view")


# ---- the app in bf16 (--dtype bf16) --------------------------------------------------------------

def test_dtypes_are_the_backends():
    sys.path.insert(0, str(ROOT))
    import app
    assert app.DTYPES == backend.PRECISIONS


@pytest.mark.parametrize("argv, env, message", [
    (["--dtype", "fp8"], {}, "invalid choice: 'fp8'"),
    ([], {"GPT2_EXPLORER_DTYPE": "fp8"}, "must be one of fp32, bf16, fp16, int8, got 'fp8'"),
])
def test_bad_dtype_stops_at_start(argv, env, message):
    import os
    out = subprocess.run([sys.executable, str(ROOT / "app.py"), *argv], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env})
    assert out.returncode == 2 and message in out.stderr, out.stderr[-500:]


@pytest.fixture(scope="module")
def bf16_app():
    from gradio_client import Client

    from explorer.app import CSS, build_app
    from explorer.session import build_registry
    registry = build_registry(precision="bf16")
    demo = build_app(registry)
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, css=CSS, quiet=True)
    yield registry, demo, Client(demo.local_url, verbose=False)
    demo.close()


def test_bf16_mode_serves_in_bf16(bf16_app):
    registry, demo, _ = bf16_app
    model = registry.get(registry.default).model
    assert registry.precision == "bf16" and model.precision == "bf16"
    ids = prepare_prompt(PROMPT).ids
    served, _ = model.run_with_cache(ids)                 # what every view of this app computes
    with backend.precision("bf16"):
        bf16, _ = model.run_with_cache(ids)
    with backend.precision("fp32"):
        fp32, _ = model.run_with_cache(ids)
    assert torch.equal(served, bf16) and not torch.equal(served, fp32)
    with pytest.raises(ValueError, match="fp8"):
        from explorer.session import build_registry
        build_registry(precision="fp8")


def test_bf16_status_shows_the_error_on_the_prompt(bf16_app, registry):
    bf16_registry, demo, client = bf16_app
    from explorer.app import DEFAULT_PROMPT, precision_status
    model = bf16_registry.get(bf16_registry.default).model
    status = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "precision-status"]
    assert len(status) == 1 and status[0].visible
    first = core.error_report(model, prepare_prompt(DEFAULT_PROMPT).ids, "bf16")
    assert f"max |Δ logit| **{first.max_logit_delta:#.3g}**" in status[0].value
    text = EXAMPLES[2]
    shown = client.predict(text, bf16_registry.default, api_name="/precision_status")
    rep = core.error_report(model, prepare_prompt(text).ids, "bf16")
    assert f"on this prompt ({len(prepare_prompt(text).ids)} tokens)" in shown
    assert f"max |Δ logit| **{rep.max_logit_delta:#.3g}**" in shown
    assert f"top-1 agreement **{rep.top1_agreement:.1%}**" in shown
    assert f"max |Δ attention weight| **{rep.max_attention_delta:#.3g}**" in shown
    has_units, reason = backend.bf16_units()
    assert reason in shown and (("No bf16 units" in shown) != has_units)
    # what is done here: operands rounded to bf16 and multiplied in fp32 where there are no bf16 units
    assert ("operands rounded to bf16, multiplied in fp32" in shown) == backend.bf16_emulated()
    empty = client.predict("", bf16_registry.default, api_name="/precision_status")
    assert "on the default prompt" in empty
    with pytest.raises(Exception, match="Unknown model"):
        client.predict(text, "no such model", api_name="/precision_status")
    # fp32 (the default app) has no such line and no such endpoint: it stays exact and costs nothing
    assert registry.precision == "fp32"
    assert precision_status(registry.get(registry.default), text).startswith("**Precision:** fp32 (exact)")
