"""Who computes when, so that a class of users is served fairly on two cores.

- Every cheap view (a figure from one forward pass) waits in one shared queue, ``views``, and at most
  ``VIEW_SLOTS`` of them compute at once: on a 2-core machine more only share the cores and the GIL, and
  each request then takes longer (and holds its activations longer) without the queue moving faster.
- Each kind of long work (generation, the head scan, precision, the patching sweep, training) has a
  queue of its own with its own limit, so a burst of it can't take every slot.
- Long work also steps aside: between its steps (a token, a batch of heads, a layer of patches, a
  training step) it waits while the views fill every slot (the cores are theirs), at most
  ``STEP_ASIDE_S`` a step. Waiting whenever any view computed made a 20-token generation under a class's
  load take 4.9 s, not 1.8 (bench/RESULTS.md, the soak); this way the views keep their cores and the
  generation still streams.

``assign(demo)`` applies this to a built app; the README's limits table lists the same numbers.
"""
from __future__ import annotations

import contextvars
import functools
import inspect
import threading
from contextlib import contextmanager

from gpt2core.text import tokenizer

VIEWS = "views"
VIEW_SLOTS = 2                 # cheap views computed at once (the machine's two cores)
STEP_ASIDE_S = 0.1             # the longest a step of long work waits for the views in flight
# api_name -> (queue, events of that queue computed at once)
LONG_WORK = {
    "generate": ("generate", 3),            # streamed: a user watches it, so a few run side by side
    "generate_beam": ("generate", 3),       # beam search: generation's queue
    "generate_compare": ("generate", 3),    # greedy, sampling and beam search of one prompt: the same
    "why_scan": ("why_scan", 1),
    "precision_view": ("precision_view", 1),
    "circuits_patch": ("circuits_patch", 1),
    "train": ("train", 1),                  # training, instruction tuning and the genre head share one queue
    "train_instruct": ("train", 1),
    "classify_train": ("train", 1),         # the genre head: training's queue too
}


class ViewGate:
    """Counts the views computing now; long work calls ``step_aside()`` between its steps, and waits
    while ``full`` views compute."""

    def __init__(self, full: int = VIEW_SLOTS):
        self.full = full
        self._running = 0
        self._idle = threading.Condition()

    @contextmanager
    def view(self):
        with self._idle:
            self._running += 1
        try:
            yield
        finally:
            with self._idle:
                self._running -= 1
                if self._running < self.full:
                    self._idle.notify_all()

    @property
    def running(self) -> int:
        return self._running

    def step_aside(self, most: float = STEP_ASIDE_S) -> bool:
        """Wait until fewer than ``full`` views compute, ``most`` seconds at the longest; True if a slot
        was free by then."""
        with self._idle:
            return self._idle.wait_for(lambda: self._running < self.full, timeout=most)


GATE = ViewGate()     # one per process: it schedules the process's requests, it holds no request's data
step_aside = GATE.step_aside


_IN_REQUEST: contextvars.ContextVar[bool] = contextvars.ContextVar("explorer_in_request", default=False)


def in_request() -> bool:
    """True inside an event's handler (set by in_own_context): the app's build and the tests' direct calls
    are not requests, and leave the process's tokenizer alone."""
    return _IN_REQUEST.get()


def _begin_request() -> None:
    tokenizer.activate(None)
    _IN_REQUEST.set(True)


def in_own_context(fn):
    """``fn`` run in a context of its own, starting from GPT-2's tokenizer: a request's model sets the
    active tokenizer (gpt2core.text.tokenizer, a context variable) for that request alone. A generator keeps
    one context across its steps (gradio runs each step in a fresh copy of the server's context)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def steps(*args, **kwargs):
            context = contextvars.copy_context()
            context.run(_begin_request)
            gen = context.run(fn, *args, **kwargs)
            try:
                while True:
                    try:
                        item = context.run(next, gen)
                    except StopIteration:
                        return
                    yield item
            finally:
                context.run(gen.close)
        return steps

    @functools.wraps(fn)
    def call(*args, **kwargs):
        context = contextvars.copy_context()
        context.run(_begin_request)
        return context.run(fn, *args, **kwargs)
    return call


def counted(fn):
    """``fn`` run inside ``GATE.view()``; its signature (gr.Progress, gr.Request) is gradio's to read."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with GATE.view():
            return fn(*args, **kwargs)
    return run


def assign(demo) -> dict[str, tuple[str, int]]:
    """Put each event of a built app in its queue: long work in its own (LONG_WORK), everything else in
    ``views``. Returns api_name -> (queue, limit) for the named events."""
    table = {}
    for block_fn in demo.fns.values():
        if block_fn.fn is None:                          # a JavaScript-only event: never queued
            continue
        name = block_fn.api_name
        if not (inspect.iscoroutinefunction(block_fn.fn) or inspect.isasyncgenfunction(block_fn.fn)):
            block_fn.fn = in_own_context(block_fn.fn)
        if name in LONG_WORK:
            block_fn.concurrency_id, block_fn.concurrency_limit = LONG_WORK[name]
        else:
            block_fn.concurrency_id, block_fn.concurrency_limit = VIEWS, VIEW_SLOTS
            if not (inspect.isgeneratorfunction(block_fn.fn) or inspect.iscoroutinefunction(block_fn.fn)
                    or inspect.isasyncgenfunction(block_fn.fn)):
                block_fn.fn = counted(block_fn.fn)
        if name:
            table[name] = (block_fn.concurrency_id, block_fn.concurrency_limit)
    return table
