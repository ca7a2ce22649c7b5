"""How likely the model finds each token of a text: log-probabilities, ranks and top alternatives.

Token t (t >= 1) is scored against the model's prediction after tokens 0..t-1. Token 0 has nothing
before it: it is scored only when a ``start_token`` is put in front (GLTR puts GPT-2's <|endoftext|>
there, the token GPT-2's training documents were separated by). A text longer than the context is read in windows of ``window`` tokens,
each starting ``stride`` tokens after the last, and each window scores only the tokens the previous
one did not reach, so every token after the first window is predicted from at least
``window - stride`` tokens before it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..reference.devices import ids_on
from ..reference.model import GPT2


@dataclass
class TokenScores:
    ids: list[int]              # the text's N ids (without the start token)
    first: int                  # the first scored token: 0 with a start token, else 1
    logprobs: np.ndarray        # (N - first,) natural-log probability of each scored token given those before
    ranks: np.ndarray           # (N - first,) 1 = the model's most likely token; ties count in the token's favour
    top_ids: np.ndarray         # (N - first, k) the model's k most likely tokens at each scored position
    top_logprobs: np.ndarray    # (N - first, k)
    window: int                 # tokens per window (the start token included)
    stride: int                 # tokens between window starts (window when there is one window)
    n_windows: int

    @property
    def surprisal_bits(self) -> np.ndarray:
        return -self.logprobs / math.log(2)

    @property
    def perplexity(self) -> float:
        """e to the mean negative log-probability: as unsure as a fair pick among this many tokens."""
        return float(math.exp(-self.logprobs.mean())) if self.logprobs.size else float("nan")

    @property
    def min_context(self) -> int:
        """The fewest tokens any scored token (after the first window) was predicted from."""
        return self.window - self.stride if self.n_windows > 1 else 1


def windows(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, first scored position) of each window over n tokens; together they score 1..n-1 once."""
    out, start, next_target = [], 0, 1
    while True:
        end = min(start + window, n)
        out.append((start, end, next_target))
        if end >= n:
            return out
        next_target, start = end, start + stride


def score_tokens(model: GPT2, ids, window: int | None = None, stride: int | None = None,
                 top_k: int = 5, start_token: int | None = None) -> TokenScores:
    """Score the tokens of ``ids`` (all of them after ``start_token``, else all but the first), one forward
    pass per window (see the module doc)."""
    text_ids = [int(i) for i in ids]
    ids = ([int(start_token)] if start_token is not None else []) + text_ids
    if len(ids) < 2:
        raise ValueError("scoring needs at least two tokens (the first one has nothing before it)")
    window = min(int(window or model.config.n_ctx), model.config.n_ctx)
    if window < 2:
        raise ValueError("a window needs at least two tokens")
    stride = int(stride or max(window // 2, 1))
    if not 1 <= stride <= window - 1:
        raise ValueError(f"stride must be between 1 and window - 1 = {window - 1}")
    spans = windows(len(ids), window, stride)
    logprobs, ranks, top_ids, top_lp = [], [], [], []
    with torch.no_grad():
        for start, end, first in spans:
            logits = model(ids_on(model, [ids[start:end]]))[0].float()
            # The prediction for position j is made at position j - 1. log_softmax = logit - logsumexp,
            # taken only where needed: ranks and the top k need no normalising at all.
            pred = logits[first - 1 - start:end - 1 - start]
            lse = torch.logsumexp(pred, dim=-1, keepdim=True)
            target = ids_on(model, ids[first:end])
            actual = pred.gather(1, target[:, None])
            logprobs.append((actual - lse)[:, 0])
            ranks.append((pred > actual).sum(dim=1) + 1)
            top, ix = pred.topk(min(top_k, pred.shape[-1]), dim=-1)
            top_ids.append(ix)
            top_lp.append(top - lse)
    host = lambda parts: torch.cat(parts).cpu().numpy()                     # noqa: E731 - from the model's device
    return TokenScores(text_ids, 0 if start_token is not None else 1, host(logprobs), host(ranks),
                       host(top_ids), host(top_lp),
                       window, stride if len(spans) > 1 else window, len(spans))
