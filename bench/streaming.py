"""Streamed generation through the app against the raw decode: python -m bench.streaming [--runs N]
                                                                              [--model gpt2|bundled]

The app is built and launched in this process (as bench endpoints does) and its /generate endpoint is
called through gradio_client, the way the browser streams it; gpt2core.decoding.generate decodes the same prompt
with the same settings on the same model, run by run in turn with the app. Greedy (temperature 0), so both
make the same tokens. Reported: tokens/s of each (median of N), the app's as the user sees it (from the
request to its last update, on the client) and as gradio's own durations add up (server time, summed over
the stream's updates), how many updates the stream sent, the ratio, and the target (app >= 80% of raw).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # as the app (explorer/__init__.py), before torch starts
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

PROMPT = "The history of the city begins with a small settlement on the river, where"
NEW_TOKENS = 64
TARGET = 0.8


def _registry(model: str):
    from explorer.session import ModelEntry, build_registry
    from gpt2core import GPT2
    registry = build_registry()
    if model == "gpt2":
        torch.manual_seed(0)
        registry.add(ModelEntry("gpt2 124M (random weights)", GPT2.from_preset("gpt2", dropout=0.0),
                                "random initialisation", trained=False), default=True)
    return registry


def bench_streaming(runs: int, model: str = "gpt2", new_tokens: int = NEW_TOKENS) -> list[str]:
    """App stream tokens/s against gpt2core.decoding.generate's, measured in one process; the printed lines."""
    from gradio_client import Client

    from bench.__main__ import free_port
    from explorer import build_app
    from explorer.inputs import prepare_prompt
    from gpt2core import generate

    registry = _registry(model)
    entry = registry.get(registry.default)
    ids = prepare_prompt(PROMPT).ids
    demo = build_app(registry)
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False, ssl_verify=False)
        fn = next(f for f in demo.fns.values() if f.api_name == "generate")
        # prompt, temperature 0 (greedy: the seed does not matter), top-k off, top-p off, tokens, seed, model
        args = (PROMPT, 0.0, 0, 1.0, new_tokens, 0, registry.default)

        def raw():
            t = time.perf_counter()
            out = generate(entry.model, ids, new_tokens, temperature=0.0)
            return time.perf_counter() - t, len(out)

        def app():
            fn.total_runtime, fn.total_runs = 0.0, 0
            t = time.perf_counter()
            job = client.submit(*args, api_name="/generate")
            job.result()
            wall = time.perf_counter() - t
            outputs = job.outputs()
            markup = outputs[-1][1]
            return wall, fn.total_runtime, markup.count('<span style="background:'), len(outputs)

        raw(), app()                                   # warm-up: kernels, the first request
        raw_t, app_t, server_t, n_updates = [], [], [], []
        n_raw = n_app = None
        for _ in range(runs):
            t, n_raw = raw()
            raw_t.append(t)
            wall, server, n_app, updates = app()
            app_t.append(wall)
            server_t.append(server)
            n_updates.append(updates)
        if n_app != n_raw:
            return [f"streaming: the app made {n_app} tokens and the raw decode {n_raw}: not comparable"]
        raw_tps = n_raw / statistics.median(raw_t)
        app_tps = n_app / statistics.median(app_t)
        server_tps = n_app / statistics.median(server_t)
        ratio = app_tps / raw_tps
        return [
            f"streaming, model '{registry.default}', {len(ids)}-token prompt, {n_raw} new tokens (greedy), "
            f"median of {runs}:",
            f"  raw decode (gpt2core.decoding.generate): {raw_tps:.1f} tok/s ({statistics.median(raw_t) / n_raw * 1e3:.1f} "
            f"ms per token, prefill included)",
            f"  app /generate through gradio_client: {app_tps:.1f} tok/s on the client, request to last update "
            f"({statistics.median(app_t) / n_app * 1e3:.1f} ms per token); {server_tps:.1f} tok/s by gradio's "
            f"summed durations; {statistics.median(n_updates):.0f} updates for {n_app} tokens",
            f"  app / raw: {ratio:.0%} of the raw decode's tokens/s (target >= {TARGET:.0%})  "
            f"[{'ok' if ratio >= TARGET else 'under target'}]",
        ]
    finally:
        demo.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.streaming", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--model", choices=["gpt2", "bundled"], default="gpt2",
                    help="GPT-2 124M with random weights (default), or the bundled model")
    ap.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    args = ap.parse_args(argv)
    for line in bench_streaming(args.runs, args.model, args.new_tokens):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
