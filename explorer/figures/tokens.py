"""Tokenizer tab views: token chips (HTML), coverage and tokens-per-word plots, the training-window grid."""
from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go

from gpt2core.text.tokenizer import TokenInfo

from .common import style

# (background, border) pairs; token k gets PALETTE[k % len(PALETTE)] in the chips and the window grid.
PALETTE = [("#fde2e4", "#e5989b"), ("#dbe7f5", "#7fa7d9"), ("#e2f0cb", "#9bc17a"), ("#fff1c1", "#e0b84f"),
           ("#e8dff5", "#a88fd1"), ("#d4eef4", "#6fb8c9"), ("#ffe0c7", "#e29a62"), ("#f0e0d6", "#b99079")]
MAX_CELL = 8   # characters of a token shown inside a grid cell (the hover has all of it)

_BOX = "display:flex;flex-wrap:wrap;align-items:flex-start;gap:6px 3px;line-height:1.2;color:#222"
_CHIP = "display:inline-block;text-align:center;padding:1px 4px;border-radius:5px;background:{bg};border:{w}px {line} {bd}"
_TEXT = "font:15px monospace;white-space:pre"
_ID = "font:10px monospace;color:#555"
_PART = "font-size:10px;color:#8a3b00"
_BREAK = "flex-basis:100%;height:{h}"


def token_chips_html(infos: list[TokenInfo], partial_of: dict[int, str] | None = None) -> str:
    """Each token as a coloured chip: printable text on top, id below; newlines also break the line.

    ``partial_of`` maps a token position to the character(s) it holds only part of; those chips get a
    dashed border and a "part of '…'" label. Inline styles only (no script, no stylesheet).
    """
    partial_of = partial_of or {}
    parts = [f'<div style="{_BOX}">']
    for t in infos:
        bg, bd = PALETTE[t.index % len(PALETTE)]
        part = partial_of.get(t.index)
        dashed = part is not None or t.partial
        tip = (f"token #{t.index} · id {t.id} · bytes {t.bytes.hex(' ')} · characters {t.start}–{t.end}"
               + (f" · part of '{part}'" if part else ""))
        chip = _CHIP.format(bg=bg, bd=bd, w=2 if dashed else 1, line="dashed" if dashed else "solid")
        parts.append(f'<span style="{chip}" title="{html.escape(tip)}">'
                     f'<span style="{_TEXT}">{html.escape(t.text)}</span><br><span style="{_ID}">{t.id}</span>'
                     + (f'<br><span style="{_PART}">part of \'{html.escape(part)}\'</span>' if part else "")
                     + "</span>")
        newlines = t.bytes.count(b"\n")
        for k in range(newlines):   # the first newline breaks the line, further ones leave a gap
            parts.append(f'<div style="{_BREAK.format(h="0" if k == 0 else "0.8em")}"></div>')
    parts.append("</div>")
    return "".join(parts)


def coverage_lines(chars_after: np.ndarray, bytes_after: np.ndarray, tokens: list[str]) -> go.Figure:
    """Characters and bytes covered after each token: the slope is characters (bytes) per token."""
    n = np.arange(1, len(tokens) + 1)
    hover = [f"#{i} {_plain(t)}" for i, t in enumerate(tokens)]
    fig = go.Figure()
    for y, name, color in ((bytes_after, "UTF-8 bytes", "#e29a62"), (chars_after, "characters", "#4c78a8")):
        fig.add_trace(go.Scatter(
            x=n, y=np.asarray(y), mode="lines", name=name, line=dict(color=color, width=2), text=hover,
            hovertemplate=f"after %{{x}} tokens (last: %{{text}}): %{{y}} {name}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[0, len(tokens)], y=[0, len(tokens)], mode="lines", name="1 per token",
                             line=dict(color="#999", dash="dot", width=1), hoverinfo="skip"))
    fig.update_xaxes(title="tokens so far", rangemode="tozero")
    fig.update_yaxes(title="text covered", rangemode="tozero")
    fig.update_layout(legend=dict(orientation="h", y=1.02, yanchor="bottom", x=1, xanchor="right"))
    total_c = int(chars_after[-1]) if len(chars_after) else 0
    rate = total_c / len(tokens) if len(tokens) else 0.0
    return style(fig, f"{len(tokens)} tokens for {total_c} characters ({rate:.2f} per token)", height=340)


