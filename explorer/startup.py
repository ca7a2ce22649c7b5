"""The app's start-up: a log of its phases, a lighter import of gradio, the GC held back.

**The phase log.** With ``GPT2_EXPLORER_STARTUP_LOG=1`` the app prints one line to stderr as each phase of
its start ends, ``[startup] {"phase": ..., "at": <time.time()>, "since_start": <s>, "took": <s>}``:
``since_start`` counts from the process's own start (Linux: /proc/self/stat), ``took`` from the mark
before. ``python -m bench coldstart`` (bench/coldstart.py) reads them. Without the variable ``mark`` does
nothing but note the time. Standard library only: it runs before torch and gradio are imported.

**gradio's import, lightened** (``lighten_gradio_import``, before gradio is imported). As gradio creates each
component class it (1) re-derives the class's type stub (``gradio.component_meta.create_or_modify_pyi``:
it reads the class's source file, parses it and the ``.pyi`` beside it with ``ast`` and rewrites the stub if
it differs), and (2) fills the component's name into each event's docstring by compiling the docstring as
a Jinja template (``gradio.events.EventListener.set_doc``, some 200 compiles). The stubs are a tool for
gradio's developers (and wrote ``explorer/components.pyi`` beside our own components); the docstrings are
read by ``help()``. The first was about half of ``import gradio`` (1.2 s of 2.7 s on an AMD EPYC Zen 4),
the second about 0.2 s more. Here the stub writer does nothing and the docstrings get the name by plain
replacement (the same text, tests/test_startup.py compares it with Jinja's for every event of every
component; a docstring with other Jinja still goes to Jinja). Components, events and pages are gradio's
own. ``GPT2_EXPLORER_GRADIO_AS_IS=1`` imports gradio untouched.

**The garbage collector** (``hold_gc``, ``release_gc``): off from the command line's start until the server
is up, then everything start-up made is frozen out of later collections (explorer/cli.py).
"""
from __future__ import annotations

import gc
import importlib.abc
import importlib.machinery
import json
import os
import sys
import time

LOG = os.environ.get("GPT2_EXPLORER_STARTUP_LOG", "").strip().lower() in ("1", "true", "yes", "on")
PREFIX = "[startup] "


def process_start() -> float:
    """When this process started, as time.time(): from /proc on Linux, else this module's first import."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])                       # field 22, starttime: clock ticks after boot
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


_started = process_start()
_last = _started
phases: list[dict] = []     # every mark of this process, in order (also when the log is off)


def mark(phase: str, **extra) -> dict:
    """Note that ``phase`` ended now; with the log on, print it to stderr."""
    global _last
    now = time.time()
    entry = {"phase": phase, "at": round(now, 4), "since_start": round(now - _started, 4),
             "took": round(now - _last, 4), **extra}
    _last = now
    phases.append(entry)
    if LOG:
        print(PREFIX + json.dumps(entry), file=sys.stderr, flush=True)
    return entry


def hold_gc() -> None:
    """No cyclic garbage collection until ``release_gc``: the start-up's imports and page are some 600,000
    objects, most of them as long-lived as the server, and the collections walked them again and again (0.8 s
    of the start on an AMD EPYC Zen 4, in about 1,000 collections)."""
    gc.disable()


def release_gc() -> None:
    """Once the server is up: freeze what start-up made (the collector never walks it again), then collect
    as usual. The start-up's own garbage cycles, about 7 MB of Python objects (tracemalloc), stay: a
    constant, not a growth."""
    gc.freeze()
    gc.enable()


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds the modules in ``fixes`` as usual and, once one has run, calls its fix on it (then forgets it)."""

    def __init__(self, fixes: dict):
        self.fixes = dict(fixes)

    def find_spec(self, name, path, target=None):
        fix = self.fixes.pop(name, None)
        if fix is None:
            return None
        if not self.fixes:
            _remove_finder(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            fix(module)

        spec.loader.exec_module = exec_module
        return spec


def _no_stub(component_class, class_name, events) -> None:
    """gradio's create_or_modify_pyi, skipped: the stubs are for gradio's developers, not a server."""


def _skip_stub_writer(component_meta) -> None:
    if callable(getattr(component_meta, "create_or_modify_pyi", None)):
        component_meta.create_or_modify_pyi = _no_stub
        component_meta._explorer_skipped_stub_writer = True   # tests/test_startup.py reads it


JINJA_NAME = "{{ component }}"


def _plain_set_doc(jinja_set_doc):
    """EventListener.set_doc without a Jinja compile where the docstring's only Jinja is ``{{ component }}``:
    the same text Jinja renders (which also drops one trailing newline); any other Jinja goes to Jinja."""
    def set_doc(self, component: str):
        doc = self.listener.__doc__
        if not doc:
            return None
        if any(mark in doc.replace(JINJA_NAME, "") for mark in ("{{", "{%", "{#")) or "\r" in doc:
            return jinja_set_doc(self, component)
        doc = doc.replace(JINJA_NAME, component)
        self.listener.__doc__ = doc[:-1] if doc.endswith("\n") else doc
        return None

    set_doc.jinja_set_doc = jinja_set_doc    # tests/test_startup.py renders both ways
    return set_doc


def _plain_event_docs(events) -> None:
    listener = getattr(events, "EventListener", None)
    if listener is not None and callable(getattr(listener, "set_doc", None)):
        listener.set_doc = _plain_set_doc(listener.set_doc)


GRADIO_FIXES = {"gradio.component_meta": _skip_stub_writer, "gradio.events": _plain_event_docs}


def _remove_finder(finder) -> None:
    try:
        sys.meta_path.remove(finder)
    except ValueError:
        pass   # already removed: its modules were imported once, which is all it waits for


def lighten_gradio_import() -> bool:
    """Before ``import gradio``: its component classes skip the stub writer and its event docstrings are
    filled in without Jinja. False (and nothing done) when gradio is already imported, or with
    GPT2_EXPLORER_GRADIO_AS_IS=1."""
    if os.environ.get("GPT2_EXPLORER_GRADIO_AS_IS", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    if any(name in sys.modules for name in GRADIO_FIXES):
        return False
    if not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(GRADIO_FIXES))
    return True
