"""Circuits: how well a model copies in context (induction), what kind each head is (the head
detector), and which activations carry a difference between two prompts (activation patching).

Everything here runs on the hooks of ``model.py``; nothing needs a second model or a second kind
of forward pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..kernels import backend
from ..text import tokenizer
from ..reference.devices import ids_on
from ..reference.hooks import capture


def repeated_random_tokens(n_tokens: int = 50, batch: int = 16, seed: int = 0, vocab_size: int = 50257,
                           bos: int | None | str = tokenizer.ACTIVE_EOT) -> torch.Tensor:
    """``batch`` sequences of [bos] + R + R, R being ``n_tokens`` uniform-random ids. (batch, [1 +] 2n)
    ``bos`` by default: the active tokenizer's end-of-text (none for a character vocabulary)."""
    bos = tokenizer.resolve_eot(bos)
    g = torch.Generator().manual_seed(seed)
    r = torch.randint(0, vocab_size, (batch, n_tokens), generator=g)                    # (B, n)
    parts = ([torch.full((batch, 1), bos, dtype=torch.long)] if bos is not None else []) + [r, r]
    return torch.cat(parts, dim=1)                                                       # (B, 1 + 2n)


@torch.no_grad()
def induction_loss(model, n_tokens: int = 50, batch: int = 16, seed: int = 0) -> dict:
    """Mean next-token loss on the first and the second copy of a random sequence repeated twice.

    The first copy can only be guessed (about ln(vocab) nats for a model that has learnt nothing
    about random ids); the second can be copied from the first. ``second`` leaves out the second
    copy's first token, which nothing before it predicts; ``second_with_first`` keeps it.
    """
    bos = tokenizer.eot_id()           # a character vocabulary has no end-of-text: the copies start at once
    ids = repeated_random_tokens(n_tokens, batch, seed, model.config.vocab_size)       # (B, [1 +] 2n)
    if ids.shape[1] > model.config.n_ctx:
        raise ValueError(f"{n_tokens} tokens repeated twice (+1) do not fit a context of {model.config.n_ctx}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits = model(ids.to(device)).float()                                             # (B, 1 + 2n, V)
    model.train(was_training)
    losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:].to(device), reduction="none")  # (B, 2n)
    per_position = losses.mean(0).cpu()                                                # predicting ids[1:]
    split = n_tokens if bos is not None else n_tokens - 1      # where the second copy's predictions start
    first, second = per_position[:split], per_position[split:]
    return {"first": float(first.mean()), "second": float(second[1:].mean()),
            "second_with_first": float(second.mean()), "per_position": per_position.tolist(),
            "n_tokens": n_tokens, "batch": batch, "seed": seed}


@torch.no_grad()
def repeated_text_loss(model, ids, n_tokens: int = 50, n_passages: int = 16) -> dict:
    """Mean loss on the first and the second occurrence of passages of a text repeated twice:
    [EOT] + P + P for ``n_passages`` passages of ``n_tokens`` tokens taken evenly from ``ids``.
    ``second`` leaves out the second occurrence's first token, as in ``induction_loss``."""
    ids = torch.as_tensor(ids, dtype=torch.long).cpu()
    if len(ids) < n_tokens * n_passages:
        raise ValueError(f"the text has {len(ids)} tokens; {n_passages} passages of {n_tokens} need more")
    step = len(ids) // n_passages
    passages = torch.stack([ids[i * step:i * step + n_tokens] for i in range(n_passages)])      # (N, n)
    bos = tokenizer.eot_id()
    start = [torch.full((n_passages, 1), bos)] if bos is not None else []
    seqs = torch.cat([*start, passages, passages], 1)                                           # (N, [1 +] 2n)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits = model(seqs.to(device)).float()                                                     # (N, [1 +] 2n, V)
    model.train(was_training)
    losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), seqs[:, 1:].to(device), reduction="none")
    per_position = losses.mean(0).cpu()                                                         # predicting seqs[1:]
    split = n_tokens if bos is not None else n_tokens - 1      # where the second copy's predictions start
    return {"first": float(per_position[:split].mean()), "second": float(per_position[split + 1:].mean()),
            "second_with_first": float(per_position[split:].mean()), "n_tokens": n_tokens,
            "n_passages": n_passages}


