"""Autoregressive decoding with a KV cache, as a streaming iterator and as a plain call."""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Iterator

import torch

from ..kernels import backend
from ..reference.devices import ids_on
from ..reference.model import GPT2, KVCache
from .sampling import GREEDY_TEMPERATURE, check_settings, distribution, draw, filter_logits
from ..text.tokenizer import eot_id, token_bytes


@dataclass
class Step:
    """One generated token, as the stream yields it."""
    index: int                  # 0 for the first new token
    token_id: int
    token_bytes: bytes
    prob: float                 # probability the model gave it (softmax of the raw logits)
    sampled_prob: float         # probability in the filtered distribution it was drawn from
    alternatives: list[tuple[int, float]] = field(default_factory=list)  # model's top tokens (id, prob)
    is_eot: bool = False


def _as_ids(prompt_ids) -> list[int]:
    ids = [int(i) for i in (prompt_ids.tolist() if torch.is_tensor(prompt_ids) else prompt_ids)]
    if not ids:
        raise ValueError("the prompt has no tokens: give at least one")
    return ids


def stream(model: GPT2, prompt_ids, max_new_tokens: int = 50, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
           use_cache: bool = True, stop_at_eot: bool = True, n_alternatives: int = 5) -> Iterator[Step]:
    """Yield each new token as it is made.

    The context is the last ``n_ctx`` tokens. With ``use_cache`` the keys and values of earlier
    tokens are kept; once the window is full every position shifts, so from then on each step
    re-runs the cropped window, exactly as decoding without the cache does. Single-token steps
    against the cache run in C where it is faster (gpt2core.kernels.backend), else through the PyTorch forward.
    """
    eot = eot_id()   # the active tokenizer's end-of-text (None: a character vocabulary has none)
    check_settings(temperature, top_k, top_p)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a whole number >= 0, got {max_new_tokens!r}")
    ids = _as_ids(prompt_ids)
    n_ctx = model.config.n_ctx
    # Per call: the random state belongs to this request alone (never the process-wide generator). It is a
    # CPU generator whatever the model's device: sampling.draw draws on it, so a seed means the same everywhere.
    generator = torch.Generator(device="cpu").manual_seed(int(seed) if seed is not None else secrets.randbits(63))
    param = next(model.parameters())
    cache = KVCache(model.config, 1, dtype=param.dtype, device=param.device) if use_cache else None
    decoder, decided = None, False   # the C decode step, where the backend finds it faster
    fed = 0  # how many of ids are in the KV cache
    for step in range(max_new_tokens):
        # no_grad per step, never around a yield: grad mode is per thread, and a server may resume
        # this generator on another thread, which would then be left with grad disabled.
        with torch.no_grad():
            if cache is not None and len(ids) <= n_ctx:
                if not decided and len(ids) - fed == 1:
                    decoder, decided = backend.decoder(model, cache, ids[-1]), True
                if decoder is not None and len(ids) - fed == 1 and decoder.active():
                    logits = decoder.step(ids[-1])                                    # (V,)
                else:
                    new = torch.tensor([ids[fed:]], dtype=torch.long, device=param.device)   # (1, T_new)
                    logits = model(new, kv_cache=cache, last_only=True)[0, -1]        # (V,)
                fed = len(ids)
            else:
                window = torch.tensor([ids[-n_ctx:]], dtype=torch.long, device=param.device)   # (1, T<=n_ctx)
                logits = model(window, last_only=True)[0, -1]                         # (V,)
            logits = logits.float()
            probs = torch.softmax(logits, -1)
            if temperature < GREEDY_TEMPERATURE and not top_k and (top_p is None or top_p >= 1.0):
                # Greedy with no other filter: the argmax, and the filtered distribution shares its mass
                # equally among the tied maxima; what filtering 50,257 values would give, ~0.7 ms sooner.
                token = int(logits.argmax())
                sampled_prob = 1.0 / int((logits == logits[token]).sum())
            else:
                # Filtered once, for both the draw and the probability reported with it.
                sampled_probs = torch.softmax(filter_logits(logits, temperature, top_k, top_p), -1)
                token = int(draw(logits, sampled_probs, temperature, generator))
                sampled_prob = float(sampled_probs[token])
            top = torch.topk(probs, min(n_alternatives, probs.numel()))
        ids.append(token)
        yield Step(step, token, token_bytes(token), float(probs[token]), sampled_prob,
                   list(zip(top.indices.tolist(), top.values.tolist())), token == eot)
        if stop_at_eot and token == eot:
            return


def generate(model: GPT2, prompt_ids, max_new_tokens: int = 50, **kwargs) -> list[int]:
    """The new token ids (not the prompt); see ``stream`` for the options."""
    return [s.token_id for s in stream(model, prompt_ids, max_new_tokens, n_alternatives=0, **kwargs)]


def next_token_distribution(model: GPT2, prompt_ids, temperature: float = 1.0, top_k: int | None = None,
                            top_p: float | None = None):
    """The next-token distribution after a prompt, at every filter stage (see sampling.distribution).

    The prompt is cropped to its last ``n_ctx`` tokens, as generation would see it.
    """
    ids = _as_ids(prompt_ids)[-model.config.n_ctx:]
    with torch.no_grad():
        logits = model(ids_on(model, [ids]), last_only=True)[0, -1]                      # (V,)
    return distribution(logits, temperature, top_k, top_p)
