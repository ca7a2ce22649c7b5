"""The app's command line: ``gpt2-explorer`` (installed) or ``python app.py`` (a checkout, the Space).

gpt2-explorer [--weights PATH|gpt2 [--config cfg.json | --n-head N]] [--download gpt2] [--device auto|cpu|cuda] [--dtype fp32|bf16|fp16|int8]
              [--port N] [--host H] [--share]
"""
from __future__ import annotations

import argparse
import os
import sys

HUB_ALIASES = ("gpt2", "openai-community/gpt2")
# argparse's choices; a test checks them against gpt2core.kernels.backend.PRECISIONS.
DTYPES = ("fp32", "bf16", "fp16", "int8")


def download(name: str) -> int:
    """``--download gpt2``: put GPT-2 into the local Hugging Face cache (a progress bar), then exit."""
    from gpt2core import WeightsError
    from gpt2core.reference import weights

    if name not in HUB_ALIASES:
        print(f"--download: only 'gpt2' (openai-community/gpt2) can be downloaded, got {name!r}", file=sys.stderr)
        return 2
    repo = HUB_ALIASES[1]
    cached = weights.cached_hf(repo)
    if cached is not None:
        print(f"{repo} is already in the local Hugging Face cache: {cached}")
        return 0
    try:
        folder = weights.download_hf(repo)   # hf_hub_download draws its own progress bar
    except WeightsError as e:
        print(f"--download {name}: {e}", file=sys.stderr)
        return 1
    size_mb = sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) / 1e6
    print(f"{repo}: {size_mb:,.0f} MB in the local Hugging Face cache ({folder}). "
          f"`--weights gpt2` now loads it with no network.")
    return 0


def main(argv: list[str] | None = None) -> None:
    from . import startup

    # Start-up makes some 600,000 objects, most of them as long-lived as the server: the cyclic GC walked them
    # again and again (0.8 s of a 4.4 s start on an AMD EPYC). It waits until the server is up, then they are
    # frozen out of it (startup.py).
    startup.hold_gc()
    ap = argparse.ArgumentParser(description="GPT-2 Explorer: see how GPT-2 works, in the browser.")
    ap.add_argument("--weights", help="a local checkpoint: a folder (HF or gpt2core format), a model.pth / "
                                      "ckpt.pt of LLMs-from-scratch, nanoGPT or minGPT, or 'gpt2' for "
                                      "OpenAI's GPT-2: from the local Hugging Face cache, else the Hub")
    ap.add_argument("--config", help="with --weights model.pth: the JSON config the model was built with (e.g. "
                                     "the notebook's GPT_CONFIG_124M), when the file doesn't hold one")
    ap.add_argument("--n-head", type=int, help="with --weights model.pth: the number of attention heads, when "
                                               "neither the file nor a config says")
    ap.add_argument("--download", metavar="gpt2", help="download GPT-2 into the local Hugging Face cache "
                                                       "(with a progress bar) and exit")
    ap.add_argument("--device", default=os.environ.get("GPT2_EXPLORER_DEVICE", "auto"),
                    choices=["auto", "cpu", "cuda"],
                    help="where the models run: auto (CUDA when there is one), cpu or cuda; "
                         "default $GPT2_EXPLORER_DEVICE or auto")
    ap.add_argument("--dtype", default=os.environ.get("GPT2_EXPLORER_DTYPE", "fp32"), choices=DTYPES,
                    help="the number format of the served models' matrix products: fp32 (exact, the default), "
                         "bf16 (faster where the CPU has bf16 matrix units), fp16, or int8 (dynamic "
                         "quantisation); LayerNorm, softmax, GELU and the residual stream stay fp32, and the "
                         "error against fp32 is shown under the model status. Default $GPT2_EXPLORER_DTYPE or fp32")
    ap.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    ap.add_argument("--share", action="store_true", help="make a public gradio.live link")
    args = ap.parse_args(argv)
    if args.download:
        sys.exit(download(args.download))

    if args.dtype not in DTYPES:          # argparse checks a typed value, not a default from the environment
        ap.error(f"--dtype (or $GPT2_EXPLORER_DTYPE) must be one of {', '.join(DTYPES)}, got {args.dtype!r}")

    import threading

    from . import memory

    # Requests reuse freed activation memory instead of faulting in fresh pages each time, in a bounded number
    # of malloc arenas (explorer.memory; the app trims the freed pages every few seconds). Before any thread.
    memory.configure()
    startup.mark("import torch, gpt2core")
    # A plain message and exit status 2 before anything else loads (gradio, the models).
    from gpt2core.training.train import resolve_device
    try:
        device = resolve_device(args.device)   # the models, the views and generation run there
    except ValueError as e:
        ap.error(str(e))
    if args.dtype == "int8" and device.type != "cpu":
        ap.error(f"--dtype int8: PyTorch's dynamic quantisation runs on the CPU only, not on {device}")
    import gradio  # noqa: F401

    startup.mark("import gradio")
    from gpt2core.kernels import native

    from . import build_app, build_registry
    from .app import CSS, SESSIONS_KEPT

    startup.mark("import explorer")

    # The C kernels build on first use (about 2 s, then cached): build them while the model loads.
    threading.Thread(target=native.library, name="native-build", daemon=True).start()

    def progress(fraction, message):
        print(f"[{fraction:4.0%}] {message}", flush=True)

    startup.mark("arguments, device")
    # GPT-2 that must be downloaded comes in a background thread: the page serves at once.
    registry = build_registry(args.weights, progress=progress, device=device, background_download=True,
                              precision=args.dtype, config=args.config, n_head=args.n_head)
    startup.mark("models")
    if registry.startup_notice:
        print(registry.startup_notice, flush=True)
    if registry.hub_download is not None:
        print("GPT-2 is not in the local cache: downloading it in the background; the page serves "
              f"{registry.default} until it is ready", flush=True)
    print(f"serving model: {registry.default} on {device}, matrix products in {args.dtype}", flush=True)
    if args.dtype == "bf16" and device.type == "cpu":
        from gpt2core.kernels import backend
        print(f"bf16: {backend.bf16_units()[1]}", flush=True)
    demo = build_app(registry)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, css=CSS, show_error=True,
                state_session_capacity=SESSIONS_KEPT, prevent_thread_lock=True)
    startup.mark("launch")           # the server answers from here on
    startup.release_gc()
    demo.block_thread()              # what launch() does in a script: serve until interrupted


if __name__ == "__main__":
    main()