# ---- head detector --------------------------------------------------------------------------------------
# The classic head types, as TransformerLens's head detector defines them: a detection pattern (T, T) of the
# key positions a head of that type attends to from each query position.
HEAD_TYPES = ("previous_token", "duplicate_token", "induction", "first_token")
HEAD_TYPE_LABELS = {"previous_token": "previous-token", "duplicate_token": "duplicate-token",
                    "induction": "induction", "first_token": "first-token (attention sink)"}


def detection_pattern(kind: str, ids) -> torch.Tensor:
    """(T, T) 0/1 pattern of where a head of ``kind`` looks from each query position (rows) in ``ids``.

    - previous_token: the position just before (i -> i - 1);
    - duplicate_token: every earlier position holding the same token;
    - induction: the position just after each earlier occurrence of the query's token (j + 1 where
      ids[j] == ids[i], j + 1 < i): the token that came next last time;
    - first_token: position 0, from every later position.
    """
    ids = torch.as_tensor(ids, dtype=torch.long).cpu()
    T = len(ids)
    earlier = torch.ones(T, T).tril(-1).bool()                              # (T, T) key j < query i
    if kind == "previous_token":
        return torch.ones(T, T).tril(-1).triu(-1)                         # (T, T) the sub-diagonal
    if kind == "first_token":
        pattern = torch.zeros(T, T)
        pattern[1:, 0] = 1
        return pattern
    same = (ids[:, None] == ids[None, :]) & earlier                         # (T, T) ids[j] == ids[i], j < i
    if kind == "duplicate_token":
        return same.float()
    if kind == "induction":
        shifted = torch.zeros(T, T, dtype=torch.bool)
        shifted[:, 1:] = same[:, :-1]                                       # key j + 1 for each duplicate j
        return (shifted & earlier).float()
    raise ValueError(f"head type must be one of {', '.join(HEAD_TYPES)}, got {kind!r}")


def head_scores(patterns: torch.Tensor, ids, kinds=HEAD_TYPES) -> dict[str, torch.Tensor]:
    """Scores in [0, 1] per head for each head type: the attention a head puts on the positions its type's
    detection pattern marks, averaged over the query positions where that pattern marks any (TransformerLens's
    "mul" measure, without the rows that could not score: a first occurrence has no duplicate to look at).

    ``patterns``: (L, nh, T, T) attention weights, or (nh, T, T) for one layer. Returns kind -> (L, nh)
    (or (nh,)); NaN where no query position can score (e.g. no token repeats, for duplicate/induction).
    """
    ids = torch.as_tensor(ids, dtype=torch.long).cpu()
    patterns = patterns.detach().float().cpu()
    out = {}
    for kind in kinds:
        det = detection_pattern(kind, ids)                                  # (T, T)
        rows = det.sum(-1) > 0                                              # (T,) query positions that can score
        if not bool(rows.any()):
            out[kind] = torch.full(patterns.shape[:-2], float("nan"))
            continue
        mass = (patterns * det).sum(-1)                                     # (..., T) attention on marked keys
        out[kind] = mass[..., rows].mean(-1).clamp(0, 1)                    # (...,)
    return out


@torch.no_grad()
def detect_heads(model, ids, kinds=HEAD_TYPES) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every head's score for each type on ``ids`` (T,), from one forward pass: (kind -> (L, nh), patterns
    (L, nh, T, T))."""
    n_layer = model.config.n_layer
    _, cache = model.run_with_cache(ids, names=[f"blocks.{i}.attn.hook_pattern" for i in range(n_layer)],
                                    last_only=True)
    patterns = cache.stack("blocks.{}.attn.hook_pattern", n_layer)            # (L, nh, T, T)
    return head_scores(patterns, ids, kinds), patterns


# ---- activation patching --------------------------------------------------------------------------------
PATCH_KINDS = ("resid_pre", "attn_out", "mlp_out", "heads")
PATCH_HOOKS = {"resid_pre": "blocks.{}.hook_resid_pre", "attn_out": "blocks.{}.hook_attn_out",
               "mlp_out": "blocks.{}.hook_mlp_out", "heads": "blocks.{}.attn.hook_z"}


class PatchingError(ValueError):
    """Two prompts (or answers) that patching can't compare; the message says why."""


