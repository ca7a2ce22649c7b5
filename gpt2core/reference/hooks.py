"""Hook points and per-call capture.

A HookPoint is an identity module placed exactly where a tensor is made. Its name is its module
path (``blocks.3.attn.hook_pattern``). Capture is not done with ``register_forward_hook`` on the
shared modules: those hooks would be global, so a second thread running the same model would
write into the first thread's cache. Instead the active capture lives in a ContextVar, which is
per thread (and per asyncio task). ``run_with_cache`` sets it and always resets it, so nothing
outlives the call, even on error.
"""
from __future__ import annotations

import contextlib
import contextvars
import fnmatch
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

HookFn = Callable[[torch.Tensor, str], "torch.Tensor | None"]


@dataclass
class _Capture:
    wanted: Callable[[str], bool]
    store: dict = field(default_factory=dict)
    hooks: dict = field(default_factory=dict)   # name -> list of functions (tensor, name) -> tensor|None
    detach: bool = True


_ACTIVE: contextvars.ContextVar[_Capture | None] = contextvars.ContextVar("gpt2core_capture", default=None)


class HookPoint(nn.Module):
    """Identity; records or edits its tensor when the current call's capture asks for its name."""

    def __init__(self):
        super().__init__()
        self.name = ""  # filled in by name_hook_points() from the module path

    def wants(self) -> bool:
        cap = _ACTIVE.get()
        return cap is not None and (cap.wanted(self.name) or self.name in cap.hooks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cap = _ACTIVE.get()
        if cap is None:
            return x
        for fn in cap.hooks.get(self.name, ()):
            out = fn(x, self.name)
            if out is not None:
                x = out
        if cap.wanted(self.name):
            cap.store[self.name] = x.detach() if cap.detach and x.requires_grad else x
        return x


def name_hook_points(root: nn.Module) -> list[str]:
    names = []
    for path, module in root.named_modules():
        if isinstance(module, HookPoint):
            module.name = path
            names.append(path)
    return names


def _make_filter(names) -> Callable[[str], bool]:
    """None: everything. A callable: used as is. A string or list: exact names or glob patterns."""
    if names is None:
        return lambda _n: True
    if callable(names):
        return names
    if isinstance(names, str):
        names = [names]
    names = list(names)
    exact = {n for n in names if not any(c in n for c in "*?[")}
    patterns = [n for n in names if n not in exact]
    return lambda n: n in exact or any(fnmatch.fnmatchcase(n, p) for p in patterns)


class ActivationCache(dict):
    """name -> tensor, with a few conveniences for per-layer lookups."""

    def stack(self, pattern: str, n_layer: int) -> torch.Tensor:
        """Stack ``pattern.format(i)`` for i in range(n_layer) along a new first axis."""
        return torch.stack([self[pattern.format(i)] for i in range(n_layer)])


@contextlib.contextmanager
def capture(names=None, hooks: dict[str, HookFn | Iterable[HookFn]] | None = None,
            detach: bool = True) -> Iterator[ActivationCache]:
    """Within the block, hook points record into the yielded cache (this thread/task only)."""
    normalized = {}
    for name, fns in (hooks or {}).items():
        normalized[name] = [fns] if callable(fns) else list(fns)
    cache = ActivationCache()
    cap = _Capture(wanted=_make_filter(names), store=cache, hooks=normalized, detach=detach)
    token = _ACTIVE.set(cap)
    try:
        yield cache
    finally:
        _ACTIVE.reset(token)


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """Within the block, no capture is active: hook points record nothing and call no hook function
    (the backend times its kernels this way, in the middle of a captured forward)."""
    token = _ACTIVE.set(None)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def capture_active() -> bool:
    return _ACTIVE.get() is not None


def recorded(points: tuple[HookPoint, ...]) -> list[bool] | None:
    """For a module that makes the tensors of several hook points in one native call: which of them
    this call's capture records (all False without a capture), or None if a hook function may edit
    one of them, so that the module must make them one by one, each passing through its hook point."""
    cap = _ACTIVE.get()
    if cap is None:
        return [False] * len(points)
    if cap.hooks and any(p.name in cap.hooks for p in points):
        return None
    return [cap.wanted(p.name) for p in points]
