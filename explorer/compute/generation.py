"""What the Generate tab shows: new tokens one at a time, with the probability each one had."""
from __future__ import annotations

import codecs
import math
from dataclasses import dataclass, field
from typing import Iterator

from gpt2core import GPT2, stream
from gpt2core.text.tokenizer import printable, token_bytes


@dataclass
class GeneratedToken:
    index: int                  # 0 for the first new token
    id: int
    text: str                   # the characters this token completes ("" if it holds only part of one)
    label: str                  # printable form (␣ for a space), for tooltips and hover text
    prob: float                 # the model's own probability for it
    sampled_prob: float         # its probability after temperature / top-k / top-p
    alternatives: list[tuple[str, float]] = field(default_factory=list)   # model's top tokens (label, prob)
    is_eot: bool = False


def generate_tokens(model: GPT2, ids: list[int], max_new_tokens: int, temperature: float, top_k: int,
                    top_p: float, seed: int, n_alternatives: int = 5) -> Iterator[GeneratedToken]:
    """Stream new tokens; top-k 0 and top-p 1 mean "off". A token's text is the characters it
    completes, so a character split over two tokens shows up once, at the second, and joining
    every ``text`` gives the decoded continuation. Each token is yielded as soon as it is made; when
    the stream ends inside an unfinished character, the last token's ``text`` gets the U+FFFD."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    last = None
    for step in stream(model, ids, max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                       top_k=int(top_k) or None, top_p=None if top_p >= 1 else float(top_p), seed=int(seed),
                       n_alternatives=n_alternatives):
        last = GeneratedToken(
            step.index, step.token_id, decoder.decode(step.token_bytes), printable(step.token_bytes),
            step.prob, step.sampled_prob,
            [(printable(token_bytes(i)), p) for i, p in step.alternatives], step.is_eot)
        yield last
    if last is not None:
        last.text += decoder.decode(b"", final=True)   # dangling bytes of an unfinished character


def continuation_text(tokens: list[GeneratedToken]) -> str:
    return "".join(t.text for t in tokens)


def summary(tokens: list[GeneratedToken]) -> dict:
    """Average probability, perplexity (e to the mean surprise) and the least likely token."""
    if not tokens:
        return {"n": 0}
    probs = [t.prob for t in tokens]
    surprise = [-math.log(max(p, 1e-45)) for p in probs]
    least = min(tokens, key=lambda t: t.prob)
    return {"n": len(tokens), "mean_prob": sum(probs) / len(probs),
            "perplexity": math.exp(sum(surprise) / len(surprise)),
            "least_label": least.label, "least_prob": least.prob, "least_index": least.index}
