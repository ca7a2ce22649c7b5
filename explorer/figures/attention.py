"""Attention tab figures: one head's pattern, the grid of all heads, one query token across heads."""
from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
from plotly.colors import get_colorscale

from .common import DIVERGING, SEQUENTIAL, layout, unique_labels

MASK_GREY = "#d0d0d0"        # cells a token may not look at (keys in its future)
SELECT_COLOUR = "#e4572e"    # outline of the selected head / query
MASK_NOTE = "future tokens: masked"
GRID_MAX_CELLS = 32          # thumbnails are pooled to at most this many rows/columns
GRID_MIN_CELLS = 16          # ... and short prompts are drawn with each cell repeated up to this size
# Grid thumbnails are sent as whole percents (one byte per cell); two codes above 100 mark masked
# cells and the gaps between thumbnails, so the whole grid is a single light uint8 heatmap.
_MASKED_CODE, _GAP_CODE = 101, 102


def _tokens(tokens: list[str]) -> list[str]:
    """Token strings safe in plotly's pseudo-HTML text (a token like <0x0A> would read as a tag)."""
    return [html.escape(t, quote=False) for t in tokens]


def _r(a, digits: int = 4) -> np.ndarray:
    return np.round(np.asarray(a, dtype=np.float64), digits).astype(np.float32)


def _mask_legend() -> go.Scatter:
    """An empty trace whose only job is the legend entry explaining the grey cells."""
    return go.Scatter(x=[None], y=[None], mode="markers", name=MASK_NOTE, hoverinfo="skip",
                      marker=dict(symbol="square", size=14, color=MASK_GREY, line=dict(color="#999", width=1)))


def _heatmap_height(n_rows: int) -> int:
    return int(min(900, max(380, 160 + 11 * n_rows)))


def attention_heatmap(matrix: np.ndarray, tokens: list[str], title: str, scores: bool = False,
                      query: int | None = None) -> go.Figure:
    """Queries (rows) x keys (columns). Masked (future) cells are NaN and show the grey background.

    ``scores`` False: weights on a sequential 0..1 scale; True: pre-softmax scores, diverging around 0.
    ``query`` outlines that query's row.
    """
    m = np.asarray(matrix, dtype=np.float64).copy()
    T = m.shape[0]
    if m.shape != (T, T) or len(tokens) != T:
        raise ValueError(f"need a square (T, T) matrix with T token labels, got {m.shape} and {len(tokens)}")
    m[np.triu(np.ones((T, T), dtype=bool), k=1)] = np.nan
    labels = unique_labels(_tokens(tokens))
    if scores:
        finite = m[np.isfinite(m)]
        top = float(np.abs(finite).max()) if finite.size else 1.0
        scale = dict(colorscale=DIVERGING, zmid=0, zmin=-top, zmax=top, colorbar=dict(title="score"))
        hover = "%{y} ← %{x}: score %{z:.3f}<extra></extra>"
    else:
        scale = dict(colorscale=SEQUENTIAL, zmin=0, zmax=1, colorbar=dict(title="weight"))
        hover = "%{y} ← %{x}: %{z:.3f}<extra></extra>"
    shapes = [] if query is None else [dict(type="rect", x0=-0.5, x1=query + 0.5, y0=query - 0.5, y1=query + 0.5,
                                            line=dict(color=SELECT_COLOUR, width=2))]
    return go.Figure([go.Heatmap(z=_r(m), x=labels, y=labels, hoverongaps=False, hovertemplate=hover,
                                 name="scores" if scores else "weights", **scale), _mask_legend()],
                     layout(title, _heatmap_height(T), shapes=shapes, plot_bgcolor=MASK_GREY, showlegend=True,
                            legend=dict(orientation="h", x=1, xanchor="right", y=1.0, yanchor="bottom"),
                            xaxis=dict(type="category", title="key: the token looked at", tickangle=-45,
                                       showgrid=False, tickfont=dict(size=10)),
                            yaxis=dict(type="category", title="query: the token looking", autorange="reversed",
                                       showgrid=False, tickfont=dict(size=10))))


def _grid_colorscale() -> list:
    """Sequential colours for codes 0..100 (percent), grey for masked (101), white for gaps (102)."""
    top = float(_GAP_CODE)
    scale = [[pos * 100 / top, colour] for pos, colour in get_colorscale(SEQUENTIAL)]
    return scale + [[100.4 / top, MASK_GREY], [101.6 / top, MASK_GREY], [101.7 / top, "white"], [1.0, "white"]]


