"""Where a model's tensors live, and its inputs made there.

The views and generation run on whatever device the model's parameters are on (the CPU, or a GPU through
the PyTorch path; the C kernels in gpt2core.kernels.native are CPU-only and step aside by themselves). A model's
inputs are made on its device with ``ids_on``; results are read back with ``.cpu()`` before ``.numpy()``.
"""
from __future__ import annotations

import torch
from torch import nn


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's parameters (all of them are on one)."""
    return next(model.parameters()).device


def ids_on(model: nn.Module, ids) -> torch.Tensor:
    """Token ids (a list, a nested list or a tensor on any device) as a long tensor on the model's device."""
    return torch.as_tensor(ids, dtype=torch.long, device=device_of(model))
