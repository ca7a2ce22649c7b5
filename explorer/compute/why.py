"""What the "Why this token?" tab shows: the logit lens, the logit attribution and ablations, as small arrays
and sentences. The numbers come from gpt2core.analysis.lens; this module picks positions and tokens and names them."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from gpt2core import GPT2
from gpt2core.analysis import lens
from gpt2core.text import tokenizer

from . import ids_on, to_numpy
from ..inputs import InputError

_ID = re.compile(r"^#(\d+)$")


def token_text(token_id: int) -> str:
    """A token as printable text (␣ for a space, ⏎ for a newline)."""
    return tokenizer.printable(tokenizer.token_bytes(int(token_id)))


def quoted(token_id: int) -> str:
    """A token in a sentence of markdown: double backticks, since a token may hold a backtick."""
    return f"`` {token_text(token_id)} ``"


@dataclass
class Token:
    id: int | None       # None: not given
    notice: str = ""     # what was done with text that is more than one token


def parse_token(text, what: str, vocab_size: int) -> Token:
    """A token typed by the user: its text (the first token of it, with a notice) or #id. Empty: not given."""
    if text is None or text == "":
        return Token(None)
    if not isinstance(text, str):
        raise InputError(f"The {what} must be text, got {type(text).__name__}.")
    match = _ID.match(text.strip())
    if match:
        token_id = int(match[1])
        if token_id >= vocab_size:
            raise InputError(f"The {what} #{token_id} is not a token id: they run from 0 to {vocab_size - 1:,}.")
        return Token(token_id)
    ids = tokenizer.encode(tokenizer.clean_text(text))
    if not ids:
        raise InputError(f"The {what} {text!r} has no tokens.")
    if ids[0] >= vocab_size:
        raise InputError(f"The {what} {text!r} is not in this model's vocabulary of {vocab_size:,} tokens.")
    if len(ids) == 1:
        return Token(ids[0])
    pieces = " | ".join(token_text(i) for i in ids)
    return Token(ids[0], f"The {what} {text!r} is {len(ids)} tokens ({pieces}); the first, "
                         f"{quoted(ids[0])}, is used. A leading space is part of a token: ' Paris' is not 'Paris'.")


# ---- logit lens --------------------------------------------------------------------------------------
# The lens is drawn for this many positions, ending at the chosen one. Every stage of every position of a
# 128-token prompt on GPT-2 124M is 3,200 rows through the 50,257-token unembedding (about 2 s on the project's
# two AMD EPYC cores), and a heatmap of 128 columns has no room for its text. 6 is the widest window that kept
# /why_lens under 300 ms of server time there at 128 tokens: the forward is ~170 ms of it, and each position
# shown adds ~14 ms (25 rows of the unembedding, their softmax and ranks); at 7 and 8 the median was ~300-330 ms.
LENS_WINDOW = 6


def lens_window(position: int, window: int | None = None) -> list[int]:
    """The ``window`` (default LENS_WINDOW) positions ending at ``position``, fewer near the prompt's start."""
    window = LENS_WINDOW if window is None else window
    return list(range(max(0, position - window + 1), position + 1))


@dataclass
class LensView:
    stages: list[str]              # (S,) row labels, first stage first
    positions: list[int]           # (T,) the prompt positions shown: the window ending at ``position``
    tokens: list[str]              # (T,) their tokens as text
    top_text: list[list[str]]      # (S, T) each cell's top-1 token as text
    top_prob: np.ndarray           # (S, T) its probability
    hover: list[list[str]]         # (S, T) top 5 with probabilities, and the final token's rank
    position: int
    series: dict[str, tuple[np.ndarray, np.ndarray]]   # line name -> ((S,) probability, (S,) rank) at position
    summary: str


def _first_stage(ranks: np.ndarray, within: int) -> int | None:
    """The first stage from which on the token stays within the top ``within``, or None."""
    inside = ranks <= within
    if not inside[-1]:
        return None
    outside = np.flatnonzero(~inside)
    return int(outside[-1]) + 1 if outside.size else 0


