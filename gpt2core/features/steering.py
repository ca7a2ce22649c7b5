"""Steering: generate while adding c x a direction to the residual stream at one layer.

The direction is a feature's decoder row (an SAE's ``W_dec[i]``), or the difference between two prompts'
residual streams at that layer ("Love" - "Hate": activation addition, Turner et al. 2023, here as the
difference of the two prompts' mean residual vectors, so prompts of different lengths compare). It is added
at ``blocks.{layer}.hook_resid_pre`` (the stream entering block ``layer``) through the editing hooks of this
call alone (gpt2core.reference.hooks: a ContextVar), so one request's steering never reaches another's.

Where: ``"all"`` adds it at every position, the prompt's and each generated token's; ``"prompt"`` only at the
prompt's positions (the generated tokens then read the steered prompt through attention). With ``c = 0`` the
generation is the plain one, token for token and probability for probability.
"""
from __future__ import annotations

from typing import Iterator

import torch

from ..decoding.generate import Step, stream
from ..reference.hooks import capture
from ..reference.model import GPT2

WHERE = ("all", "prompt")


def hook_name(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_pre"


def check(model: GPT2, layer: int, direction: torch.Tensor, coefficient: float, where: str) -> None:
    n_layer, d = model.config.n_layer, model.config.n_embd
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layer:
        raise ValueError(f"layer must be a whole number from 0 to {n_layer - 1}, got {layer!r}")
    if direction.shape != (d,):
        raise ValueError(f"the direction must have the model's width ({d},), got {tuple(direction.shape)}")
    if not torch.isfinite(direction).all():
        raise ValueError("the direction has non-finite values")
    if not isinstance(coefficient, (int, float)) or isinstance(coefficient, bool) \
            or not torch.isfinite(torch.tensor(float(coefficient))):
        raise ValueError(f"the coefficient must be a finite number, got {coefficient!r}")
    if where not in WHERE:
        raise ValueError(f"where must be one of {', '.join(WHERE)}, got {where!r}")


def steering_hooks(model: GPT2, layer: int, direction: torch.Tensor, coefficient: float, where: str = "all",
                   prompt_len: int | None = None) -> dict:
    """{hook name: fn} adding ``coefficient * direction`` to the residual stream entering block ``layer``."""
    direction = torch.as_tensor(direction, dtype=torch.float32)
    check(model, layer, direction, coefficient, where)
    add = (float(coefficient) * direction).to(model.wte.weight.device)                 # (d,)

    def steer(x: torch.Tensor, _name: str) -> torch.Tensor:                            # x (B, T, d)
        if where == "all":
            return x + add
        # "prompt": a forward over more than one token starts at position 0 (the prompt, or a window run
        # anew); a single new token is a generated one and is left as it is.
        if x.shape[1] == 1:
            return x
        n = x.shape[1] if prompt_len is None else min(prompt_len, x.shape[1])
        x = x.clone()
        x[:, :n] += add
        return x

    return {hook_name(layer): steer}


@torch.no_grad()
def prompt_difference(model: GPT2, ids_plus, ids_minus, layer: int) -> torch.Tensor:
    """mean over positions of the residual stream entering ``layer`` for ``ids_plus``, minus the same for
    ``ids_minus``: (d,). The "Love" - "Hate" direction of activation addition."""
    name = hook_name(layer)
    means = []
    for ids in (ids_plus, ids_minus):
        if len(ids) == 0:
            raise ValueError("both prompts need at least one token")
        _, cache = model.run_with_cache(list(ids), names=[name])
        means.append(cache[name].float().mean(0))                                     # (d,)
    return means[0] - means[1]


def steered_stream(model: GPT2, prompt_ids, max_new_tokens: int, layer: int, direction, coefficient: float,
                   where: str = "all", **sampling) -> Iterator[Step]:
    """``gpt2core.stream`` with the direction added: each Step's probabilities are the steered model's."""
    hooks = steering_hooks(model, layer, direction, coefficient, where, prompt_len=len(list(prompt_ids)))
    steps = stream(model, prompt_ids, max_new_tokens, **sampling)
    while True:
        # The hooks hold only while a step computes: never across a yield (the consumer may run other
        # forwards of its own in between, or resume this generator on another thread).
        with capture(names=[], hooks=hooks):
            step = next(steps, None)
        if step is None:
            return
        yield step


def generate_steered(model: GPT2, prompt_ids, max_new_tokens: int, layer: int, direction, coefficient: float,
                     where: str = "all", **sampling) -> list[Step]:
    return list(steered_stream(model, prompt_ids, max_new_tokens, layer, direction, coefficient, where, **sampling))
