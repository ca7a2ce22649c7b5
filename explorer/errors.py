"""Turning exceptions into messages: the UI shows them, gradio_client raises them cleanly."""
from __future__ import annotations

import functools
import inspect
import logging

import gradio as gr

from gpt2core import WeightsError
from gpt2core.text.tokenizer import UnknownCharacters

from .inputs import InputError

log = logging.getLogger("explorer")


def _to_gr_error(e: Exception) -> gr.Error:
    if isinstance(e, gr.Error):
        return e
    if isinstance(e, (InputError, WeightsError, UnknownCharacters)):
        return gr.Error(str(e), print_exception=False)
    log.exception("unexpected error in a handler")
    return gr.Error(f"Something went wrong on the server ({type(e).__name__}: {e}). "
                    "The app is still running; try again or change the input.", print_exception=False)


def handle(fn):
    """Decorate a handler (plain or generator) so every error reaches the user as a message."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - everything becomes a message
                raise _to_gr_error(e) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            raise _to_gr_error(e) from None
    return wrapper
