"""What the Walkthrough tab shows: one token's path through the forward pass, from gpt2core.analysis.trace.

Arrays and text only (numpy, markdown), no plotting. The figures module draws each step's picture.
"""
from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpt2core import GPT2
from gpt2core.analysis.trace import Step, Trace, format_log, token_text, trace

from . import to_numpy

LOG_DIR = Path(tempfile.gettempdir()) / "gpt2-explorer-traces"
LOG_FILES_KEPT = 200          # older trace logs are deleted: one small file per distinct request
HISTOGRAM_BINS = 40


def walkthrough_run(model: GPT2, ids: list[int], position: int) -> Trace:
    """Every block's steps for one token (the tab shows one block at a time; the log has them all)."""
    return trace(model, ids, position)


def _f(x: float) -> str:
    return f"{x:+.4g}".replace("-", "−")


def _shape(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _code(text: str) -> str:
    """Inline code that survives backticks inside (a token may be one)."""
    return f"`` {text} ``"


def step_markdown(step: Step, number: int, position: int) -> str:
    """Name, formula, shape and the token's statistics of one step, computed, in three or four lines."""
    s = step.stats
    lines = [f"**{number}. {step.name}**  \n{_code(step.formula)}",
             f"shape {_shape(step.shape)} for the prompt; token {position}: {_shape(tuple(step.vector.shape))}",
             f"mean {_f(s['mean'])} · std {s['std']:.4g} · min {_f(s['min'])} · max {_f(s['max'])} · "
             f"‖v‖ {s['norm']:.4g}"]
    n = step.notes
    if "mean_in" in n:
        lines.append(f"before: mean {_f(n['mean_in'])}, std {n['std_in']:.4g} → after: mean {_f(n['mean_out'])}, "
                     f"std {n['std_out']:.4g}")
    if "masked_keys" in n:
        lines.append(f"{n['visible_keys']} keys visible, {n['masked_keys']} later ones masked "
                     "(statistics over the visible ones)" if n["masked_keys"] else
                     f"all {n['visible_keys']} keys visible: the last token sees every earlier one "
                     "(follow an earlier token to see the mask at work)")
    if "top" in n:
        lines.append("next token: " + ", ".join(f"{_code(text)} {p:.1%}" for _, text, p in n["top"]))
    return "  \n".join(lines)


def block_label(index: int, norm_in: float, norm_out: float) -> str:
    return f"block {index} · ‖x‖ {norm_in:.3g} → {norm_out:.3g}"


def block_choices(tr: Trace) -> list[tuple[str, int]]:
    """One line per block (its residual norm before and after), for the list that expands a block."""
    return [(block_label(b.index, b.norm_in, b.norm_out), b.index) for b in tr.blocks]


def residual_norms(tr: Trace) -> tuple[np.ndarray, list[str]]:
    """The token's residual norm after the embedding and after each block, with the stage names."""
    norms = [tr.blocks[0].norm_in] + [b.norm_out for b in tr.blocks]
    return np.array(norms), ["embedding"] + [f"block {b.index}" for b in tr.blocks]


@dataclass
class Picture:
    """What to draw for one step: kind "strip" (a vector), "heads" (nh rows over hs), "keys" (nh rows
    over the prompt's tokens), "histogram" (all logits) or "top" (the most likely next tokens)."""
    kind: str
    values: np.ndarray
    labels: list[str] | None = None     # keys: the token strings; top: the tokens
    edges: np.ndarray | None = None     # histogram: bin edges
    probabilities: bool = False         # keys: softmax weights (0 to 1), not signed scores


def picture(step: Step, tokens: list[str]) -> Picture:
    v = to_numpy(step.vector.float())
    if step.key == "final.logits":
        counts, edges = np.histogram(v, bins=HISTOGRAM_BINS)
        return Picture("histogram", counts, edges=edges)
    if step.key == "final.probs":
        top = step.notes["top"]
        return Picture("top", np.array([p for _, _, p in top]), [text for _, text, _ in top])
    if step.key.split(".", 2)[-1] in ("attn.scores", "attn.masked", "attn.pattern"):
        return Picture("keys", v, tokens[:v.shape[1]], probabilities=step.key.endswith("attn.pattern"))
    if v.ndim == 2:
        return Picture("heads", v)
    return Picture("strip", v)


def write_log(tr: Trace) -> tuple[str, Path]:
    """The trace as text, and a file of it to download (named by its content, so a repeat is reused)."""
    text = format_log(tr)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(text.encode()).hexdigest()[:12]
    path = LOG_DIR / f"trace-token{tr.position}-{digest}.txt"
    if not path.exists():
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=LOG_DIR, suffix=".part", delete=False) as f:
            f.write(text)
        Path(f.name).replace(path)      # whole or absent: a concurrent request never serves half a file
        old = sorted(LOG_DIR.glob("trace-*.txt"), key=lambda p: p.stat().st_mtime)[:-LOG_FILES_KEPT]
        for p in old:
            p.unlink(missing_ok=True)
    return text, path


def summary_markdown(tr: Trace, block: int) -> str:
    cfg, t = tr.config, tr.position
    top_id, top_text, top_p = tr.step("final.probs").notes["top"][0]
    return (f"Following token **{t}** {_code(token_text(tr.ids[t]))} (id {tr.ids[t]}) of {len(tr.ids)} through "
            f"{cfg.n_layer} blocks of width d = {cfg.n_embd} ({cfg.n_head} heads of {cfg.head_dim}). "
            f"Its residual vector grows from ‖x‖ {tr.blocks[0].norm_in:.3g} to {tr.blocks[-1].norm_out:.3g}; "
            f"the model's most likely next token is {_code(top_text)} ({top_p:.1%}). Block {block} is expanded below.")
