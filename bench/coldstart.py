"""Cold start: ``python app.py`` as a new process until GET / answers 200, and where the time went.

python -m bench coldstart          (from bench/__main__.py; median of 3 runs)
python -m bench.coldstart [--runs N] [-- APP ARGS...]

Each run starts the app with GPT2_EXPLORER_STARTUP_LOG=1, polls http://127.0.0.1:PORT/ every 50 ms until it
answers 200, and reads the phase marks the app prints to stderr (explorer/startup.py). A phase's time is
from the end of the mark before it (the first, "python", from the moment the bench started the process).
launch() returns after its own check of the server, so the bench's first 200 can come just before the app's
last mark, "launch"; the summary gives the gap. Only the standard library:
the bench process itself imports nothing heavy.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "[startup] "
TIMEOUT_S = 120
LAST = "launch"      # the app's last mark (explorer/cli.py): launch() has returned


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(app_args: list[str] | None = None) -> dict:
    """One cold start: {"first_200": s, "phases": [(name, s), ...], "tabs": {tab: s}}."""
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", GPT2_EXPLORER_STARTUP_LOG="1")
    marks: list[dict] = []

    def read(stream):
        for line in stream:
            if line.startswith(PREFIX):
                try:
                    marks.append(json.loads(line[len(PREFIX):]))
                except json.JSONDecodeError:
                    pass   # a mark cut by the process's exit is not a phase: the others still count

    cmd = [sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port), *(app_args or [])]
    spawned = time.time()
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    reader = threading.Thread(target=read, args=(proc.stderr,), daemon=True)
    reader.start()
    first_200 = None
    try:
        while time.perf_counter() - t < TIMEOUT_S and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
                    if r.status == 200:
                        first_200 = time.perf_counter() - t
                        answered = time.time()
                        page = r.read().decode("utf-8", "replace")
                        break
            except OSError:
                time.sleep(0.05)
        # The server answers while launch() still checks it: wait for the app's last mark before stopping it.
        deadline = time.perf_counter() + 10
        while first_200 is not None and not any(m["phase"] == LAST for m in marks) and time.perf_counter() < deadline:
            time.sleep(0.02)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(5)
    if first_200 is None:
        raise RuntimeError(f"`{' '.join(cmd)}` gave no HTTP 200 in {TIMEOUT_S} s (exit status {proc.returncode})")
    phases, before, tabs = [], spawned, {}
    for m in marks:
        tabs.update(m.get("tabs", {}))
        phases.append((m["phase"], m["at"] - before))
        before = m["at"]
    # The first 200 is the whole page: gradio puts the page's config, every tab with it, into the HTML.
    shown = sorted(set(re.findall(r'"elem_id":\s*"tab-([A-Za-z0-9_]+)"', page)))
    return {"first_200": first_200, "phases": phases, "tabs": tabs, "page_kb": len(page.encode()) / 1024,
            "page_tabs": shown,
            "200_after_launch": answered - marks[-1]["at"] if marks and marks[-1]["phase"] == LAST else None}


def summarize(runs: list[dict]) -> list[str]:
    times = [r["first_200"] for r in runs]
    lines = [f"cold start `python app.py` to the first HTTP 200: median {statistics.median(times):.2f} s over "
             f"{len(runs)} runs (each: {', '.join(f'{x:.2f}' for x in times)})"]
    shown = runs[0]["page_tabs"]
    same = all(r["page_tabs"] == shown for r in runs)
    lines.append(f"  the first 200 was the whole page: {statistics.median(r['page_kb'] for r in runs):,.0f} KB, the "
                 f"config of {len(shown)} tabs ({', '.join(shown)})" + ("" if same else "; the runs' tabs differ"))
    names = [name for name, _ in runs[0]["phases"]]
    if all([name for name, _ in r["phases"]] == names for r in runs):
        parts = [f"{name} {statistics.median(r['phases'][i][1] for r in runs):.2f}" for i, name in enumerate(names)]
        lines.append("  phases, s (median of the runs; each from the end of the one before, the first from the "
                     "bench starting the process): " + ", ".join(parts))
    else:
        for k, r in enumerate(runs):
            lines.append(f"  phases of run {k + 1}, s: " + ", ".join(f"{n} {s:.2f}" for n, s in r["phases"]))
    gaps = [r["200_after_launch"] for r in runs if r["200_after_launch"] is not None]
    if gaps:
        lines.append(f"  the first 200 came {statistics.median(gaps):+.2f} s after launch() returned (median; "
                     f"launch() checks the server itself before it returns, so the bench's 50 ms polls can "
                     f"answer first)")
    tab_names = list(runs[0]["tabs"])
    if tab_names:
        slow = sorted(tab_names, key=lambda n: -statistics.median(r["tabs"].get(n, 0.0) for r in runs))
        lines.append("  tabs' build, s (median): " + ", ".join(
            f"{n} {statistics.median(r['tabs'].get(n, 0.0) for r in runs):.2f}" for n in slow))
    return lines


def bench_coldstart(runs: int = 3, app_args: list[str] | None = None) -> list[str]:
    return summarize([one_run(app_args) for _ in range(runs)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.coldstart", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("app_args", nargs="*", help="after --: arguments for app.py (say --dtype bf16)")
    args = ap.parse_args(argv)
    for line in bench_coldstart(args.runs, args.app_args):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