def tokens_per_word_bars(hist: dict[int, tuple[int, list[str]]]) -> go.Figure:
    """How many words need 1, 2, 3, ... tokens, with example words in the hover."""
    ks = sorted(hist)
    counts = [hist[k][0] for k in ks]
    examples = [_plain(", ".join(hist[k][1])) for k in ks]
    fig = go.Figure(go.Bar(
        x=[f"{k} token{'s' if k != 1 else ''}" for k in ks], y=counts, customdata=examples,
        marker_color=[PALETTE[(k - 1) % len(PALETTE)][1] for k in ks], text=counts, textposition="auto",
        hovertemplate="%{y} words need %{x}<br>e.g. %{customdata}<extra></extra>"))
    fig.update_xaxes(title="tokens per word", type="category")
    fig.update_yaxes(title="words")
    total = sum(counts)
    return style(fig, f"Tokens per word ({total} word{'s' if total != 1 else ''})", height=340)


def _plain(text: str) -> str:
    """Plotly reads "<...>" in labels as markup; escape it so "<0xF0>" shows as written."""
    return html.escape(text, quote=False)


def _cell(text: str) -> str:
    return _plain(text if len(text) <= MAX_CELL else text[:MAX_CELL - 1] + "…")


def window_grid(inputs: list[list[int]], targets: list[list[int]], starts: list[int], tokens: list[str]) -> go.Figure:
    """Two rows per window (input, target) and one column per position; cell colour = token position.

    A token keeps its colour (the same as its chip) wherever it appears, so the target row is visibly
    the input row moved one step to the left. ``tokens`` are the printable strings of the whole prompt.
    """
    P = len(PALETTE)
    z, text, hover, labels = [], [], [], []
    for w, (x, start) in enumerate(zip(inputs, starts)):
        for kind, shift in (("input", 0), ("target", 1)):
            pos = [start + j + shift for j in range(len(x))]
            z.append([p % P for p in pos])
            text.append([_cell(tokens[p]) for p in pos])
            ids = x if kind == "input" else targets[w]
            if kind == "input":
                hover.append([f"window {w + 1}, input {j}: {_plain(tokens[p])} (id {i}, token #{p})"
                              for j, (p, i) in enumerate(zip(pos, ids))])
            else:
                hover.append([f"window {w + 1}, target {j}: after input {j} comes {_plain(tokens[p])} "
                              f"(id {i}, token #{p})" for j, (p, i) in enumerate(zip(pos, ids))])
            labels.append(f"w{w + 1} {kind}")
    n = len(inputs[0]) if inputs else 0
    scale = []
    for k, (bg, _) in enumerate(PALETTE):
        scale += [[k / P, bg], [(k + 1) / P, bg]]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(n)), y=labels, text=text, texttemplate="%{text}", textfont=dict(size=11, color="#222"),
        customdata=hover, hovertemplate="%{customdata}<extra></extra>", colorscale=scale, zmin=-0.5, zmax=P - 0.5,
        showscale=False, xgap=2, ygap=1))
    for w in range(1, len(inputs)):   # a white band between windows
        fig.add_hline(y=2 * w - 0.5, line=dict(color="white", width=5))
    fig.update_yaxes(autorange="reversed", type="category", title=None)
    fig.update_xaxes(title="position in the window", dtick=1, side="top")
    fig.update_layout(plot_bgcolor="white")
    title = (f"First {len(inputs)} training windows: target = input shifted by one token" if inputs
             else "No window fits: the prompt is too short")
    fig = style(fig, title, height=120 + 26 * max(len(labels), 2))
    fig.update_layout(margin=dict(t=90))
    return fig