@dataclass(frozen=True)
class Patch:
    """One activation copied from the clean run into the corrupted one: ``kind`` at ``layer``, at ``position``
    (None: every position), for ``kind == "heads"`` only head ``head``'s output (its z, before c_proj)."""
    kind: str
    layer: int
    position: int | None = None
    head: int | None = None

    @property
    def hook(self) -> str:
        return PATCH_HOOKS[self.kind].format(self.layer)


def patch_hooks(rows: list[list[Patch]], source: dict[str, torch.Tensor]) -> dict:
    """Editing hooks that write ``source``'s activations (a single-sequence cache: (T, d) or (T, nh, hs))
    into the run: batch row b gets the patches ``rows[b]`` (one list for every row, if there is one list)."""
    by_hook: dict[str, list[tuple[int | None, Patch]]] = {}
    every = len(rows) == 1
    for b, patches in enumerate(rows):
        for patch in patches:
            if patch.kind not in PATCH_HOOKS:
                raise ValueError(f"patch kind must be one of {', '.join(PATCH_KINDS)}, got {patch.kind!r}")
            by_hook.setdefault(patch.hook, []).append((None if every else b, patch))

    def make(name, targets):
        src = source[name]                                                  # (T, d) or (T, nh, hs)

        def edit(x, _name):                                                 # (B, T, d) or (B, T, nh, hs)
            x = x.clone()
            for b, patch in targets:
                row = slice(None) if b is None else b
                pos = slice(None) if patch.position is None else patch.position
                if patch.head is None:
                    x[row, pos] = src[pos]
                else:
                    x[row, pos, patch.head] = src[pos, patch.head]
            return x
        return edit

    return {name: make(name, targets) for name, targets in by_hook.items()}


def patch_names(n_layer: int, kinds=PATCH_KINDS) -> list[str]:
    """The hook names a clean run must record for patches of ``kinds``."""
    return [PATCH_HOOKS[k].format(i) for k in kinds for i in range(n_layer)]


def run_patched(model, corrupt_ids, clean_cache: dict, patches: list[Patch]) -> torch.Tensor:
    """The corrupted prompt's last-position logits (V,) with ``patches`` copied in from ``clean_cache``
    (a cache of the clean prompt that holds every patched hook), in one ordinary forward pass."""
    hooks = patch_hooks([list(patches)], clean_cache)
    logits, _ = model.run_with_cache(corrupt_ids, names=[], hooks=hooks, last_only=True)
    return logits[-1]                                                       # (V,)


def forward_from(model, resid: torch.Tensor, start: int, hooks: dict | None = None) -> torch.Tensor:
    """Last-position logits (B, V) of the model's own blocks ``start``.. run on ``resid`` (B, T, d), the
    residual stream entering block ``start`` (its hook_resid_pre still fires). A patch at layer ``start``
    changes nothing before it, so a sweep starts each patched run there, from the corrupted run's residual."""
    with torch.no_grad(), capture([], hooks), backend.default_precision(getattr(model, "precision", "fp32")):
        x = resid
        for block in model.blocks[start:]:
            x = block(x)                                                    # (B, T, d)
        return model.lm_head(model.ln_f(x[:, -1:]))[:, 0]                   # (B, V)


@dataclass
class PatchingSweep:
    """Each patch's effect on the metric, normalised: 1 = the clean run's logit difference, 0 = the
    corrupted run's. ``scores[kind]`` is (L, T) per layer and position, or (L, nh) for "heads"."""
    scores: dict[str, torch.Tensor]
    answer: int                  # the clean answer token
    wrong: int                   # the corrupted answer token
    clean_diff: float            # logit[answer] - logit[wrong] on the clean prompt (last position)
    corrupt_diff: float          # the same on the corrupted prompt
    n_runs: int                  # patched runs made


def logit_diff(logits: torch.Tensor, answer: int, wrong: int) -> torch.Tensor:
    """logits (..., V) -> (...,) logit of ``answer`` minus logit of ``wrong``."""
    return logits[..., answer] - logits[..., wrong]


