"""The BPE section's views: the prompt's chunks (HTML) and the merge ladder (one row per merge step)."""
from __future__ import annotations

import html

import plotly.graph_objects as go

from .common import style

_BOX = "display:flex;flex-wrap:wrap;gap:4px 3px;line-height:1.2;color:#222"
_CHIP = ("display:inline-block;text-align:center;padding:1px 4px;border-radius:5px;"
         "background:{bg};border:{w}px solid {bd}")
_TEXT = "font:14px monospace;white-space:pre"
_INDEX = "font:10px monospace;color:#555"
MERGED = "#e29a62"      # the piece made in this step
OTHER = "#dbe7f5"       # every other piece
START = "#eeeeee"       # the single bytes before any merge


def chunks_html(chunks: list[str], selected: int) -> str:
    """Each chunk (printable text) as a chip with its index under it; the selected one outlined."""
    parts = [f'<div style="{_BOX}">']
    for i, text in enumerate(chunks):
        sel = i == selected
        chip = _CHIP.format(bg="#ffe0c7" if sel else "#f3f3f3", bd="#c0504d" if sel else "#ccc", w=2 if sel else 1)
        parts.append(f'<span style="{chip}" title="chunk {i}: {html.escape(text)}">'
                     f'<span style="{_TEXT}">{html.escape(text)}</span><br>'
                     f'<span style="{_INDEX}">{i}</span></span>')
    parts.append("</div>")
    return "".join(parts)


def _plain(text: str) -> str:
    return html.escape(text, quote=False)


def merge_ladder(start: tuple[str, ...], steps: list[tuple[str, str, int, tuple[str, ...]]], sizes) -> go.Figure:
    """The sequence after every merge, one row per step, each piece a bar as wide as its bytes.

    ``steps``: (left, right, rank, pieces after) per merge; ``sizes(piece) -> bytes`` gives a piece's
    width. The piece each step made is highlighted, so the eye follows the pieces growing downwards.
    """
    rows = [("start", None, start, "")]
    for left, right, rank, pieces in steps:
        rows.append((f"{left} + {right}", rank, pieces, left + right))
    y, base, width, text, hover, color = [], [], [], [], [], []
    for r, (label, rank, pieces, made) in enumerate(rows):
        name = "start: the bytes" if r == 0 else f"{r}. {label}"
        x = 0
        for piece in pieces:
            n = sizes(piece)
            y.append(name)
            base.append(x)
            width.append(n)
            text.append(_plain(piece))
            color.append(START if r == 0 else MERGED if piece == made else OTHER)
            hover.append(f"{_plain(piece)} · {n} byte{'s' if n != 1 else ''}"
                         + (f" · step {r} merged {_plain(label)} (rank {rank} in vocab.bpe)" if r else ""))
            x += n
    fig = go.Figure(go.Bar(
        y=y, x=width, base=base, orientation="h", text=text, textposition="inside", insidetextanchor="middle",
        textangle=0, constraintext="none",
        marker=dict(color=color, line=dict(color="white", width=2)), customdata=hover,
        hovertemplate="%{customdata}<extra></extra>", textfont=dict(family="monospace", size=13)))
    fig.update_yaxes(autorange="reversed", type="category", title=None)
    fig.update_xaxes(title="bytes of the chunk", dtick=1 if len(start) <= 24 else None, showgrid=False)
    fig.update_layout(plot_bgcolor="white", bargap=0.15, uniformtext=dict(minsize=9, mode="hide"))
    n_steps = len(steps)
    title = (f"{len(start)} bytes → {len(rows[-1][2])} token{'s' if len(rows[-1][2]) != 1 else ''} "
             f"in {n_steps} merge{'s' if n_steps != 1 else ''} (orange: the piece each step made)")
    return style(fig, title, height=110 + 30 * len(rows))