def lens_view(model: GPT2, ids: list[int], position: int, target: int | None,
              window: int | None = None) -> LensView:
    """The lens over the ``window`` (default LENS_WINDOW) positions ending at ``position``; the forward still
    reads the whole context before them."""
    positions = lens_window(position, window)
    result = lens.logit_lens(model, ids, k=5, track=[target] if target is not None else [], positions=positions)
    S, T, _ = result.top_ids.shape
    col = T - 1                                                    # the chosen position is the window's last
    top_ids, top_probs = to_numpy(result.top_ids), to_numpy(result.top_probs)
    ranks = to_numpy(result.final_ranks)
    names = {int(i): token_text(int(i)) for i in np.unique(top_ids)}
    top_text = [[names[int(top_ids[s, t, 0])] for t in range(T)] for s in range(S)]
    hover = [["<br>".join(f"{names[int(i)]}  {p:.1%}" for i, p in zip(top_ids[s, t], top_probs[s, t]))
              + f"<br>model's final pick {token_text(int(result.final_ids[t]))}: rank {int(ranks[s, t]):,}"
              for t in range(T)] for s in range(S)]
    final = int(result.final_ids[col])
    series = {f"final prediction {token_text(final)}": (to_numpy(result.final_probs[:, col]), ranks[:, col])}
    if target is not None and target != final:
        t_ranks, t_probs = result.tracked[target]
        series[f"target {token_text(target)}"] = (to_numpy(t_probs[:, col]), to_numpy(t_ranks[:, col]))
    stages = result.stages
    first_top = _first_stage(ranks[:, col], 1)
    first_top5 = _first_stage(ranks[:, col], 5)
    words = [f"At position {position} ({quoted(ids[position])}) the model predicts {quoted(final)} with "
             f"{float(result.final_probs[-1, col]):.1%}."]
    if first_top is not None:
        words.append(f"The lens puts it on top from stage **{stages[first_top]}** on"
                     + (f" (in the top 5 from {stages[first_top5]})." if first_top5 != first_top else "."))
    if target is not None and target != final:
        t_ranks = to_numpy(result.tracked[target][0][:, col])
        words.append(f"Your target {quoted(target)} ends at rank {int(t_ranks[-1]):,} "
                     f"(best: rank {int(t_ranks.min()):,}, at {stages[int(t_ranks.argmin())]}).")
    n_settled = int((ranks == 1).all(axis=0).sum())
    shown = (f"the {T} positions shown ({positions[0]}–{positions[-1]})" if T > 1
             else f"the 1 position shown ({positions[0]})")
    words.append(f"Across {shown}, {int((ranks[-2] == 1).sum())} of {T} already "
                 f"{'has' if T == 1 else 'have'} the final pick on top one stage before the end; {n_settled} "
                 f"{'has' if n_settled == 1 else 'have'} it on top at every stage.")
    return LensView(stages=stages, positions=positions, tokens=[token_text(ids[p]) for p in positions],
                    top_text=top_text, top_prob=top_probs[:, :, 0], hover=hover, position=position, series=series,
                    summary=" ".join(words))


# ---- attribution -------------------------------------------------------------------------------------
@dataclass
class AttributionView:
    heads: np.ndarray              # (L, nh)
    attn: np.ndarray               # (L,) heads + bias
    attn_bias: np.ndarray          # (L,)
    mlp: np.ndarray                # (L,)
    embed: float
    pos_embed: float
    ln_f_bias: float
    logit: float
    total: float
    title: str                     # what is decomposed, in words
    summary: str


def _signed(x: float) -> str:
    return f"{x:+.2f}"


def attribution_view(model: GPT2, ids: list[int], position: int, target: int | None,
                     contrast: int | None) -> AttributionView:
    if contrast is not None and contrast == target:
        raise InputError("The contrast token is the target itself: their logit difference is 0. Choose another.")
    a = lens.attribute(model, ids, target=target, contrast=contrast, position=position)
    if contrast is not None and contrast == a.target:
        raise InputError(f"The contrast token {token_text(contrast)} is the model's own top prediction, which is "
                         "the default target: give a target, or another contrast.")
    what = (f"logit({token_text(a.target)}) − logit({token_text(contrast)})" if contrast is not None
            else f"logit({token_text(a.target)})")
    heads = to_numpy(a.heads)
    order = np.argsort(heads, axis=None)
    L, nh = heads.shape
    name = lambda i: f"{i // nh}.{i % nh}"                                      # noqa: E731
    pushers = ", ".join(f"{name(i)} ({_signed(heads.flat[i])})" for i in order[::-1][:3] if heads.flat[i] > 0)
    pullers = ", ".join(f"{name(i)} ({_signed(heads.flat[i])})" for i in order[:3] if heads.flat[i] < 0)
    mlp = to_numpy(a.mlp)
    big_mlp = int(np.abs(mlp).argmax())
    summary = (f"At position {a.position} ({quoted(ids[a.position])}): {what} = **{a.logit:.3f}**. The parts add up to "
               f"{a.total():.3f} (token embedding {_signed(a.embed)}, position embedding {_signed(a.pos_embed)}, "
               f"ln_f bias {_signed(a.ln_f_bias)}, ln_f's scale held at {a.scale:.3f}). "
               f"Heads that push it up most (layer.head): {pushers or 'none'}; pull it down most: {pullers or 'none'}. "
               f"The largest MLP part is layer {big_mlp}'s, {_signed(mlp[big_mlp])}.")
    return AttributionView(heads=heads, attn=to_numpy(a.attn), attn_bias=to_numpy(a.attn_bias), mlp=mlp,
                           embed=a.embed, pos_embed=a.pos_embed, ln_f_bias=a.ln_f_bias, logit=a.logit, total=a.total(),
                           title=f"{what} at position {a.position}", summary=summary)