def check_pair(clean_ids, corrupt_ids) -> None:
    if len(clean_ids) != len(corrupt_ids):
        raise PatchingError(f"the two prompts must have the same number of tokens: the clean one has "
                            f"{len(clean_ids)}, the corrupted one {len(corrupt_ids)}")
    if len(clean_ids) == 0:
        raise PatchingError("the prompts are empty")
    if torch.equal(torch.as_tensor(clean_ids).cpu(), torch.as_tensor(corrupt_ids).cpu()):
        raise PatchingError("the two prompts are the same tokens: patching one into the other changes nothing")


@torch.no_grad()
def patching_sweep(model, clean_ids, corrupt_ids, answer: int | None = None, wrong: int | None = None,
                   kinds=PATCH_KINDS, batch_size: int = 32,
                   progress: Callable[[int, int], None] | None = None) -> PatchingSweep:
    """Patch each clean activation into the corrupted run, one at a time, and measure the normalised logit
    difference at the last position. ``answer`` / ``wrong`` default to the clean and the corrupted prompt's
    top tokens. Patches at one layer run as batches of ``batch_size`` copies of the corrupted prompt, each
    with its own patch, from the corrupted residual entering that layer (``forward_from``)."""
    check_pair(clean_ids, corrupt_ids)
    for kind in kinds:
        if kind not in PATCH_HOOKS:
            raise ValueError(f"patch kind must be one of {', '.join(PATCH_KINDS)}, got {kind!r}")
    cfg = model.config
    clean_ids, corrupt_ids = ids_on(model, clean_ids), ids_on(model, corrupt_ids)
    T, L = len(clean_ids), cfg.n_layer
    clean_logits, clean_cache = model.run_with_cache(clean_ids, names=patch_names(L, kinds), last_only=True)
    corrupt_logits, corrupt_cache = model.run_with_cache(corrupt_ids, names=patch_names(L, ["resid_pre"]),
                                                         last_only=True)
    answer = int(clean_logits[-1].argmax()) if answer is None else int(answer)
    wrong = int(corrupt_logits[-1].argmax()) if wrong is None else int(wrong)
    if answer == wrong:
        raise PatchingError(f"the answer and the wrong answer are the same token (#{answer}): the logit "
                            f"difference between them is always 0")
    clean_diff = float(logit_diff(clean_logits[-1], answer, wrong))
    corrupt_diff = float(logit_diff(corrupt_logits[-1], answer, wrong))
    if abs(clean_diff - corrupt_diff) < 1e-6:
        raise PatchingError(f"the logit difference is {clean_diff:.4f} on both prompts: there is no difference "
                            f"for a patch to restore")

    jobs: list[tuple[str, int, int, Patch]] = []        # (kind, layer, index in its row, patch)
    for layer in range(L):
        for kind in kinds:
            count = cfg.n_head if kind == "heads" else T
            for i in range(count):
                patch = Patch(kind, layer, None, i) if kind == "heads" else Patch(kind, layer, i)
                jobs.append((kind, layer, i, patch))
    scores = {kind: torch.empty(L, cfg.n_head if kind == "heads" else T, dtype=torch.float64) for kind in kinds}
    done = 0
    for layer in range(L):
        mine = [j for j in jobs if j[1] == layer]
        resid = corrupt_cache[PATCH_HOOKS["resid_pre"].format(layer)]                     # (T, d)
        for start in range(0, len(mine), batch_size):
            chunk = mine[start:start + batch_size]
            hooks = patch_hooks([[patch] for *_, patch in chunk], clean_cache)
            logits = forward_from(model, resid[None].expand(len(chunk), -1, -1), layer, hooks)   # (B, V)
            diffs = logit_diff(logits, answer, wrong).double().cpu()                          # (B,)
            for (kind, _, i, _), d in zip(chunk, diffs.tolist()):
                scores[kind][layer, i] = (d - corrupt_diff) / (clean_diff - corrupt_diff)
            done += len(chunk)
            if progress is not None:
                progress(done, len(jobs))
    return PatchingSweep(scores, answer, wrong, clean_diff, corrupt_diff, len(jobs))
