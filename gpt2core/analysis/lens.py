"""Why this token? Three answers built on capture and the editing hooks (one forward pass in the codebase):

- ``logit_lens``: read the residual stream after the embeddings, after each block's attention and after
  each block, and push it through ``ln_f`` and the unembedding as if the model stopped there.
- ``attribute``: split the target's final logit into additive parts (embeddings, every head, every
  attention bias, every MLP, ``ln_f``'s bias), holding ``ln_f``'s scale at its value in this run, as
  TransformerLens's residual-stack decomposition does.
- ``run_ablated`` / ``scan_heads``: knock heads or MLPs out (zero or mean ablation) with editing hooks.

Shape key: S lens stages, T tokens, d n_embd, V vocab, L layers, nh heads, hs head size, B batch.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from ..reference.devices import ids_on
from ..reference.model import GPT2

LENS_ROWS = 256   # rows pushed through the unembedding at once: 256 x 50,257 floats is 51 MB
POST_ROWS = 32    # rows soft-maxed and ranked at once


# ---- logit lens -------------------------------------------------------------------------------------
def lens_stages(n_layer: int) -> list[tuple[str, str]]:
    """(label, hook name) of every residual-stream stage, in the order the forward pass makes them."""
    stages = [("embeddings", "blocks.0.hook_resid_pre")]
    for i in range(n_layer):
        stages += [(f"L{i} after attention", f"blocks.{i}.hook_resid_mid"),
                   (f"L{i} after MLP", f"blocks.{i}.hook_resid_post")]
    return stages


@dataclass
class LogitLens:
    stages: list[str]            # (S,) labels; the last is the model's own output
    top_ids: torch.Tensor        # (S, T, k) each stage's k likeliest next tokens
    top_probs: torch.Tensor      # (S, T, k) their probabilities
    final_ids: torch.Tensor      # (T,) the model's own top prediction at each position
    final_ranks: torch.Tensor    # (S, T) rank of that token at each stage (1 = top)
    final_probs: torch.Tensor    # (S, T) its probability at each stage
    tracked: dict[int, tuple[torch.Tensor, torch.Tensor]]   # token id -> ((S, T) ranks, (S, T) probs)
    logits: torch.Tensor         # (T, V) the model's output logits
    positions: list[int]         # (T,) the prompt position of each column (every position, unless asked)


def unembed(model: GPT2, resid: torch.Tensor) -> torch.Tensor:
    """(N, d) residual stream -> (N, V) logits, through the model's own ln_f and lm_head."""
    return model.lm_head(model.ln_f(resid))                                 # (N, V)


def lens_positions(positions: Iterable[int] | None, T: int) -> list[int]:
    """``positions`` of a T-token prompt (negative ones count from the end) as sorted distinct positions;
    None: every position."""
    if positions is None:
        return list(range(T))
    cols = set()
    for p in positions:
        if not -T <= int(p) < T:
            raise IndexError(f"position {int(p)} is outside a prompt of {T} tokens")
        cols.add(int(p) % T)
    if not cols:
        raise ValueError("no positions to unembed")
    return sorted(cols)


