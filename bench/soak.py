"""A lecture hall in a box: python -m bench.soak [--clients 12] [--minutes 10] [--warmup 2] [--model bundled|gpt2]

Starts the app as its own process (``python app.py``, so the memory read is the server's alone) on a free
loopback port, then N gradio_client users call the view endpoints at random, each waiting for its answer
before the next call, for a warm-up round and then M minutes. Every minute it prints the server's resident
memory (VmRSS of the process); at the end, each endpoint's latency as the users saw it (median, p95, max,
from the call to its last result, queueing included), the calls and the errors. ``--model gpt2`` serves
GPT-2 124M with random weights (written to a temporary folder first), the size a Space serves.

Only loopback is contacted; the loop stops by itself after warm-up + M minutes.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Training and model-making endpoints are left out: a user trains once, not a call a second. /generate stays in
# (long work that must not starve the cheap views), at 20 new tokens.
SKIP = {"/train", "/train_use", "/train_instruct", "/classify_train", "/select_model", "/lambda"}
LONG = {"/generate", "/generate_beam", "/generate_compare", "/why_scan", "/precision_view", "/circuits_patch", "/train",
        "/train_instruct", "/classify_train"}
LAST_POSITION = {"position_v", "query_v"}


def _has_a_token(out) -> bool:
    """A /generate update that shows a generated token (its first update is only "generating…")."""
    html = out[1] if isinstance(out, (list, tuple)) and len(out) > 1 else ""
    return isinstance(html, str) and ("generating…" not in html or re.search(r"generating… \d", html) is not None)


# generators -> which of their updates counts: the time to it is reported as "<name> first token"
STREAMED = {"/generate": _has_a_token}
FIRST = " first token"
PROMPTS = ["To be, or not to be, that is the question:", "ROMEO. Romeo and Juliet.\nROMEO. Romeo and",
           "My lord, my lord, my lord, my", "KING HENRY.\nNow, lords, to France; and let us all be gone.",
           "The cat sat on the mat because it was tired, and then the cat slept on the mat all day long."]


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc (MiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def heap_mib(pid: int) -> tuple[float, float]:
    """(resident MiB of malloc's main heap, of the other anonymous mappings: thread arenas, pymalloc, torch),
    from /proc/<pid>/smaps."""
    heap = anon = 0
    name = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        first = line.split(maxsplit=6)
        if "-" in first[0] and len(first) >= 5 and not first[0].endswith(":"):
            name = first[5] if len(first) > 5 else ""
        elif line.startswith("Rss:"):
            kb = int(first[1])
            if name == "[heap]":
                heap += kb
            elif name == "":
                anon += kb
    return heap / 1024, anon / 1024


def start_app(port: int, weights: str | None, extra_env: dict[str, str]) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--host", "127.0.0.1"]
    if weights:
        cmd += ["--weights", weights]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **extra_env}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_up(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    import urllib.request
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited: {proc.stderr.read()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).read(100)
            return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"the app did not answer at {url} within {timeout:.0f} s")


def endpoint_calls(client, model_name: str) -> list[tuple[str, list]]:
    """(api_name, args) for every view endpoint, built from each endpoint's own parameters."""
    from bench.__main__ import endpoint_args
    named = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    calls = []
    for name, spec in sorted(named.items()):
        if name in SKIP:
            continue
        spec = {**spec, "api_name": name}
        for prompt in PROMPTS:
            args = endpoint_args(spec, prompt, model_name)
            # The positions' defaults fit the default prompt; -1 (the last token) fits every prompt.
            args = [-1 if p["parameter_name"] in LAST_POSITION else a for p, a in zip(spec["parameters"], args)]
            if name == "/generate":
                args = [20 if p["parameter_name"] == "n_new" else a for p, a in zip(spec["parameters"], args)]
            if name == "/circuits_patch":
                continue                 # it compares two prompts: its own example pairs, below
            calls.append((name, args))
        if name == "/circuits_patch":
            from explorer.tabs.circuits_tab import PATCH_EXAMPLES
            base = endpoint_args(spec, PROMPTS[0], model_name)
            # the clean and corrupted prompts and the two answers are the endpoint's first four inputs
            calls += [(name, list(pair) + base[len(pair):]) for pair in PATCH_EXAMPLES]
    return calls


def user(url: str, calls, stop: threading.Event, record, seed: int) -> None:
    from gradio_client import Client
    client = Client(url, verbose=False, ssl_verify=False)
    rng = random.Random(seed)
    while not stop.is_set():
        name, args = rng.choice(calls)
        t0 = time.perf_counter()
        try:
            if name in STREAMED:
                # A streamed answer: the time to its first update is what a watching user feels.
                job = client.submit(*args, api_name=name)
                first = None
                for out in job:
                    if first is None and STREAMED[name](out):
                        first = time.perf_counter() - t0
                job.result()
                record(name + FIRST, first if first is not None else time.perf_counter() - t0, None)
            else:
                client.predict(*args, api_name=name)
            record(name, time.perf_counter() - t0, None)
        except Exception as e:  # noqa: BLE001 - counted and reported
            record(name, time.perf_counter() - t0, f"{type(e).__name__}: {str(e)[:100]}")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def _snapshot(proc: subprocess.Popen, folder: str, n: int) -> list[str]:
    """Ask the app for tracemalloc snapshot ``n`` (SIGUSR1, explorer.memory) and wait for it."""
    import signal
    proc.send_signal(signal.SIGUSR1)
    done = Path(folder) / f"snapshot-{n}.done"
    for _ in range(600):
        if done.exists():
            return [f"  tracemalloc snapshot {n}: (traced now, peak) = {done.read_text()} bytes"]
        time.sleep(0.5)
    return [f"  tracemalloc snapshot {n}: none came"]


def _grown(folder: str, top: int = 15) -> list[str]:
    """The Python allocations that grew most between the two snapshots, by where they were made."""
    import tracemalloc
    first = tracemalloc.Snapshot.load(str(Path(folder) / "snapshot-1.tracemalloc"))
    second = tracemalloc.Snapshot.load(str(Path(folder) / "snapshot-2.tracemalloc"))
    lines = ["  Python allocations that grew after the warm-up (tracemalloc, by traceback):"]
    for stat in second.compare_to(first, "traceback")[:top]:
        frames = [f"{Path(f.filename).name}:{f.lineno}" for f in stat.traceback][-5:]
        lines.append(f"    {stat.size_diff / 2**20:+.1f} MiB ({stat.count_diff:+d} blocks): {' < '.join(reversed(frames))}")
    return lines


def soak(clients: int, minutes: float, warmup: float, model: str, extra_env: dict[str, str] | None = None,
         trace: bool = False) -> list[str]:
    from gradio_client import Client

    from bench.__main__ import free_port, machine
    tmp = None
    weights = None
    if model == "gpt2":
        import torch

        from gpt2core import GPT2, save
        torch.manual_seed(0)
        tmp = tempfile.TemporaryDirectory()
        weights = str(Path(tmp.name) / "gpt2-random")
        save(GPT2.from_preset("gpt2", dropout=0.0), weights)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    extra_env = dict(extra_env or {})
    trace_dir = None
    if trace:
        trace_dir = tempfile.mkdtemp(prefix="soak-trace-")
        extra_env["GPT2_EXPLORER_TRACEMALLOC"] = trace_dir
    proc = start_app(port, weights, extra_env)
    lines = [f"soak: {machine()}; model {model}; {clients} clients; warm-up {warmup:g} min, then {minutes:g} min"
             + "".join(f"; {k}={v}" for k, v in extra_env.items())]
    print(lines[0], flush=True)
    try:
        wait_up(url, proc)
        probe = Client(url, verbose=False, ssl_verify=False)
        model_name = probe.view_api(print_info=False, return_format="dict")["named_endpoints"]
        model_name = next(p["parameter_default"] for spec in model_name.values() for p in spec["parameters"]
                          if p["component"] == "Dropdown" and "model" in p["parameter_name"])
        calls = endpoint_calls(probe, model_name)
        results: list[tuple[float, str, float, str | None]] = []
        lock = threading.Lock()
        t_start = time.monotonic()

        def record(name, seconds, error):
            with lock:
                results.append((time.monotonic() - t_start, name, seconds, error))

        stop = threading.Event()
        threads = [threading.Thread(target=user, args=(url, calls, stop, record, i), daemon=True)
                   for i in range(clients)]
        for t in threads:
            t.start()
        total = warmup + minutes
        rss = []
        for minute in range(int(total) + 1):
            elapsed = time.monotonic() - t_start
            time.sleep(max(0.0, minute * 60 - elapsed))
            if trace_dir and minute == int(warmup):
                _snapshot(proc, trace_dir, 1)
            with lock:
                n, errs = len(results), sum(1 for r in results if r[3])
            rss.append(rss_mib(proc.pid))
            heap, anon = heap_mib(proc.pid)
            line = (f"  minute {minute:>3}: RSS {rss[-1]:,.0f} MiB (main heap {heap:,.0f}, other anonymous "
                    f"{anon:,.0f}), {n} calls, {errs} errors")
            lines.append(line)
            print(line, flush=True)
        stop.set()
        for t in threads:
            t.join(timeout=120)
        if trace_dir:
            lines += _snapshot(proc, trace_dir, 2) + _grown(trace_dir)
        # Idle: the trimming thread has given the freed pages back; what is left is held.
        time.sleep(15)
        lines.append(f"  idle 15 s after the last call: RSS {rss_mib(proc.pid):,.0f} MiB "
                     f"(main heap {heap_mib(proc.pid)[0]:,.0f})")
        w = int(warmup)
        base, end = rss[w], rss[-1]
        lines.append(f"  RSS after warm-up {base:,.0f} MiB -> {end:,.0f} MiB after {minutes:g} more minutes: "
                     f"{(end / base - 1) * 100:+.1f}% (target <= +5%)")
        measured = [r for r in results if r[0] >= warmup * 60]
        lines.append("  latency after warm-up, per endpoint (median / p95 / max, s; calls; errors):")
        for name in sorted({r[1] for r in measured}):
            times = [r[2] for r in measured if r[1] == name]
            errors = [r[3] for r in measured if r[1] == name and r[3]]
            tag = " (long work)" if name in LONG else ""
            lines.append(f"    {name}{tag}: {statistics.median(times):.2f} / {pct(times, 0.95):.2f} / {max(times):.2f}; "
                         f"{len(times)}; {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))
        cheap = [r[2] for r in measured if r[1] not in LONG and not r[1].endswith(FIRST)]
        for name in sorted(STREAMED):
            firsts = [r[2] for r in measured if r[1] == name + FIRST]
            if firsts:
                lines.append(f"  {name}: first token shown, p95 {pct(firsts, 0.95):.2f} s over {len(firsts)} calls "
                             f"(target <= 2 s)")
        lines.append(f"  every view but the long ones: p95 {pct(cheap, 0.95):.2f} s over {len(cheap)} calls (target <= 2 s)")
        return lines
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if tmp is not None:
            tmp.cleanup()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=12)
    ap.add_argument("--minutes", type=float, default=10, help="measured minutes after the warm-up")
    ap.add_argument("--warmup", type=float, default=2, help="warm-up minutes (whole minutes)")
    ap.add_argument("--model", choices=["bundled", "gpt2"], default="bundled")
    ap.add_argument("--out", help="also append the results to this markdown file")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="an environment variable for the app's process (e.g. MALLOC_ARENA_MAX=2); repeatable")
    ap.add_argument("--tracemalloc", action="store_true",
                    help="trace the app's Python allocations and list what grew after the warm-up (slows the app)")
    args = ap.parse_args(argv)
    extra_env = dict(item.split("=", 1) for item in args.env)
    lines = soak(args.clients, args.minutes, args.warmup, args.model, extra_env, args.tracemalloc)
    printed = 2 + int(args.warmup + args.minutes)     # the heading and the minute lines went out as they came
    print("\n".join(lines[printed:]))
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write("\n".join(f"- {line}" for line in lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
