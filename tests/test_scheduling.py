"""Fair serving: the views' shared queue, long work in queues of its own that steps aside for the views,
and the allocator settings that keep the memory flat."""
import inspect
import threading
from pathlib import Path

import gradio as gr
import pytest

from explorer import memory, scheduling
from gpt2core.kernels import native


def test_step_aside_waits_while_the_views_fill_their_slots_and_no_longer():
    gate = scheduling.ViewGate(full=1)
    assert gate.step_aside(0.01) is True            # nothing computing: no wait
    entered, release = threading.Event(), threading.Event()

    def view():
        with gate.view():
            entered.set()
            release.wait(5)

    t = threading.Thread(target=view)
    t.start()
    entered.wait(5)
    assert gate.running == 1
    assert gate.step_aside(0.05) is False           # the views fill their slot: it waited, then gave up
    threading.Timer(0.1, release.set).start()
    assert gate.step_aside(5) is True               # ...and goes on as soon as the view is done
    t.join(5)
    assert gate.running == 0


def test_counted_keeps_the_signature_gradio_reads_and_counts_while_running():
    seen = []

    def handler(text, progress=gr.Progress()):
        seen.append(scheduling.GATE.running)
        return text.upper()

    wrapped = scheduling.counted(handler)
    assert list(inspect.signature(wrapped).parameters) == ["text", "progress"]
    before = scheduling.GATE.running
    assert wrapped("a") == "A" and seen == [before + 1] and scheduling.GATE.running == before


def test_assign_puts_views_in_one_queue_and_long_work_in_its_own(registry):
    from explorer.app import build_app
    demo = build_app(registry)
    table = {fn.api_name: (fn.concurrency_id, fn.concurrency_limit) for fn in demo.fns.values()
             if fn.api_name and fn.fn is not None}
    for name, queue in scheduling.LONG_WORK.items():
        assert table[name] == queue, name
    views = [n for n in table if n not in scheduling.LONG_WORK]
    assert len(views) > 20 and all(table[n] == (scheduling.VIEWS, scheduling.VIEW_SLOTS) for n in views)
    # Every queued event is in a named queue: none falls back to a queue of its own.
    queued = [fn for fn in demo.fns.values() if fn.fn is not None]
    names = {scheduling.VIEWS} | {q for q, _ in scheduling.LONG_WORK.values()}
    assert all(fn.concurrency_id in names for fn in queued)
    # A view's handler runs inside the gate; long work (generators among them) is left as it was.
    attention = next(fn for fn in demo.fns.values() if fn.api_name == "attention_view")
    assert attention.fn.__wrapped__ is not None
    generate = next(fn for fn in demo.fns.values() if fn.api_name == "generate")
    assert inspect.isgeneratorfunction(generate.fn)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="glibc's malloc, on Linux")
def test_the_allocator_settings_are_accepted_and_trimming_returns_pages():
    assert native.limit_arenas(memory.ARENAS) is True
    block = bytearray(64 << 20)          # 64 MiB through malloc, freed: its pages go back on trim
    del block
    assert isinstance(native.trim_freed_memory(), bool)
    memory.start_trimming()
    memory.start_trimming()              # once per process
    assert sum(t.name == "memory-trim" for t in threading.enumerate()) == 1