def _chunks(n: int) -> list[slice]:
    """n rows as near-equal runs of at most LENS_ROWS (none of one row alone unless n is 1: the product of
    a single row takes another path, with other rounding)."""
    parts = -(-n // LENS_ROWS)
    sizes = [n // parts + (i < n % parts) for i in range(parts)]
    starts = list(itertools.accumulate([0] + sizes))
    return [slice(a, b) for a, b in zip(starts, starts[1:])]


def logit_lens(model: GPT2, ids, k: int = 5, track: Iterable[int] = (),
               positions: Iterable[int] | None = None) -> LogitLens:
    """The lens of one sequence ``ids`` (T,) at every stage, at ``positions`` (None: every position), in one
    captured forward pass.

    The forward runs over the tokens up to the last position asked for (a later token cannot change an
    earlier prediction: causal attention; a forward over more tokens may round differently), and only the
    asked positions' rows are unembedded: T in the shapes below is their number. The last stage is the
    model's own output there: the forward's logits when its head over the whole prefix costs at most twice
    the window's; otherwise the forward makes the last position's logits only (``last_only``) and the last
    stage is ln_f and lm_head applied to that forward's final residual at those positions, in one call with
    other stages' rows: the same numbers, bit for bit, as the forward's logits wherever the products treat
    their rows alike (tests/test_core_lens.py checks it).
    """
    stages = lens_stages(model.config.n_layer)
    names = [name for _, name in stages]
    track = list(dict.fromkeys(int(t) for t in track))
    ids = ids_on(model, ids)                                                 # (T,)
    cols = lens_positions(positions, len(ids))
    prefix = cols[-1] + 1
    full_head = prefix <= 2 * len(cols)   # the head over every prefix position costs at most twice the window's
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids[:prefix], names=names, last_only=not full_head)
        if len(cols) < prefix:
            at = torch.tensor(cols, dtype=torch.long, device=ids.device)    # (T,)
            # the asked columns of each stage, then stacked: not all S x prefix x d of them copied first
            resid = torch.stack([cache[name][at] for name in names])         # (S, T, d)
            logits = logits[at] if full_head else None                       # (T, V)
        else:
            resid = torch.stack([cache[name] for name in names])             # (S, prefix, d)
        S, T, d = resid.shape
        # The rows to unembed, stage-major. With the forward's logits the last stage is those, appended at the
        # end; without, the last stage is unembedded first (its top token is what every stage is ranked on).
        order = list(range(S - 1)) if full_head else [S - 1] + list(range(S - 1))
        flat = resid[order].reshape(-1, d)                                   # (len(order)*T, d)
        # One chunk of rows at a time (a generator: all of them at once would be S*T*V floats).
        chunks = (unembed(model, flat[rows]) for rows in _chunks(len(flat)))
        if full_head:
            chunks = itertools.chain(chunks, [logits])
        final_ids = logits.argmax(-1) if full_head else None                 # (T,)
        top_ids, top_probs, ranks, probs, own = [], [], [], [], []
        tracked = {t: ([], []) for t in track}
        waiting, start = [], 0

        def read(first, lens_logits):
            """Top k, and the final pick's and each tracked token's rank and probability, of rows first, ...
            A few rows at a time: each step's tensors stay in the cache (the rank's comparison over 256 rows
            at once takes 3x as long)."""
            for i in range(0, len(lens_logits), POST_ROWS):
                block = lens_logits[i:i + POST_ROWS]                         # (n, V)
                # torch's softmax, so the last stage is bit for bit softmax(the model's logits).
                softmax = torch.softmax(block, -1)                           # (n, V)
                values, indices = softmax.topk(k, -1)                        # (n, k)
                top_ids.append(indices)
                top_probs.append(values)
                rows = torch.arange(first + i, first + i + len(block), device=block.device) % T   # (n,) positions
                for t_ids, (t_ranks, t_probs) in [(final_ids[rows], (ranks, probs))] + [
                        (torch.full_like(rows, t), tracked[t]) for t in track]:
                    chosen = block.gather(1, t_ids[:, None])                 # (n, 1)
                    t_ranks.append((block > chosen).sum(1, dtype=torch.int32) + 1)   # (n,) 1 = top
                    t_probs.append(softmax.gather(1, t_ids[:, None])[:, 0])

        for lens_logits in chunks:                                           # (n, V)
            first = start
            start += len(lens_logits)
            if final_ids is None:           # the last stage's rows come first: read them once all are made
                own.append(lens_logits[:T - first])
                waiting.append((first, lens_logits))
                if start < T:
                    continue
                logits = torch.cat(own)                                      # (T, V)
                final_ids = logits.argmax(-1)
                for item in waiting:
                    read(*item)
                waiting = []
                continue
            read(first, lens_logits)

    def cat(parts, *shape):
        out = torch.cat(parts).reshape(S, T, *shape)
        return out if full_head else torch.roll(out, -1, dims=0)            # back to the forward pass's order
    return LogitLens(stages=[label for label, _ in stages], top_ids=cat(top_ids, k), top_probs=cat(top_probs, k),
                     final_ids=final_ids, final_ranks=cat(ranks), final_probs=cat(probs),
                     tracked={t: (cat(r), cat(p)) for t, (r, p) in tracked.items()}, logits=logits, positions=cols)


# ---- attribution ------------------------------------------------------------------------------------
@dataclass
class Attribution:
    """The target's logit (minus the contrast's, if one is given) at one position, split into parts."""
    position: int
    target: int
    contrast: int | None
    logit: float                 # the model's own logit (difference)
    embed: float                 # token embedding (wte row)
    pos_embed: float             # position embedding (wpe row)
    heads: torch.Tensor          # (L, nh) each head's z through its slice of c_proj
    attn_bias: torch.Tensor      # (L,) each attention layer's c_proj bias
    mlp: torch.Tensor            # (L,) each MLP's output (its c_proj bias included)
    ln_f_bias: float             # ln_f's shift, read by the unembedding
    scale: float                 # ln_f's sqrt(var + eps) at this position, held fixed

    @property
    def attn(self) -> torch.Tensor:
        """(L,) each attention layer's whole contribution: its heads and its bias."""
        return self.heads.sum(1) + self.attn_bias

    def total(self) -> float:
        """The sum of every part: equals ``logit`` up to float rounding."""
        return (self.embed + self.pos_embed + float(self.heads.sum()) + float(self.attn_bias.sum())
                + float(self.mlp.sum()) + self.ln_f_bias)


def attribution_names(n_layer: int) -> list[str]:
    return (["hook_embed", "hook_pos_embed", "ln_f.hook_in_var"]
            + [f"blocks.{i}.{n}" for i in range(n_layer) for n in ("attn.hook_z", "hook_mlp_out")])


def attribute(model: GPT2, ids, target: int | None = None, contrast: int | None = None,
              position: int = -1, logits: torch.Tensor | None = None, cache=None) -> Attribution:
    """Decompose the logit of ``target`` (default: the model's top token) at ``position`` of ``ids`` (T,).

    ln_f is (x - mean(x)) / scale * gamma + beta with x the sum of every part's output, so with its scale
    fixed each part adds (c - mean(c)) / scale * gamma . W_U[target], and beta . W_U[target] is left over.
    ``logits`` and ``cache`` may come from a run_with_cache that captured ``attribution_names``.
    """
    cfg = model.config
    if cache is None:
        p = position % len(ids)
        # The tokens up to ``position`` (later ones can't change its logit: causal attention) and that position's
        # logits alone: the head's 50,257 logits for every other position were most of this call's time beyond
        # its forward pass. The cache's row p is still the position's.
        logits, cache = model.run_with_cache(ids[:p + 1], names=attribution_names(cfg.n_layer), last_only=True)
        row = logits[-1]                                                     # (V,)
    else:
        p = position % logits.shape[0]
        row = logits[p]                                                      # (V,)
    if target is None:
        target = int(row.argmax())
    with torch.no_grad():
        W_U = model.lm_head.weight                                           # (V, d)
        direction = W_U[target].double() - (W_U[contrast].double() if contrast is not None else 0)   # (d,)
        scale = float(torch.sqrt(cache["ln_f.hook_in_var"][p].double() + model.ln_f.eps))
        u = direction * model.ln_f.weight.double() / scale                   # (d,)
        u = u - u.mean()    # (c - mean c) . u == c . (u - mean u): centring moves onto the direction
        read = lambda x: float(x.double() @ u)                               # noqa: E731
        heads, attn_bias, mlp = [], [], []
        for i, block in enumerate(model.blocks):
            z = cache[f"blocks.{i}.attn.hook_z"][p].double()                # (nh, hs)
            W_O = block.attn.c_proj.weight.t().double()                       # (d_in, d): rows are z's features
            per_head_u = (W_O @ u).view(cfg.n_head, cfg.head_dim)            # (nh, hs)
            heads.append((z * per_head_u).sum(-1))                            # (nh,)
            attn_bias.append(read(block.attn.c_proj.bias))
            mlp.append(read(cache[f"blocks.{i}.hook_mlp_out"][p]))
        logit = float(row[target]) - (float(row[contrast]) if contrast is not None else 0.0)
        return Attribution(position=p, target=int(target), contrast=None if contrast is None else int(contrast),
                           logit=logit, embed=read(cache["hook_embed"][p]), pos_embed=read(cache["hook_pos_embed"][p]),
                           heads=torch.stack(heads),
                           attn_bias=torch.tensor(attn_bias, dtype=torch.float64, device=W_U.device),
                           mlp=torch.tensor(mlp, dtype=torch.float64, device=W_U.device),
                           ln_f_bias=float(model.ln_f.bias.double() @ direction), scale=scale)


# ---- ablation ---------------------------------------------------------------------------------------
ZERO, MEAN = "zero", "mean"
_HEAD = re.compile(r"^\s*(\d+)\s*[.:]\s*(\d+)\s*$")


class AblationError(ValueError):
    """A head or layer that the model doesn't have, or a list that can't be read."""


def parse_heads(text: str, n_layer: int, n_head: int) -> list[tuple[int, int]]:
    """"0.1, 3.2" (or "0:1 3:2") -> [(0, 1), (3, 2)], checked against the model's layers and heads."""
    heads = []
    for item in filter(None, re.split(r"[,;\s]+", text or "")):
        match = _HEAD.match(item)
        if not match:
            raise AblationError(f"{item!r} is not a head: write heads as layer.head, for example 0.1, 3.2")
        layer, head = int(match[1]), int(match[2])
        if layer >= n_layer or head >= n_head:
            raise AblationError(f"head {layer}.{head} does not exist: this model has layers 0-{n_layer - 1} "
                                f"and heads 0-{n_head - 1}")
        heads.append((layer, head))
    return list(dict.fromkeys(heads))


def parse_layers(text: str, n_layer: int) -> list[int]:
    """"0, 4" -> [0, 4], checked against the model's layers."""
    layers = []
    for item in filter(None, re.split(r"[,;\s]+", text or "")):
        if not item.isdigit():
            raise AblationError(f"{item!r} is not a layer number: write MLP layers as numbers, for example 0, 4")
        if int(item) >= n_layer:
            raise AblationError(f"MLP layer {item} does not exist: this model has layers 0-{n_layer - 1}")
        layers.append(int(item))
    return list(dict.fromkeys(layers))


def _means(model: GPT2, ids: torch.Tensor, heads, mlps) -> dict[str, torch.Tensor]:
    """Each ablated part's output averaged over the prompt's positions, from one clean run."""
    names = ({f"blocks.{l}.attn.hook_z" for l, _ in heads} | {f"blocks.{l}.hook_mlp_out" for l in mlps})
    _, cache = model.run_with_cache(ids, names=sorted(names))
    return {name: tensor.mean(0) for name, tensor in cache.items()}                # (nh, hs) or (d,)


def ablation_hooks(model: GPT2, ids, heads=(), mlps=(), mode: str = ZERO,
                   rows: list[tuple[list, list]] | None = None, means: dict | None = None) -> dict[str, Callable]:
    """Editing hooks that knock parts out. Without ``rows`` every batch row loses ``heads`` and ``mlps``;
    with ``rows`` (one (heads, mlps) per batch row) each row loses its own, so one batched pass runs
    many ablations. Zero ablation: the head's z (so its output) or the MLP's output becomes 0. Mean
    ablation: it becomes its average over this prompt's positions (``means``, else from a clean run of ``ids``)."""
    if mode not in (ZERO, MEAN):
        raise AblationError(f"ablation must be {ZERO!r} or {MEAN!r}, got {mode!r}")
    if rows is None:
        rows = [(list(heads), list(mlps))]
    all_heads = sorted({h for r_heads, _ in rows for h in r_heads})
    all_mlps = sorted({m for _, r_mlps in rows for m in r_mlps})
    if mode == MEAN and means is None:
        means = _means(model, ids_on(model, ids), all_heads, all_mlps)
    by_name: dict[str, list[tuple[int | None, int | None]]] = {}   # name -> (batch row or None, head or None)
    every = len(rows) == 1
    for b, (r_heads, r_mlps) in enumerate(rows):
        for layer, head in r_heads:
            by_name.setdefault(f"blocks.{layer}.attn.hook_z", []).append((None if every else b, head))
        for layer in r_mlps:
            by_name.setdefault(f"blocks.{layer}.hook_mlp_out", []).append((None if every else b, None))

    def make(name, targets):
        def edit(x, _name):                                     # x: (B, T, nh, hs) or (B, T, d)
            x = x.clone()
            for b, head in targets:
                rows_sel = slice(None) if b is None else b
                if head is None:
                    x[rows_sel] = means[name] if mode == MEAN else 0.0
                else:
                    x[rows_sel, :, head] = means[name][head] if mode == MEAN else 0.0
            return x
        return edit

    return {name: make(name, targets) for name, targets in by_name.items()}


def run_ablated(model: GPT2, ids, heads=(), mlps=(), mode: str = ZERO, last_only: bool = False) -> torch.Tensor:
    """Logits (T, V) of ``ids`` (T,) with ``heads`` [(layer, head)] and ``mlps`` [layer] knocked out;
    with ``last_only`` (1, V), for the last position alone."""
    hooks = ablation_hooks(model, ids, heads, mlps, mode)
    logits, _ = model.run_with_cache(ids, names=[], hooks=hooks, last_only=last_only)
    return logits


def scan_heads(model: GPT2, ids, target: int, position: int = -1, mode: str = ZERO, batch_size: int = 16,
               progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, float]:
    """Ablate each head alone and return ((L, nh) change in the target's log-probability at ``position``,
    the clean log-probability). The ablations run as batches of ``batch_size`` copies of the prompt,
    each copy losing its own head; the prompt is cut after ``position`` (later tokens can't matter)."""
    cfg = model.config
    ids = ids_on(model, ids)
    ids = ids[:position % len(ids) + 1]                                       # (T',)
    with torch.no_grad():
        clean = torch.log_softmax(model(ids[None], last_only=True)[0, -1], -1)[target]
    all_heads = [(l, h) for l in range(cfg.n_layer) for h in range(cfg.n_head)]
    means = _means(model, ids, all_heads, []) if mode == MEAN else None
    deltas = torch.empty(len(all_heads), dtype=torch.float64, device=ids.device)
    for start in range(0, len(all_heads), batch_size):
        chunk = all_heads[start:start + batch_size]
        hooks = ablation_hooks(model, ids, mode=mode, rows=[([h], []) for h in chunk], means=means)
        batch = ids[None].expand(len(chunk), -1)                            # (B, T')
        logits, _ = model.run_with_cache(batch, names=[], hooks=hooks, last_only=True)   # (B, 1, V)
        deltas[start:start + len(chunk)] = (torch.log_softmax(logits[:, -1], -1)[:, target] - clean).double()
        if progress is not None:
            progress(start + len(chunk), len(all_heads))
    return deltas.view(cfg.n_layer, cfg.n_head), float(clean)
