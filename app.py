"""GPT-2 Explorer: python app.py [--weights PATH|gpt2] [--port N] [--share]"""
from __future__ import annotations

import argparse
import os


def main() -> None:
    ap = argparse.ArgumentParser(description="GPT-2 Explorer: see how GPT-2 works, in the browser.")
    ap.add_argument("--weights", help="a local checkpoint folder (HF or gpt2core format), or 'gpt2' "
                                      "to download OpenAI's GPT-2 from the Hugging Face Hub")
    ap.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    ap.add_argument("--share", action="store_true", help="make a public gradio.live link")
    args = ap.parse_args()

    import threading

    from explorer import build_app, build_registry
    from explorer.app import CSS
    from gpt2core import native

    # The C kernels build on first use (about 2 s, then cached): build them while the model loads.
    threading.Thread(target=native.library, name="native-build", daemon=True).start()

    def progress(fraction, message):
        print(f"[{fraction:4.0%}] {message}", flush=True)

    registry = build_registry(args.weights, progress=progress)
    if registry.startup_notice:
        print(registry.startup_notice, flush=True)
    print(f"serving model: {registry.default}", flush=True)
    build_app(registry).launch(server_name=args.host, server_port=args.port, share=args.share, css=CSS,
                               show_error=True)


if __name__ == "__main__":
    main()
