"""Gradio inputs whose server-side checks give plain messages that name the control.

Gradio's own Slider/Number checks say "Value 3 is greater than maximum value 2." without saying
which control, and a string or None sent through the API fails with a generic error. These
subclasses (templates, so the browser draws the usual slider/number) check type, finiteness and
range first and raise a gr.Error naming the control by its label.
"""
from __future__ import annotations

import math

import gradio as gr


def _checked(component, payload):
    name = component.label or "This value"
    if isinstance(payload, str):
        try:
            payload = float(payload)
        except ValueError:
            raise gr.Error(f"{name} must be a number, got {payload!r}.", print_exception=False) from None
    if isinstance(payload, bool) or not isinstance(payload, (int, float)):
        got = "nothing" if payload is None else type(payload).__name__
        raise gr.Error(f"{name} must be a number, got {got}.", print_exception=False)
    if not math.isfinite(payload):
        raise gr.Error(f"{name} must be a finite number, got {payload}.", print_exception=False)
    lo, hi = component.minimum, component.maximum
    if (lo is not None and payload < lo) or (hi is not None and payload > hi):
        allowed = (f"between {lo:g} and {hi:g}" if lo is not None and hi is not None
                   else f"at least {lo:g}" if lo is not None else f"at most {hi:g}")
        raise gr.Error(f"{name} must be {allowed}, got {payload:g}.", print_exception=False)
    return gr.Number.round_to_precision(payload, component.precision)


class Slider(gr.Slider):
    is_template = True

    def preprocess(self, payload):
        return _checked(self, payload)


class Number(gr.Number):
    is_template = True

    def preprocess(self, payload):
        return _checked(self, payload)