# ---- ablation ----------------------------------------------------------------------------------------
@dataclass
class AblationView:
    ids: list[int]                 # the union of the top tokens before and after, by the change
    tokens: list[str]
    before: np.ndarray
    after: np.ndarray
    summary: str


def parse_parts(heads_text, mlps_text, cfg) -> tuple[list[tuple[int, int]], list[int]]:
    for value, what in ((heads_text, "heads"), (mlps_text, "MLP layers")):
        if value is not None and not isinstance(value, str):
            raise InputError(f"The {what} to knock out must be text such as '0.1, 3.2', got {type(value).__name__}.")
    try:
        return lens.parse_heads(heads_text or "", cfg.n_layer, cfg.n_head), lens.parse_layers(mlps_text or "", cfg.n_layer)
    except lens.AblationError as e:
        raise InputError(f"{str(e)[0].upper()}{str(e)[1:]}.") from None


def check_mode(mode) -> str:
    if mode not in (lens.ZERO, lens.MEAN):
        raise InputError(f"The ablation must be {lens.ZERO!r} or {lens.MEAN!r}, got {mode!r}.")
    return mode


def ablation_view(model: GPT2, ids: list[int], position: int, target: int | None, heads, mlps, mode: str,
                  n_top: int = 10) -> AblationView:
    if not heads and not mlps:
        raise InputError("Nothing to knock out: give at least one head (as layer.head, e.g. 0.1) or MLP layer.")
    prefix = ids[:position + 1]          # later tokens can't change the prediction at ``position``
    # One batched pass: row 0 runs clean, row 1 with the parts knocked out (15% faster than two passes).
    hooks = lens.ablation_hooks(model, prefix, mode=mode, rows=[([], []), (heads, mlps)])
    logits, _ = model.run_with_cache(ids_on(model, [prefix, prefix]), names=[], hooks=hooks, last_only=True)
    before_logits, after_logits = logits[0, -1], logits[1, -1]
    before, after = torch.softmax(before_logits.double(), -1), torch.softmax(after_logits.double(), -1)
    if target is None:
        target = int(before.argmax())
    shown = torch.unique(torch.cat([before.topk(n_top).indices, after.topk(n_top).indices]))
    order = torch.argsort(before[shown], descending=True)
    shown = shown[order].tolist()
    parts = [f"head {l}.{h}" for l, h in heads] + [f"MLP {l}" for l in mlps]
    dp = float(after[target] - before[target])
    dl = float(after_logits[target] - before_logits[target])
    new_top = int(after.argmax())
    summary = (f"{mode.capitalize()}-ablating {', '.join(parts)} moves {quoted(target)} at position {position} from "
               f"**{float(before[target]):.1%}** to **{float(after[target]):.1%}** ({dp * 100:+.1f} points; logit "
               f"{dl:+.3f}, log-probability {float(torch.log(after[target]) - torch.log(before[target])):+.3f}). "
               + (f"The top prediction changes to {quoted(new_top)}." if new_top != int(before.argmax())
                  else "The top prediction stays the same."))
    return AblationView(ids=shown, tokens=[token_text(i) for i in shown], before=to_numpy(before[shown]),
                        after=to_numpy(after[shown]), summary=summary)


@dataclass
class ScanView:
    target: int
    deltas: np.ndarray             # (L, nh) change in the target's log-probability
    clean: float                   # its clean log-probability
    summary: str


def scan_view(model: GPT2, ids: list[int], position: int, target: int | None, mode: str, progress=None) -> ScanView:
    if target is None:
        with torch.no_grad():
            target = int(model(ids_on(model, [ids[:position + 1]]), last_only=True)[0, -1].argmax())
    deltas, clean = lens.scan_heads(model, ids, target, position=position, mode=mode, progress=progress)
    d = to_numpy(deltas)
    nh = d.shape[1]
    worst = np.argsort(d, axis=None)[:3]
    named = ", ".join(f"{i // nh}.{i % nh} ({d.flat[i]:+.2f})" for i in worst)
    summary = (f"{quoted(target)} at position {position} has log-probability {clean:.2f} "
               f"({np.exp(clean):.1%}). Knocking out one head at a time ({mode} ablation, {d.size} heads), "
               f"the largest drops come from {named}; the largest rise is {d.max():+.2f}.")
    return ScanView(target=target, deltas=d, clean=clean, summary=summary)
