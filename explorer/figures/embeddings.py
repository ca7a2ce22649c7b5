"""Embeddings tab figures: nearest tokens, a 2-D projection of token vectors, position similarities."""
from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go

from .common import DIVERGING, FONT, style, unique_labels


def _r(a, digits: int = 4) -> np.ndarray:
    return np.round(np.asarray(a, dtype=np.float64), digits).astype(np.float32)


def _safe(tokens: list[str]) -> list[str]:
    return [html.escape(t, quote=False) for t in tokens]


def neighbour_bars(tokens: list[str], similarities, query: str) -> go.Figure:
    """The nearest tokens, nearest on top, with their cosine similarity to the query token."""
    s = np.asarray(similarities, dtype=np.float64)
    fig = go.Figure(go.Bar(x=_r(s), y=unique_labels(_safe(tokens)), orientation="h", marker_color="#4c78a8",
                           text=[f"{v:.3f}" for v in s], textposition="outside", cliponaxis=False,
                           hovertemplate=f"%{{y}}: cosine %{{x:.4f}} with {html.escape(query, quote=False)}"
                                         "<extra></extra>"),
                    layout=dict(yaxis=dict(autorange="reversed", type="category"),
                                xaxis=dict(title=dict(text="cosine similarity"),
                                           range=[min(0.0, float(s.min()) * 1.1), 1.05])))
    return style(fig, f"Nearest tokens to {html.escape(query, quote=False)} in wte", height=90 + 28 * len(s))


def projection_scatter(coords, tokens: list[str], explained, title: str) -> go.Figure:
    """Token vectors on their first two principal components, each point labelled with its token."""
    c = np.asarray(coords, dtype=np.float64)
    e = np.asarray(explained, dtype=np.float64)
    shown = _safe(tokens)
    fig = go.Figure(go.Scatter(x=_r(c[:, 0]), y=_r(c[:, 1]), mode="markers+text", text=shown,
                               textposition="top center", marker=dict(size=8, color="#4c78a8"),
                               hovertemplate="%{text}<br>PC1 %{x:.3f}, PC2 %{y:.3f}<extra></extra>"),
                    layout=dict(xaxis=dict(title=dict(text=f"first principal component ({e[0]:.0%} of the variance)"),
                                           zeroline=True),
                                yaxis=dict(title=dict(text=f"second ({e[1]:.0%})"), zeroline=True)))
    return style(fig, title, height=520)


def position_heatmap(similarity, step: int, title: str) -> go.Figure:
    """Cosine similarity of position embeddings (rows and columns = positions, pooled by ``step``)."""
    s = np.asarray(similarity, dtype=np.float64)
    n = s.shape[0]
    starts = np.arange(n) * step
    ticks = [f"{a}" if step == 1 else f"{a}–{a + step - 1}" for a in starts]
    fig = go.Figure(go.Heatmap(z=_r(s, 3), x=ticks, y=ticks, colorscale=DIVERGING, zmid=0, zmin=-1, zmax=1,
                               colorbar=dict(thickness=10, title=dict(text="cos")),
                               hovertemplate="position %{y} vs %{x}: cosine %{z:.3f}<extra></extra>"),
                    layout=dict(yaxis=dict(autorange="reversed", type="category", title=dict(text="position"),
                                           scaleanchor="x", nticks=9),
                                xaxis=dict(type="category", title=dict(text="position"), nticks=9)))
    return style(fig, title, height=480)


def position_norms(norms, untrained_norms) -> go.Figure:
    """‖wpe row‖ at each position, this model's beside an untrained table's of the same shape."""
    n, u = np.asarray(norms, dtype=np.float64), np.asarray(untrained_norms, dtype=np.float64)
    fig = go.Figure(layout=dict(font=FONT, xaxis=dict(title=dict(text="position")),
                                yaxis=dict(title=dict(text="‖wpe[position]‖"), rangemode="tozero")))
    fig.add_trace(go.Scatter(y=_r(n), mode="lines", name="this model", line=dict(color="#4c78a8"),
                             hovertemplate="position %{x}: ‖wpe‖ %{y:.4g}<extra>this model</extra>"))
    fig.add_trace(go.Scatter(y=_r(u), mode="lines", name="untrained (random init)", line=dict(color="#bbbbbb"),
                             hovertemplate="position %{x}: ‖wpe‖ %{y:.4g}<extra>untrained</extra>"))
    return style(fig, "Each position's norm", height=320)
