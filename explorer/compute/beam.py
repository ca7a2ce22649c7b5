"""What the Generate tab's beam search view shows: the search tree laid out, the finished hypotheses, and
greedy / sampling / beam search continuations of one prompt side by side."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gpt2core import GPT2, decode, generate
from gpt2core.decoding.beam import BeamSearch, Hypothesis, beam_search
from gpt2core.text.tokenizer import printable, token_bytes

# What a node of the tree is, for its colour and its hover text.
WINNER, KEPT, FINISHED, RANKED, UNRANKED = "best path", "kept", "finished", "ranked, not kept", "not ranked"
PROMPT_TAIL_CHARS = 40      # the hover's "text so far" starts with at most this much of the prompt
MAX_ROWS = 110              # a taller tree leaves out each beam's extra alternatives: only the ranked candidates


@dataclass
class TreeNode:
    step: int                   # 0 for the prompt (the root), then 1 for the first new token, ...
    parent: int                 # index of the parent in BeamTree.nodes; -1 for the root
    row: float                  # vertical place in the drawing (0 at the top; a parent sits between its children)
    token: str                  # printable token (␣ for a space); the root: the prompt's end
    text: str                   # the continuation so far, this token included
    token_logprob: float
    cum_logprob: float
    score: float                # cum_logprob / length ** length_penalty
    status: str                 # WINNER, KEPT, FINISHED, RANKED, UNRANKED ("" for the root)
    rank: int                   # rank among the step's 2W candidates; -1: not one of them


@dataclass
class FinishedText:
    text: str
    n_tokens: int
    cum_logprob: float
    score: float
    ends_with_eos: bool


@dataclass
class BeamTree:
    prompt_text: str
    width: int
    length_penalty: float
    steps: int
    shown_per_beam: int         # each beam's this many likeliest next tokens are drawn, plus every candidate
                                # (0 where the tree would be taller than MAX_ROWS with them)
    nodes: list[TreeNode]
    finished: list[FinishedText]   # best score first
    stop_reason: str
    hypotheses_recorded: int    # nodes the search recorded, before the drawing left some out
    vocab_size: int

    @property
    def n_candidates(self) -> int:
        return 2 * self.width

    @property
    def best(self) -> FinishedText:
        return self.finished[0]


def status_of(h: Hypothesis) -> str:
    if h.winner:
        return WINNER
    if h.finished:
        return FINISHED
    if h.kept:
        return KEPT
    return RANKED if h.candidate else UNRANKED


def shown_hypotheses(search: BeamSearch, per_beam: int) -> list[Hypothesis]:
    """Each beam's ``per_beam`` likeliest next tokens at each step, and every one of the step's candidates
    (the kept, finished and winning ones are all candidates). The search records a beam's tokens likeliest first."""
    shown, seen = [], {}
    for h in search.hypotheses:
        key = (h.step, h.beam)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] <= per_beam or h.candidate:
            shown.append(h)
    return shown


def layout_rows(children: dict[int, list[int]], root: int) -> dict[int, float]:
    """A tidy tree: leaves one row apart in depth-first order, each parent midway between its first and
    last child, so no two nodes of one step share a row."""
    rows, next_leaf = {}, 0
    stack = [(root, False)]
    while stack:                       # iterative: 32 steps deep is fine for recursion, but this reads as well
        node, done = stack.pop()
        kids = children.get(node, [])
        if not kids:
            rows[node], next_leaf = float(next_leaf), next_leaf + 1
        elif done:
            rows[node] = (rows[kids[0]] + rows[kids[-1]]) / 2
        else:
            stack.append((node, True))
            stack.extend((k, False) for k in reversed(kids))
    return rows


def _laid_out(search: BeamSearch, per_beam: int):
    """The hypotheses drawn, their node index (0 is the root) and rows."""
    shown = shown_hypotheses(search, per_beam)
    index = {h.id: i + 1 for i, h in enumerate(shown)}
    children: dict[int, list[int]] = {}
    for h in shown:   # a beam's children likeliest first: the tree reads best-at-top within each parent
        children.setdefault(index.get(h.parent, 0), []).append(index[h.id])
    for kids in children.values():
        kids.sort(key=lambda i: -shown[i - 1].cum_logprob)
    return shown, index, layout_rows(children, 0)


