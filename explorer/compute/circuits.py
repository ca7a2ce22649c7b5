"""What the Circuits tab shows: the head detector's scores, one head's pattern, the loss on a repeated random
sequence, and an activation-patching sweep between two prompts, as small arrays and sentences. The numbers
come from gpt2core.analysis.circuits; this module checks the input, picks the sequence and names the tokens."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gpt2core import GPT2
from gpt2core.analysis import circuits
from gpt2core.text import tokenizer

from . import to_numpy
from .why import parse_token, quoted, token_text
from ..inputs import InputError, check_number, prepare_prompt

RANDOM, PROMPT = "repeated random tokens", "your prompt"
SOURCES = (RANDOM, PROMPT)
MAX_RANDOM_TOKENS = 60          # 1 + 2 x 60 = 121 tokens: inside the bundled model's 128-token context
MAX_PATCH_TOKENS = 64           # a sweep makes 3 x L x T + L x nh patched runs: bounded in T
TOP_HEADS = 3                   # heads named per type in the summary
WEAK_GAP = 0.5                  # nats: a clean-corrupted metric gap below this is called weak


@dataclass
class DetectorView:
    scores: dict[str, np.ndarray]   # kind -> (L, nh) in [0, 1] (NaN: nothing to score)
    patterns: np.ndarray            # (L, nh, T, T) every head's attention on the sequence
    tokens: list[str]               # (T,) the sequence as printable token text
    ids: list[int]                  # (T,)
    loss: np.ndarray                # (T - 1,) next-token loss at each position (predicting ids[1:])
    repeat_from: int | None         # where the second copy starts (random source), else None
    summary: str


def random_sequence(n_tokens, model: GPT2, seed=0) -> list[int]:
    """[<|endoftext|>] + R + R (a character model: R + R) with R ``n_tokens`` uniform-random ids (seeded: the same on every call)."""
    top = min(MAX_RANDOM_TOKENS, (model.config.n_ctx - 1) // 2)
    n = int(check_number(n_tokens, "Random tokens", 2, top, integer=True))
    seed = int(check_number(seed, "Seed", 0, 2**31 - 1, integer=True))
    return circuits.repeated_random_tokens(n, 1, seed, model.config.vocab_size)[0].tolist()


def best_heads(scores: np.ndarray, k: int = TOP_HEADS) -> list[tuple[int, int, float]]:
    """The k highest-scoring heads as (layer, head, score), NaNs left out."""
    flat = np.where(np.isnan(scores), -np.inf, scores).ravel()
    order = np.argsort(-flat, kind="stable")[:k]
    nh = scores.shape[1]
    return [(int(i // nh), int(i % nh), float(flat[i])) for i in order if np.isfinite(flat[i])]


def detector_sequence(model: GPT2, source: str, text, n_tokens, seed=0) -> tuple[list[int], int | None]:
    """The ids the detector reads (checked), and where the second copy starts (random source; else None)."""
    if source not in SOURCES:
        raise InputError(f"The sequence must be {RANDOM!r} or {PROMPT!r}, got {source!r}.")
    if source == RANDOM:
        ids = random_sequence(n_tokens, model, seed)
        return ids, 1 + (len(ids) - 1) // 2
    ids = prepare_prompt(text, max_tokens=model.config.n_ctx).ids
    if len(ids) < 2:
        raise InputError("The prompt needs at least 2 tokens for a head to look back at anything.")
    return ids, None


def detector_view(model: GPT2, source: str, text, n_tokens, seed=0) -> DetectorView:
    ids, repeat_from = detector_sequence(model, source, text, n_tokens, seed)
    # One pass: every layer's patterns and every position's logits (the loss along the sequence).
    logits, cache = model.run_with_cache(ids, names=[f"blocks.{i}.attn.hook_pattern" for i in range(model.config.n_layer)])
    patterns = cache.stack("blocks.{}.attn.hook_pattern", model.config.n_layer)                   # (L, nh, T, T)
    scores = {k: to_numpy(v) for k, v in circuits.head_scores(patterns, ids).items()}
    loss = to_numpy(torch.nn.functional.cross_entropy(
        logits[:-1].float(), torch.as_tensor(ids[1:], device=logits.device), reduction="none"))
    parts = []
    for kind in circuits.HEAD_TYPES:
        named = ", ".join(f"{l}.{h} ({s:.2f})" for l, h, s in best_heads(scores[kind]))
        parts.append(f"**{circuits.HEAD_TYPE_LABELS[kind]}**: {named or 'nothing to score on this sequence'}")
    where = (f"{(len(ids) - 1) // 2} random tokens, then the same tokens again" if source == RANDOM
             else f"your prompt ({len(ids)} tokens)")
    summary = f"Scored on {where}. The top heads of each type (layer.head, score): " + "; ".join(parts) + "."
    if repeat_from is not None:
        first, second = loss[:repeat_from - 1], loss[repeat_from:]   # leave out the unpredictable first repeat
        summary += (f" The model's loss is **{first.mean():.2f}** nats a token on the first copy and "
                    f"**{second.mean():.2f}** on the second (after its first token): "
                    + ("it copies." if second.mean() < 0.5 * first.mean() else "it barely copies."))
    return DetectorView(scores, to_numpy(patterns), [token_text(i) for i in ids], ids, loss, repeat_from, summary)


@dataclass
class HeadView:
    pattern: np.ndarray             # (T, T) one head's attention on the sequence
    tokens: list[str]               # (T,)
    scores: dict[str, float]        # kind -> that head's score (NaN: nothing to score)


def head_view(model: GPT2, source: str, text, n_tokens, seed, layer: int, head: int) -> HeadView:
    """One head's pattern and scores on the detector's sequence: one pass capturing that layer's patterns alone,
    with no logits but the last position's (the view draws none); the same numbers as detector_view's."""
    ids, _ = detector_sequence(model, source, text, n_tokens, seed)
    name = f"blocks.{layer}.attn.hook_pattern"
    _, cache = model.run_with_cache(ids, names=[name], last_only=True)
    patterns = cache[name]                                                                        # (nh, T, T)
    scores = {k: float(v[head]) for k, v in circuits.head_scores(patterns, ids).items()}
    return HeadView(to_numpy(patterns[head]), [token_text(i) for i in ids], scores)


def parse_head(value, model: GPT2) -> tuple[int, int]:
    """'layer.head' typed or chosen by the user, checked against the model."""
    text = str(value or "").strip()
    try:
        layer, head = (int(p) for p in text.split("."))
    except ValueError:
        raise InputError(f"A head is written layer.head, e.g. 1.3; got {value!r}.") from None
    L, nh = model.config.n_layer, model.config.n_head
    if not (0 <= layer < L and 0 <= head < nh):
        raise InputError(f"Head {text} is not in this model: layers run 0-{L - 1}, heads 0-{nh - 1}.")
    return layer, head


def head_choices(model: GPT2) -> list[str]:
    return [f"{l}.{h}" for l in range(model.config.n_layer) for h in range(model.config.n_head)]


# ---- activation patching --------------------------------------------------------------------------------
@dataclass
class PatchingView:
    scores: dict[str, np.ndarray]   # kind -> (L, T) or (L, nh), 1 = clean, 0 = corrupted
    clean_tokens: list[str]
    corrupt_tokens: list[str]
    answer: int
    wrong: int
    gap: float                      # |clean metric - corrupted metric| in nats: how much the change matters
    summary: str


def _listed(pieces: list[str], most: int = 8) -> str:
    """Token texts joined for a message, the first ``most`` of them (a message must not echo a long input)."""
    return " | ".join(pieces[:most]) + (f" | … {len(pieces) - most} more" if len(pieces) > most else "")


def _answer(text, what: str, V: int) -> int | None:
    """An answer token as typed: exactly one token (several are refused, with their pieces)."""
    token = parse_token(text, what, V)
    if token.notice:
        pieces = tokenizer.encode(tokenizer.clean_text(text))
        shown = repr(text) if len(text) <= 40 else repr(text[:40]) + "…"
        raise InputError(f"The {what} {shown} is {len(pieces)} tokens ("
                         f"{_listed([token_text(i) for i in pieces])}); the metric compares two single tokens. "
                         f"Type one token, e.g. {token_text(pieces[0])!r}, or #id.")
    return token.id


def patch_prompts(model: GPT2, clean_text, corrupt_text) -> tuple[list[int], list[int]]:
    cap = min(MAX_PATCH_TOKENS, model.config.n_ctx)
    clean = prepare_prompt(clean_text, max_tokens=cap, keep="start")
    corrupt = prepare_prompt(corrupt_text, max_tokens=cap, keep="start")
    for name, p in (("clean", clean), ("corrupted", corrupt)):
        if p.notices:
            raise InputError(f"The {name} prompt is longer than the {cap} tokens a patching sweep takes: "
                             f"shorten it.")
    if len(clean.ids) != len(corrupt.ids):
        raise InputError(f"The two prompts must have the same number of tokens, so that each position of one "
                         f"has a partner in the other: the clean prompt has {len(clean.ids)} tokens "
                         f"({_listed(clean.tokens)}), the corrupted one {len(corrupt.ids)} "
                         f"({_listed(corrupt.tokens)}).")
    if clean.ids == corrupt.ids:
        raise InputError("The two prompts are the same tokens: patching one into the other changes nothing. "
                         "Change a word in the corrupted prompt.")
    return clean.ids, corrupt.ids


def patching_view(model: GPT2, clean_text, corrupt_text, answer_text="", wrong_text="",
                  progress=None) -> PatchingView:
    clean, corrupt = patch_prompts(model, clean_text, corrupt_text)
    V = model.config.vocab_size
    answer, wrong = _answer(answer_text, "answer token", V), _answer(wrong_text, "wrong-answer token", V)
    try:
        sweep = circuits.patching_sweep(model, clean, corrupt, answer, wrong, progress=progress)
    except circuits.PatchingError as e:
        raise InputError(f"Patching can't compare these: {e}. Give an answer and a wrong-answer token that the "
                         f"two prompts disagree on.") from None
    scores = {k: to_numpy(v) for k, v in sweep.scores.items()}
    differ = [i for i, (a, b) in enumerate(zip(clean, corrupt)) if a != b]
    res = scores["resid_pre"]
    L, T = res.shape
    # Where the clean information sits at each layer: the position whose patch restores most.
    carriers = [int(np.argmax(res[l])) for l in range(L)]
    moved = next((l for l in range(L) if carriers[l] != carriers[0]), None)
    heads = best_heads(scores["heads"])
    attn_best = np.unravel_index(int(np.argmax(scores["attn_out"])), scores["attn_out"].shape)
    mlp_best = np.unravel_index(int(np.argmax(scores["mlp_out"])), scores["mlp_out"].shape)
    ctoks = [token_text(i) for i in clean]
    summary = (f"Metric: logit({quoted(sweep.answer)}) − logit({quoted(sweep.wrong)}) at the last position: "
               f"**{sweep.clean_diff:+.2f}** on the clean prompt, **{sweep.corrupt_diff:+.2f}** on the corrupted one "
               f"(1 and 0 on the colour scale). The prompts differ at position"
               f"{'s' if len(differ) > 1 else ''} {', '.join(str(i) for i in differ)}. "
               f"In the residual stream the difference is carried at position {carriers[0]} "
               f"(`` {ctoks[carriers[0]]} ``) entering layer 0"
               + (f", and from layer {moved} on at position {carriers[moved]} (`` {ctoks[carriers[moved]]} ``)"
                  if moved is not None else ", at every layer")
               + f". Largest single patches: attention output of layer {attn_best[0]} at position {attn_best[1]} "
               f"({scores['attn_out'][attn_best]:.2f}), MLP output of layer {mlp_best[0]} at position {mlp_best[1]} "
               f"({scores['mlp_out'][mlp_best]:.2f}); heads "
               + ", ".join(f"{l}.{h} ({s:.2f})" for l, h, s in heads) + f". {sweep.n_runs} patched runs.")
    gap = abs(sweep.clean_diff - sweep.corrupt_diff)
    if gap < WEAK_GAP:
        summary += (f" Careful: the changed word moves the metric by only {gap:.2f} nats, so this model barely "
                    f"tells the two prompts apart, and the 0-to-1 scale magnifies small effects.")
    return PatchingView(scores, ctoks, [token_text(i) for i in corrupt], sweep.answer, sweep.wrong, gap, summary)
