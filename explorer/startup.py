"""The app's start-up: a log of its phases, gradio's import without its stub writer, the GC held back.

**The phase log.** With ``GPT2_EXPLORER_STARTUP_LOG=1`` the app prints one line to stderr as each phase of
its start ends, ``[startup] {"phase": ..., "at": <time.time()>, "since_start": <s>, "took": <s>}``:
``since_start`` counts from the process's own start (Linux: /proc/self/stat), ``took`` from the mark
before. ``python -m bench coldstart`` (bench/coldstart.py) reads them. Without the variable ``mark`` does
nothing but note the time. Standard library only: it runs before torch and gradio are imported.

**gradio's stub writer.** Each gradio component class, as it is created, has gradio re-derive its type stub
(``gradio.component_meta.create_or_modify_pyi``): it reads the class's source file, parses it and the
``.pyi`` beside it with ``ast`` and rewrites the stub if it differs. It is a tool for gradio's developers;
for a server it is about half of ``import gradio`` (1.2 s of 2.7 s on an AMD EPYC Zen 4, more on a slower
CPU) and writes ``explorer/components.pyi`` beside our own components. ``skip_gradio_stub_writer()``, called
before gradio is imported, replaces that one function with one that does nothing; every component, event
and page is the same. ``GPT2_EXPLORER_GRADIO_STUBS=1`` keeps gradio's behaviour.

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
    objects that live as long as the server, and each full collection walked them all again (0.8 s of the
    start on an AMD EPYC Zen 4, in about 1,000 collections)."""
    gc.disable()


def release_gc() -> None:
    """Once the server is up: freeze what start-up made (the collector never walks it again), then collect
    as usual. The start-up's own garbage cycles, about 7 MB of Python objects (tracemalloc), stay: a
    constant, not a growth."""
    gc.freeze()
    gc.enable()


class _StubWriterSkipper(importlib.abc.MetaPathFinder):
    """Finds gradio.component_meta as usual and, once it has run, replaces its stub writer with a no-op."""

    NAME = "gradio.component_meta"

    def find_spec(self, name, path, target=None):
        if name != self.NAME:
            return None
        _remove_finder(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            if callable(getattr(module, "create_or_modify_pyi", None)):
                module.create_or_modify_pyi = _no_stub
                module._explorer_skipped_stub_writer = True   # tests/test_startup.py reads it

        spec.loader.exec_module = exec_module
        return spec


def _no_stub(component_class, class_name, events) -> None:
    """gradio's create_or_modify_pyi, skipped: the stubs are for gradio's developers, not a server."""


def _remove_finder(finder) -> None:
    try:
        sys.meta_path.remove(finder)
    except ValueError:
        pass


def skip_gradio_stub_writer() -> bool:
    """Before ``import gradio``: make its component classes skip the stub writer. False (and nothing done)
    when gradio is already imported or GPT2_EXPLORER_GRADIO_STUBS=1."""
    if os.environ.get("GPT2_EXPLORER_GRADIO_STUBS", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    if _StubWriterSkipper.NAME in sys.modules:
        return False
    if not any(isinstance(f, _StubWriterSkipper) for f in sys.meta_path):
        sys.meta_path.insert(0, _StubWriterSkipper())
    return True
