"""The GPT-2 Explorer web app (Gradio). Reads gpt2core; gpt2core never reads this package."""
import os

# Offline by design: no usage analytics or version checks from gradio, no Hub calls unless asked.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# A server shares its cores between requests: OpenMP threads that spin while waiting make small
# ops 10x slower under load. Takes effect only if torch has not been imported yet (app.py, tests).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import startup  # noqa: E402  (standard library only: the phase log, GPT2_EXPLORER_STARTUP_LOG=1)

startup.mark("python")       # the interpreter is up and has reached the app

from . import memory  # noqa: E402

# Requests reuse freed activation memory instead of faulting in fresh pages each time, in a bounded number
# of malloc arenas (explorer.memory; the app trims the freed pages every few seconds).
memory.configure()
startup.mark("import torch, gpt2core")

import gradio  # noqa: E402,F401

startup.mark("import gradio")

from .app import build_app  # noqa: E402
from .session import build_registry  # noqa: E402

startup.mark("import explorer")

__all__ = ["build_app", "build_registry"]
