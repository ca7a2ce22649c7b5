"""Figures of the Circuits tab: head-type scores, the loss along a repeated sequence, and patching maps."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from .common import DIVERGING, SEQUENTIAL, style, unique_labels


def _r(a, digits: int = 4):
    return np.round(np.asarray(a, dtype=np.float64), digits)


def head_score_heatmap(scores: np.ndarray, title: str) -> go.Figure:
    """Layers (rows) x heads: a score in [0, 1] per head, on a sequential scale (NaN: nothing to score)."""
    scores = np.asarray(scores, dtype=np.float64)
    L, nh = scores.shape
    text = [["–" if np.isnan(v) else f"{v:.2f}" for v in row] for row in scores]
    fig = go.Figure(go.Heatmap(
        z=_r(scores), x=[f"H{h}" for h in range(nh)], y=[f"L{l}" for l in range(L)], zmin=0, zmax=1,
        colorscale=SEQUENTIAL, colorbar=dict(title="score"), text=text,
        texttemplate="%{text}" if L * nh <= 200 else "",
        hovertemplate="head %{y}.%{x}: score %{z:.3f}<extra></extra>"))
    fig.update_xaxes(title="head", type="category", showgrid=False)
    fig.update_yaxes(title="layer", type="category", autorange="reversed", showgrid=False)
    return style(fig, title, height=int(min(600, max(260, 110 + 30 * L))))


def repeat_loss_line(loss: np.ndarray, tokens: list[str], repeat_from: int | None, title: str) -> go.Figure:
    """Next-token loss at each position (predicting token i + 1 from tokens 0..i); where a repeated sequence's
    second copy starts, a line, so the drop that copying makes is plain to see."""
    loss = np.asarray(loss, dtype=np.float64)
    x = np.arange(1, len(loss) + 1)
    hover = [f"predicting {i}: {tokens[i]!s} after {tokens[i - 1]!s}" for i in x]
    fig = go.Figure(go.Scatter(x=x, y=_r(loss), mode="lines+markers", marker=dict(size=4), line=dict(width=1.5),
                               text=hover, hovertemplate="%{text}<br>loss %{y:.2f} nats<extra></extra>",
                               name="loss"))
    if repeat_from is not None:
        fig.add_vline(x=repeat_from, line=dict(color="#d62728", dash="dash"),
                      annotation_text="second copy starts", annotation_position="top right")
    fig.update_xaxes(title="position of the predicted token")
    fig.update_yaxes(title="loss (nats)", rangemode="tozero")
    return style(fig, title, height=320)


def patch_position_heatmap(scores: np.ndarray, tokens: list[str], title: str) -> go.Figure:
    """Layers (rows) x positions: the normalised metric after patching that one activation (1 = clean,
    0 = corrupted), on a diverging scale centred on 0."""
    scores = np.asarray(scores, dtype=np.float64)
    L, T = scores.shape
    top = max(1.0, float(np.nanmax(np.abs(scores))) if scores.size else 1.0)
    labels = unique_labels(tokens)
    fig = go.Figure(go.Heatmap(
        z=_r(scores), x=labels, y=[f"L{l}" for l in range(L)], zmid=0, zmin=-top, zmax=top, colorscale=DIVERGING,
        colorbar=dict(title="restored"), text=[[f"{v:.2f}" for v in row] for row in scores],
        texttemplate="%{text}" if L * T <= 160 else "",
        customdata=[[tokens[t] for t in range(T)] for _ in range(L)],
        hovertemplate="layer %{y}, position %{x}<br>token %{customdata}<br>restored %{z:.3f}<extra></extra>"))
    fig.update_xaxes(title="position (token of the clean prompt)", type="category", tickangle=-45, showgrid=False)
    fig.update_yaxes(title="layer", type="category", autorange="reversed", showgrid=False)
    return style(fig, title, height=int(min(600, max(280, 130 + 30 * L))))


def patch_head_heatmap(scores: np.ndarray, title: str) -> go.Figure:
    """Layers x heads: the normalised metric after patching one head's output at every position."""
    scores = np.asarray(scores, dtype=np.float64)
    L, nh = scores.shape
    top = max(1.0, float(np.nanmax(np.abs(scores))) if scores.size else 1.0)
    fig = go.Figure(go.Heatmap(
        z=_r(scores), x=[f"H{h}" for h in range(nh)], y=[f"L{l}" for l in range(L)], zmid=0, zmin=-top, zmax=top,
        colorscale=DIVERGING, colorbar=dict(title="restored"), text=[[f"{v:.2f}" for v in row] for row in scores],
        texttemplate="%{text}" if L * nh <= 200 else "",
        hovertemplate="head %{y}.%{x}: restored %{z:.3f}<extra></extra>"))
    fig.update_xaxes(title="head", type="category", showgrid=False)
    fig.update_yaxes(title="layer", type="category", autorange="reversed", showgrid=False)
    return style(fig, title, height=int(min(600, max(260, 110 + 30 * L))))