def head_grid(pooled: np.ndarray, step: int, selected: tuple[int, int] | None = None) -> go.Figure:
    """Every head of every layer as a small thumbnail: layers are rows, heads are columns.

    ``pooled`` is (L, H, c, c) from compute.attention.pool_patterns (NaN = masked); ``step`` is how
    many tokens each thumbnail cell stands for. One uint8 heatmap; the gaps between tiles are cells
    too (wider between rows, to leave room for the "L{l} H{h}" titles).
    """
    p = np.asarray(pooled, dtype=np.float64)
    if p.shape[-1] < GRID_MIN_CELLS:          # short prompts: blow each cell up so tiles stay visible
        k = -(-GRID_MIN_CELLS // p.shape[-1])
        p = p.repeat(k, axis=-1).repeat(k, axis=-2)
    L, H, c, _ = p.shape
    gap_x, gap_y = max(1, round(c * 0.12)), max(2, round(c * 0.4))
    sx, sy = c + gap_x, c + gap_y                  # tile pitch in cells
    codes = np.full((L * sy, H * sx - gap_x), _GAP_CODE, dtype=np.uint8)
    tiles = np.where(np.isnan(p), _MASKED_CODE, np.clip(np.rint(np.nan_to_num(p) * 100), 0, 100)).astype(np.uint8)
    for layer in range(L):
        for head in range(H):
            codes[layer * sy + gap_y:layer * sy + gap_y + c, head * sx:head * sx + c] = tiles[layer, head]
    titles = [dict(x=head * sx + (c - 1) / 2, y=layer * sy + gap_y - 0.6, text=f"L{layer} H{head}", showarrow=False,
                   yanchor="bottom", font=dict(size=9, color="#444"))
              for layer in range(L) for head in range(H)]
    more = {}
    if selected is not None:
        layer, head = selected
        more["shapes"] = [dict(type="rect", x0=head * sx - 0.5 - gap_x / 2, x1=head * sx + c - 0.5 + gap_x / 2,
                               y0=layer * sy - 0.5 + 0.25 * gap_y, y1=layer * sy + gap_y + c - 0.5 + 0.25 * gap_y,
                               line=dict(color=SELECT_COLOUR, width=3))]
    pooled_note = f"; each cell = {step}×{step} tokens" if step > 1 else ""
    title = f"Every head: {L} layers (rows) × {H} heads (columns){pooled_note}"
    # Made without plotly's validation: checking the L x H titles one property at a time took 15-45 ms a request
    # (GPT-2: 144 titles), a quarter of the forward pass the grid is drawn from. Its arguments are fixed here, not
    # the user's, and tests/test_attention_tab.py checks that plotly's validation gives the same figure.
    return go.Figure(
        [go.Heatmap(z=codes, zmin=0, zmax=_GAP_CODE, colorscale=_grid_colorscale(), showscale=False, hoverinfo="skip",
                    name="all heads"), _mask_legend()],
        layout(title, int(min(1000, max(420, 150 + 80 * L))), annotations=titles, **more,
               xaxis=dict(visible=False, range=[-0.5 - gap_x, H * sx - gap_x - 0.5 + gap_x], constrain="domain"),
               yaxis=dict(visible=False, range=[L * sy - 0.5 + gap_y / 2, -0.5], scaleanchor="x", constrain="domain"),
               showlegend=True, legend=dict(orientation="h", x=1, xanchor="right", y=1.0, yanchor="bottom")),
        _validate=False)


def query_heads(rows: np.ndarray, tokens: list[str], query: int, layer: int,
                selected_head: int | None = None) -> go.Figure:
    """Heads (rows) x the keys one query token may see (columns): where that token looks, per head."""
    rows = np.asarray(rows, dtype=np.float64)
    H, n_keys = rows.shape
    if n_keys != query + 1 or len(tokens) <= query:
        raise ValueError(f"need query + 1 = {query + 1} key columns and labels, got {n_keys} and {len(tokens)}")
    shown = _tokens(tokens)
    x = unique_labels(shown)[:query + 1]
    y = [f"head {h}" for h in range(H)]
    shapes = [] if selected_head is None else [
        dict(type="rect", x0=-0.5, x1=query + 0.5, y0=selected_head - 0.5, y1=selected_head + 0.5,
             line=dict(color=SELECT_COLOUR, width=2))]
    return go.Figure(
        go.Heatmap(z=_r(rows), x=x, y=y, colorscale=SEQUENTIAL, zmin=0, zmax=1, colorbar=dict(title="weight"),
                   meta=f"{query}:{shown[query]}", name="weights",
                   hovertemplate="%{y}: %{meta} ← %{x}: %{z:.3f}<extra></extra>"),
        layout(f"Layer {layer}: where token {query} “{shown[query]}” looks, head by head",
               int(max(340, 200 + 28 * H)), shapes=shapes,
               xaxis=dict(type="category", title="key: the token looked at", tickangle=-45, tickfont=dict(size=10)),
               yaxis=dict(type="category", autorange="reversed")))
