"""Walkthrough tab figures: one small picture per step of the forward pass, and the residual norms.

Pure: arrays in, plotly Figure out. Every picture is short (a strip, a few head rows, a histogram)
so that a block's sixteen steps fit on a screen. A view draws 22 of them, so each is made in one
constructor call: every later update_layout/update_axes validates again (about 7 ms a figure, not 1).
"""
from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go

from .common import DIVERGING, FONT, SEQUENTIAL, unique_labels

MASK_GREY = "#d9d9d9"
_BAR = dict(thickness=8, len=1.0, nticks=3)   # three ticks: more crowd a 60-pixel strip
STRIP_HEIGHT = 120
ROW_HEIGHT = 22      # per head row


def _r(a, digits: int = 4) -> np.ndarray:
    return np.round(np.asarray(a, dtype=np.float64), digits).astype(np.float32)


def _safe(tokens: list[str]) -> list[str]:
    """Token text safe in plotly's pseudo-HTML (a token may look like a tag)."""
    return [html.escape(t, quote=False) for t in tokens]


# The colour scales as plotly's validation spells them out (plotly.js knows no "RdBu_r"): the traces below are
# plain dicts, which nothing validates.
_SCALES = {name: [list(stop) for stop in go.Heatmap(colorscale=name).colorscale] for name in (DIVERGING, SEQUENTIAL)}


def _small(trace: dict, height: int, title: str | None = None, **layout) -> go.Figure:
    """One trace (a plain dict with its ``type``) in a short figure with the app's font; ``layout`` adds axes
    and the like.

    Made without plotly's validation, trace and figure: a view draws 22 of these, and validating them took
    40 ms on GPT-2 (a quarter of its forward pass), then 22 ms with the figure alone unvalidated, against 7 ms
    for none. What goes in is fixed here, and tests/test_walkthrough_tab.py checks that plotly's validation
    gives every kind of picture unchanged."""
    layout = dict(font=FONT, height=height, margin=dict(l=50, r=10, t=30 if title else 8, b=30), **layout)
    if title:
        layout["title"] = dict(text=title, x=0.01, xanchor="left", font=dict(size=12))
    return go.Figure(trace, layout=layout, _validate=False)


def _symmetric(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return max(float(np.abs(finite).max()) if finite.size else 0.0, 1e-6)


def vector_strip(values, title: str | None = None) -> go.Figure:
    """A vector as one row of coloured cells (red positive, blue negative), its index on the x axis."""
    v = np.asarray(values, dtype=np.float64).ravel()
    m = _symmetric(v)
    return _small(dict(type="heatmap", z=_r(v)[None, :], colorscale=_SCALES[DIVERGING], zmid=0, zmin=-m, zmax=m,
                       colorbar=_BAR, hovertemplate="dimension %{x}: %{z:.4g}<extra></extra>"),
                  STRIP_HEIGHT, title, yaxis=dict(visible=False),
                  xaxis=dict(title=dict(text=f"dimension (0 … {v.size - 1})", standoff=2)))


def head_rows(values, title: str | None = None) -> go.Figure:
    """(nh, hs): one row per head, the head's dimensions along x."""
    v = np.asarray(values, dtype=np.float64)
    m = _symmetric(v)
    return _small(dict(type="heatmap", z=_r(v), y=[f"head {h}" for h in range(v.shape[0])],
                       colorscale=_SCALES[DIVERGING], zmid=0, zmin=-m, zmax=m, colorbar=_BAR,
                       hovertemplate="%{y}, dimension %{x}: %{z:.4g}<extra></extra>"),
                  70 + ROW_HEIGHT * v.shape[0], title, yaxis=dict(autorange="reversed", type="category"),
                  xaxis=dict(title=dict(text="dimension within the head", standoff=2)))


def key_rows(values, tokens: list[str], probabilities: bool = False, title: str | None = None) -> go.Figure:
    """(nh, T): one row per head, one column per key token; masked keys (-inf) are grey gaps.

    ``probabilities`` draws 0 → 1 on the sequential scale; otherwise signed scores on the diverging one."""
    v = np.asarray(values, dtype=np.float64)
    z = np.where(np.isfinite(v), v, np.nan)
    if probabilities:
        scale = dict(colorscale=_SCALES[SEQUENTIAL], zmin=0, zmax=1)
    else:
        m = _symmetric(v)
        scale = dict(colorscale=_SCALES[DIVERGING], zmid=0, zmin=-m, zmax=m)
    labels = unique_labels(_safe(tokens))
    return _small(dict(type="heatmap", z=_r(z), x=labels, y=[f"head {h}" for h in range(v.shape[0])], **scale,
                       hoverongaps=False, colorbar=_BAR, hovertemplate="%{y} → key %{x}: %{z:.4g}<extra></extra>"),
                  110 + ROW_HEIGHT * v.shape[0], title, plot_bgcolor=MASK_GREY,
                  yaxis=dict(autorange="reversed", type="category"),
                  xaxis=dict(type="category", tickangle=-45, showgrid=False))


def logit_histogram(counts, edges, title: str | None = None) -> go.Figure:
    """How the vocabulary's logits spread: counts per bin (the bins' edges are given)."""
    counts, edges = np.asarray(counts), np.asarray(edges, dtype=np.float64)
    centres, widths = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    return _small(dict(type="bar", x=_r(centres), y=counts, width=_r(widths), marker=dict(color="#4c78a8"),
                       customdata=np.stack([_r(edges[:-1]), _r(edges[1:])], -1),
                       hovertemplate="logits %{customdata[0]:.3g} … %{customdata[1]:.3g}: %{y} tokens<extra></extra>"),
                  200, title, yaxis=dict(type="log", title=dict(text="tokens")), xaxis=dict(title=dict(text="logit")))


def top_tokens(tokens: list[str], probs, title: str | None = None) -> go.Figure:
    """The most likely next tokens, most likely on top, the token text on the axis and in the hover."""
    p = np.asarray(probs, dtype=np.float64)
    labels = unique_labels(_safe(tokens))
    return _small(dict(type="bar", x=_r(p), y=labels, orientation="h", marker=dict(color="#f58518"),
                       text=[f"{q:.1%}" for q in p], textposition="outside", cliponaxis=False,
                       hovertemplate="next token %{y}: p = %{x:.4f}<extra></extra>"),
                  80 + 26 * len(p), title, yaxis=dict(autorange="reversed", type="category"),
                  xaxis=dict(title=dict(text="probability"), range=[0, min(1.0, float(p.max()) * 1.25 + 1e-9)]))


def residual_norm_path(stages: list[str], norms, expanded: int | None = None) -> go.Figure:
    """The token's residual norm after the embedding and after each block; the expanded block is marked."""
    n = np.asarray(norms, dtype=np.float64)
    colours = ["#f58518" if expanded is not None and s == f"block {expanded}" else "#4c78a8" for s in stages]
    return _small(dict(type="scatter", x=stages, y=_r(n), mode="lines+markers", marker=dict(size=9, color=colours),
                       line=dict(color="#4c78a8"), hovertemplate="after %{x}: ‖x‖ = %{y:.4g}<extra></extra>"),
                  240, "The token's residual norm, block by block (the expanded block in orange)",
                  xaxis=dict(type="category", title=dict(text="residual stream after")),
                  yaxis=dict(title=dict(text="‖x‖ of the token"), rangemode="tozero"))