def beam_tree(model: GPT2, ids: list[int], prompt_text: str, width: int, max_new_tokens: int,
              length_penalty: float, early_stopping: bool, shown_per_beam: int = 2,
              between_steps=None) -> BeamTree:
    search = beam_search(model, ids, width, max_new_tokens, length_penalty, early_stopping,
                         per_beam=shown_per_beam, between_steps=between_steps)
    shown, index, rows = _laid_out(search, shown_per_beam)
    if shown_per_beam and max(rows.values()) + 1 > MAX_ROWS:
        shown_per_beam = 0
        shown, index, rows = _laid_out(search, 0)
    tail = prompt_text[-PROMPT_TAIL_CHARS:]
    nodes = [TreeNode(0, -1, rows[0], ("…" if len(prompt_text) > len(tail) else "") + tail, "", 0.0, 0.0, 0.0,
                      "", -1)]
    for h in shown:
        path = search.path(h.id)
        nodes.append(TreeNode(h.step + 1, index.get(h.parent, 0), rows[index[h.id]], printable(token_bytes(h.token_id)),
                              decode([p.token_id for p in path]), h.token_logprob, h.cum_logprob, h.score,
                              status_of(h), h.rank))
    finished = [FinishedText(decode(f.token_ids), len(f.token_ids), f.cum_logprob, f.score,
                             f.token_ids[-1] == search.eos_token_id) for f in search.finished]
    return BeamTree(prompt_text, width, search.length_penalty, search.steps, shown_per_beam, nodes, finished,
                    search.stop_reason, len(search.hypotheses), model.config.vocab_size)


# ---- greedy, sampling and beam search side by side -------------------------------------------------

@dataclass
class Continuation:
    method: str                 # "greedy", "sampling", "beam search"
    settings: str               # what it was run with, in words
    token_ids: list[int]
    text: str
    token_logprobs: list[float] = field(default_factory=list)   # under the model itself, no filters

    @property
    def total_logprob(self) -> float:
        return sum(self.token_logprobs)

    @property
    def mean_logprob(self) -> float:
        return self.total_logprob / len(self.token_logprobs) if self.token_logprobs else float("nan")


def continuation_logprobs(model: GPT2, ids: list[int], new: list[int]) -> list[float]:
    """log p of each new token under the model (temperature 1, no filters), from one forward pass without
    a cache: every method is scored the same way."""
    if not new:
        return []
    with torch.no_grad():
        logits = model(torch.tensor([ids + new], device=next(model.parameters()).device))[0]   # (T, V)
        logp = torch.log_softmax(logits[len(ids) - 1:-1].float(), -1)                         # (n_new, V)
    return logp.gather(1, torch.tensor(new, device=logp.device)[:, None])[:, 0].tolist()


def compare_continuations(model: GPT2, ids: list[int], max_new_tokens: int, temperature: float, top_k: int,
                          top_p: float, seed: int, width: int, length_penalty: float,
                          early_stopping: bool, between_steps=None) -> list[Continuation]:
    """The same prompt continued three ways, each for at most ``max_new_tokens`` and ending at
    <|endoftext|>; the prompt and the new tokens must fit the context (the caller crops the prompt)."""
    greedy = generate(model, ids, max_new_tokens, temperature=0.0)
    sampled = generate(model, ids, max_new_tokens, temperature=float(temperature), top_k=int(top_k) or None,
                       top_p=None if top_p >= 1 else float(top_p), seed=int(seed))
    beam = beam_search(model, ids, width, max_new_tokens, length_penalty, early_stopping,
                       between_steps=between_steps).best.token_ids
    filters = [f"temperature {temperature:g}"] + ([f"top-k {int(top_k)}"] if top_k else []) \
        + ([f"top-p {top_p:g}"] if top_p < 1 else []) + [f"seed {int(seed)}"]
    rows = [("greedy", "the likeliest token each step", greedy),
            ("sampling", ", ".join(filters), sampled),
            ("beam search", f"width {width}, length penalty {length_penalty:g}"
                            f"{', early stopping' if early_stopping else ''}", beam)]
    return [Continuation(method, settings, new, decode(new), continuation_logprobs(model, ids, new))
            for method, settings, new in rows]
