"""The app's start-up (issue 31.3; explorer/startup.py): what it no longer does while it starts, and that the
page still has all of it. No timings are asserted here: ``python -m bench coldstart`` measures them.

- ``import explorer`` is light; torch, gradio and the tabs come with ``build_app`` / ``build_registry``;
- gradio's stub writer is skipped in a process that imports explorer first, and kept on request;
- the phase log prints one JSON line per mark, which bench/coldstart.py reads;
- the GC held during start-up is back on (and start-up's objects frozen) once released;
- the figures no longer drawn while the app starts (the Train tab's bundled loss curve and its genre
  figures, the GELU curves) are empty in the built page and drawn by the tab's first opening, a hidden
  button the page presses (ctx.url_state's redraw; tests/test_browser_tabs.py opens each tab in a browser).
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import gradio as gr
import plotly.graph_objects as go
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, **env) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_import_explorer_is_light_and_build_app_comes_on_demand():
    code = ("import sys, explorer; light = [m for m in ('torch', 'gradio') if m in sys.modules]; "
            "from explorer import build_app, build_registry; "
            "print(light, callable(build_app), callable(build_registry), 'gradio' in sys.modules)")
    assert run_python(code) == "[] True True True"
    import explorer
    with pytest.raises(AttributeError):
        explorer.no_such_name


@pytest.mark.parametrize("as_is, expected", [("", "_no_stub True set_doc"),
                                             ("1", "create_or_modify_pyi False set_doc")])
def test_gradio_import_is_lightened_unless_asked_for(as_is, expected):
    """Imported after explorer, gradio's component classes skip the .pyi writer and fill their event docstrings
    without Jinja; GPT2_EXPLORER_GRADIO_AS_IS=1 keeps gradio as it is. Either way the components work."""
    code = ("import explorer, gradio as gr, gradio.component_meta as cm, gradio.events as ev; "
            "s = gr.Slider(0, 5, value=2, label='x'); assert s.get_config()['maximum'] == 5; "
            "assert s.preprocess(3) == 3; "
            "print(cm.create_or_modify_pyi.__name__, getattr(cm, '_explorer_skipped_stub_writer', False), "
            "ev.EventListener.set_doc.__name__, hasattr(ev.EventListener.set_doc, 'jinja_set_doc') == (not "
            f"{bool(as_is)}))")
    assert run_python(code, GPT2_EXPLORER_GRADIO_AS_IS=as_is) == expected + " True"


EVENT_DOCS = """
import explorer, gradio as gr, gradio.events as ev
from gradio.components.base import Component

set_doc = ev.EventListener.set_doc
jinja = set_doc.jinja_set_doc
classes, stack = set(), [Component]
while stack:
    for sub in stack.pop().__subclasses__():
        classes.add(sub)
        stack.append(sub)
checked = 0
for cls in sorted(classes, key=lambda c: c.__module__ + c.__name__):
    for event in cls.__dict__.get("EVENTS", []):      # a class that inherits its EVENTS inherits their text
        if not isinstance(event, ev.EventListener):
            continue
        theirs, ours = event.copy(), event.copy()      # copies hold the docstring's template again
        jinja(theirs, cls.__name__)
        set_doc(ours, cls.__name__)
        assert ours.listener.__doc__ == theirs.listener.__doc__, (cls, event.event_name)
        assert event.listener.__doc__ == theirs.listener.__doc__, (cls, event.event_name)   # as made at import
        checked += "{{" not in (theirs.listener.__doc__ or "")
print(checked)
"""


def test_event_docstrings_are_jinjas_text_for_every_event_of_every_component():
    """The plain replacement gives each event docstring exactly the text gradio's Jinja rendering gives."""
    assert int(run_python(EVENT_DOCS)) > 150      # gradio 6.31: 201 events


def test_startup_marks_print_one_json_line_each(monkeypatch, capsys):
    from explorer import startup
    monkeypatch.setattr(startup, "LOG", True)
    entry = startup.mark("a phase", tabs={"train": 0.1})
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(startup.PREFIX)
    parsed = json.loads(line[len(startup.PREFIX):])
    assert parsed == entry and parsed["phase"] == "a phase" and parsed["tabs"] == {"train": 0.1}
    assert {"at", "since_start", "took"} <= set(parsed) and startup.phases[-1] == entry
    monkeypatch.setattr(startup, "LOG", False)
    startup.mark("quiet")
    assert capsys.readouterr().err == ""


def test_gc_held_then_released_with_start_ups_objects_frozen():
    from explorer import startup
    assert gc.isenabled()
    try:
        startup.hold_gc()
        assert not gc.isenabled()
        startup.release_gc()
        assert gc.isenabled() and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()      # this test process goes on collecting as before
        gc.enable()


# ---- figures drawn on a tab's first opening, not while the app starts ----------------------------------

def _block(demo, elem_id):
    return next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id)


def _event_of(demo, button):
    """The (single) event a button's click runs."""
    fns = [f for f in demo.fns.values() if any(t[0] == button._id and t[1] == "click" for t in f.targets)]
    assert len(fns) == 1, fns
    return fns[0]


def _first_draw(demo, tab: str, button_id: str):
    """Check the page presses ``button_id`` when ``tab`` first opens, then run its event as the page would
    (the inputs' values as built); returns {output elem_id: value}."""
    redraw = json.loads(_between(demo_js(demo), "REDRAW = ", ", BIG"))
    assert button_id in redraw[tab], redraw
    fn = _event_of(demo, _block(demo, button_id))
    args = [getattr(b, "value", None) for b in fn.inputs]
    out = fn.fn(*args)
    return {o.elem_id: v for o, v in zip(fn.outputs, out)}


def demo_js(demo) -> str:
    return next(f.js for f in demo.fns.values() if f.js and "window.explorer = " in f.js)


def _between(text: str, start: str, end: str) -> str:
    i = text.index(start) + len(start)
    return text[i:text.index(end, i)]


@pytest.fixture(scope="module")
def demo(registry):
    from explorer.app import build_app
    return build_app(registry)


def test_train_tab_draws_its_figures_on_first_opening(demo):
    for plot in ("train-curve", "classify-probs", "classify-attention"):
        block = _block(demo, plot)
        assert block.visible and block.value is None, f"{plot} is drawn while the app starts"
    drawn = _first_draw(demo, "train", "train-first-draw")
    curve = drawn["train-curve"]
    assert isinstance(curve, go.Figure) and curve.data
    assert "How the bundled model was trained" in curve.layout.title.text
    for plot in ("classify-probs", "classify-attention"):
        assert isinstance(drawn[plot], go.Figure) and drawn[plot].data, plot


def test_train_tabs_first_draw_leaves_a_sessions_own_run_alone(demo):
    fn = _event_of(demo, _block(demo, "train-first-draw"))
    args = [getattr(b, "value", None) for b in fn.inputs]
    args[0] = {"model": None, "preset": "tiny", "steps": 10, "tokens": 100}    # this session trained already
    curve, probs, _ = fn.fn(*args)
    assert curve == gr.update() and isinstance(probs, go.Figure)


def test_gelu_tab_draws_its_curves_on_first_opening(demo):
    assert _block(demo, "gelu-curves").value is None
    drawn = _first_draw(demo, "gelu", "gelu-first-draw")
    assert isinstance(drawn["gelu-curves"], go.Figure) and drawn["gelu-curves"].data
    assert drawn["gelu-curves-summary"]
