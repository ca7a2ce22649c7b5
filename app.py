"""GPT-2 Explorer: python app.py [--weights PATH|gpt2] [--download gpt2] [--device auto|cpu|cuda]
[--dtype fp32|bf16|fp16|int8] [--port N] [--share]

The Space's app_file and the checkout's entry point; the code is explorer/cli.py, which an installed
package runs as ``gpt2-explorer``.
"""
from explorer.cli import DTYPES, HUB_ALIASES, download, main  # noqa: F401 - tests and scripts use app.download, app.DTYPES

if __name__ == "__main__":
    main()
