"""Compare tab views: both next-token distributions in one chart, both attention patterns, their difference."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .common import DIVERGING, SEQUENTIAL, style, unique_labels
from .sampling_view import plot_text

COLOR_A, COLOR_B = "#4c78a8", "#f58518"


def distribution_pair_bars(tokens: list[str], p_a, p_b, label_a: str, label_b: str) -> go.Figure:
    """Both probabilities of each token, one row per token; rows in the order given (by difference)."""
    names = unique_labels([plot_text(t) for t in tokens])
    p_a, p_b = np.asarray(p_a, dtype=float), np.asarray(p_b, dtype=float)
    hover = [[plot_text(t), f"{a:.2%}", f"{b:.2%}", f"{(a - b) * 100:+.2f}"] for t, a, b in zip(tokens, p_a, p_b)]
    fig = go.Figure()
    for p, label, color in ((p_a, label_a, COLOR_A), (p_b, label_b, COLOR_B)):
        fig.add_trace(go.Bar(
            y=names, x=np.round(p, 6), name=plot_text(label), orientation="h", marker_color=color,
            customdata=hover,
            hovertemplate="%{customdata[0]}<br>A: %{customdata[1]} · B: %{customdata[2]}<br>"
                          "A − B: %{customdata[3]} points<extra></extra>"))
    fig.update_layout(barmode="group", legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0))
    fig.update_yaxes(autorange="reversed", type="category", title=None)
    top = float(max(p_a.max(initial=0), p_b.max(initial=0)))
    fig.update_xaxes(title="probability of the next token", tickformat=".0%" if top >= 0.1 else ".1%",
                     rangemode="tozero")
    fig = style(fig, "Next token: both distributions (top: A more likely · bottom: B more likely)",
                height=140 + 34 * max(len(tokens), 1))
    fig.update_layout(margin=dict(t=90))
    return fig


def _masked(pattern: np.ndarray) -> np.ndarray:
    z = np.asarray(pattern, dtype=np.float32).copy()
    z[np.triu(np.ones(z.shape, dtype=bool), k=1)] = np.nan   # future keys: not allowed, drawn as a gap
    return z


def attention_pair(pattern_a: np.ndarray, pattern_b: np.ndarray, tokens_a: list[str], tokens_b: list[str],
                   title_a: str, title_b: str) -> go.Figure:
    """The two attention patterns side by side, one 0 → 1 colour scale (rows = queries, columns = keys)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=(plot_text(title_a), plot_text(title_b)),
                        horizontal_spacing=0.12)
    for col, (pattern, tokens) in enumerate(((pattern_a, tokens_a), (pattern_b, tokens_b)), start=1):
        z = _masked(pattern)
        labels = unique_labels([plot_text(t) for t in tokens])
        fig.add_trace(go.Heatmap(z=z, x=labels, y=labels, zmin=0, zmax=1, colorscale=SEQUENTIAL,
                                 showscale=col == 2, colorbar=dict(title="weight"),
                                 hovertemplate="query %{y} → key %{x}: %{z:.3f}<extra></extra>"),
                      row=1, col=col)
        fig.update_yaxes(autorange="reversed", type="category", row=1, col=col)
        fig.update_xaxes(type="category", tickangle=-60, row=1, col=col)
    fig.update_layout(plot_bgcolor="#e8e8e8")
    n = max(len(tokens_a), len(tokens_b))
    return style(fig, None, height=min(260 + 16 * n, 900))


def attention_difference(diff: np.ndarray | None, tokens_a: list[str], tokens_b: list[str],
                         title: str) -> go.Figure:
    """B − A of two same-shaped patterns on a diverging scale centred on 0; a note when shapes differ."""
    if diff is None:
        fig = go.Figure()
        fig.add_annotation(text=f"The prompts have {len(tokens_a)} and {len(tokens_b)} tokens:<br>"
                                "a difference needs the same number of tokens.",
                           showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font=dict(size=14))
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        return style(fig, "No difference drawn", height=220)
    z = _masked(diff)
    bound = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
    bound = bound or 1.0
    labels = [f"{i}:{plot_text(a)}" + ("" if a == b else f"→{plot_text(b)}")
              for i, (a, b) in enumerate(zip(tokens_a, tokens_b))]
    fig = go.Figure(go.Heatmap(z=z, x=labels, y=labels, colorscale=DIVERGING, zmid=0, zmin=-bound, zmax=bound,
                               hovertemplate="query %{y} → key %{x}: B − A = %{z:+.3f}<extra></extra>",
                               colorbar=dict(title="B − A")))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category", tickangle=-60)
    fig.update_layout(plot_bgcolor="#e8e8e8")
    return style(fig, plot_text(title), height=min(300 + 16 * len(labels), 900))
