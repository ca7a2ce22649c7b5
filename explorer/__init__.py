"""The GPT-2 Explorer web app (Gradio). Reads gpt2core; gpt2core never reads this package."""
from .app import build_app
from .session import build_registry

__all__ = ["build_app", "build_registry"]
