"""The GPT-2 Explorer web app (Gradio). Reads gpt2core; gpt2core never reads this package."""
import os

# Offline by design: no usage analytics or version checks from gradio, no Hub calls unless asked.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# A server shares its cores between requests: OpenMP threads that spin while waiting make small
# ops 10x slower under load. Takes effect only if torch has not been imported yet (app.py, tests).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from gpt2core import native  # noqa: E402

# Requests reuse freed activation memory instead of faulting in fresh pages each time.
native.retain_freed_memory()

from .app import build_app  # noqa: E402
from .session import build_registry  # noqa: E402

__all__ = ["build_app", "build_registry"]
