"""The server's memory over a lecture hour: fast and flat.

- Fast: glibc keeps freed blocks for reuse (``native.retain_freed_memory``), so a request's activations
  don't fault in fresh pages each time (a full capture at 256 tokens on GPT-2 was +28% slower without).
- Flat: that keeps every arena's peak, and glibc makes an arena per thread that allocates (16 on two
  cores), so a server whose requests move between worker threads held many peaks at once and grew for
  as long as it served (bench/RESULTS.md, the soak). So the arenas are capped at ``ARENAS``, and every
  ``TRIM_EVERY_S`` a background thread gives the freed pages back (malloc_trim): the next requests
  fault in only what they use.
"""
from __future__ import annotations

import os
import signal
import threading

from gpt2core.kernels import native

# malloc arenas: the cores the app is sized for (more only hold more peaks); 0 leaves glibc's default
ARENAS = int(os.environ.get("GPT2_EXPLORER_MALLOC_ARENAS", "2"))
# seconds between giving freed pages back; 0: never (the soak measures both)
TRIM_EVERY_S = float(os.environ.get("GPT2_EXPLORER_TRIM_S", "10"))

_trimmer: threading.Thread | None = None
_lock = threading.Lock()


# a folder: trace Python's allocations (tracemalloc) and write a snapshot there at each SIGUSR1 (the soak's
# --tracemalloc compares them to find what grows). Slow: for measuring, never for serving.
TRACE_DIR = os.environ.get("GPT2_EXPLORER_TRACEMALLOC", "")


_configured = False


def configure() -> None:
    """Process-wide allocator settings: call before the server's threads start (explorer/cli.py does, and
    importing explorer.app); once per process, later calls do nothing."""
    global _configured
    if _configured:
        return
    _configured = True
    native.retain_freed_memory()
    if ARENAS > 0:
        native.limit_arenas(ARENAS)
    if TRACE_DIR and threading.current_thread() is threading.main_thread():
        _trace_on_signal(TRACE_DIR)


def _trace_on_signal(folder: str) -> None:
    import tracemalloc
    tracemalloc.start(12)
    taken = [0]

    def snapshot(signum, frame):
        import gc
        gc.collect()
        taken[0] += 1
        tracemalloc.take_snapshot().dump(os.path.join(folder, f"snapshot-{taken[0]}.tracemalloc"))
        with open(os.path.join(folder, f"snapshot-{taken[0]}.done"), "w") as f:
            f.write(str(tracemalloc.get_traced_memory()))

    signal.signal(signal.SIGUSR1, snapshot)


def _trim_forever(stop: threading.Event) -> None:
    while not stop.wait(TRIM_EVERY_S):
        native.trim_freed_memory()


_stop = threading.Event()


def start_trimming() -> None:
    """Start the trimming thread once per process (a daemon: it ends with the process)."""
    global _trimmer
    if TRIM_EVERY_S <= 0:
        return
    with _lock:
        if _trimmer is None or not _trimmer.is_alive():
            _trimmer = threading.Thread(target=_trim_forever, args=(_stop,), name="memory-trim", daemon=True)
            _trimmer.start()
