"""Gradio inputs whose server-side checks give plain messages that name the control.

Gradio's own Slider/Number checks say "Value 3 is greater than maximum value 2." without saying
which control, and a string or None sent through the API fails with a generic error. These
subclasses (templates, so the browser draws the usual slider/number) check type, finiteness and
range first and raise a gr.Error naming the control by its label.
"""
from __future__ import annotations

import functools

import gradio as gr

from .inputs import InputError, check_number


def _checked(component, payload):
    try:
        value = check_number(payload, component.label or "This value", component.minimum, component.maximum)
    except InputError as e:
        raise gr.Error(str(e), print_exception=False) from None
    return gr.Number.round_to_precision(value, component.precision)


class Slider(gr.Slider):
    is_template = True

    def preprocess(self, payload):
        return _checked(self, payload)


class Number(gr.Number):
    is_template = True

    def preprocess(self, payload):
        return _checked(self, payload)


class OptionalNumber(Number):
    """A Number that may be left empty (None): what a file can tell instead, say."""
    is_template = True

    def preprocess(self, payload):
        return None if payload is None else _checked(self, payload)


class _NamedValidation:
    """Stands in for a component's pydantic data model: gradio validates API payloads with it before any
    app code runs, and a malformed one would reach the caller as pydantic's raw dump. This one raises a
    gr.Error naming the control instead; everything else is the real model's."""

    def __init__(self, model, label: str):
        self._model, self._label = model, label

    def __getattr__(self, name):
        return getattr(self._model, name)

    def model_validate(self, obj, *args, **kwargs):
        from pydantic import ValidationError
        try:
            return self._model.model_validate(obj, *args, **kwargs)
        except ValidationError:
            raise gr.Error(f"{self._label} must be a file uploaded to this app (in the API: "
                           f"gradio_client.handle_file(path)), got {type(obj).__name__}.",
                           print_exception=False) from None


class File(gr.File):
    is_template = True

    # gradio sends the page the attributes its __init__ names (Block.get_config reads the signature): wraps
    # gives this one gr.File's, so the label, elem_id and file types reach the page.
    @functools.wraps(gr.File.__init__)
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.data_model = _NamedValidation(self.data_model, self.label or "The file")
