"""Compute for the views: a model and a prompt in, small arrays out. No gradio, no plotly.

The model may be on any device (the CPU, or a GPU through the PyTorch path): its inputs are made on it
(gpt2core.reference.devices.ids_on) and its outputs come back through ``to_numpy``."""
from __future__ import annotations

import numpy as np
import torch

from gpt2core.reference.devices import device_of, ids_on

__all__ = ["device_of", "ids_on", "to_numpy"]


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor from any device as a numpy array (copied to the CPU when it is elsewhere)."""
    return t.detach().cpu().numpy()
