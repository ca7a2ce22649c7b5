"""The GPT-2 Explorer web app (Gradio). Reads gpt2core; gpt2core never reads this package.

``import explorer`` is light: ``build_app`` and ``build_registry`` (and with them torch, gradio and the tabs)
are imported when first asked for, so the command line (explorer/cli.py) answers --help at once and times
each import of its start-up (explorer/startup.py).
"""
import os

# Offline by design: no usage analytics or version checks from gradio, no Hub calls unless asked.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# A server shares its cores between requests: OpenMP threads that spin while waiting make small
# ops 10x slower under load. Takes effect only if torch has not been imported yet (app.py, tests).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import startup  # noqa: E402  (standard library only: the phase log, GPT2_EXPLORER_STARTUP_LOG=1)

startup.mark("python")       # the interpreter is up and has reached the app
# gradio re-derives its components' type stubs as it imports them (ast-parsing their sources) and compiles
# each event's docstring as a Jinja template: 60% of `import gradio`, which a server has no use for
# (explorer/startup.py). Before anything imports gradio.
startup.lighten_gradio_import()

__all__ = ["build_app", "build_registry"]


def __getattr__(name: str):
    if name == "build_app":
        from .app import build_app
        return build_app
    if name == "build_registry":
        from .session import build_registry
        return build_registry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
