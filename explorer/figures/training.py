"""The Train tab's loss curve: per-step training loss and the validation loss at each evaluation."""
from __future__ import annotations

import math

import plotly.graph_objects as go

from .common import style

TRAIN_COLOR, VAL_COLOR, BASELINE_COLOR = "#9ecae1", "#d62728", "#888888"


def _round(values, digits: int = 4) -> list:
    return [None if v is None or not math.isfinite(v) else round(float(v), digits) for v in values]


def loss_curve(train_steps, train_losses, eval_steps, val_losses, total_steps: int | None = None,
               baseline: float | None = None) -> go.Figure:
    """Line of the loss at every training step, markers for the validation loss at each eval.

    ``baseline`` (e.g. ln of the vocabulary size) is drawn as a dotted line: the loss of a model
    that guesses every token with the same probability. ``total_steps`` fixes the x range so the
    curve grows from left to right while training runs.
    """
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=list(train_steps), y=_round(train_losses), mode="lines", name="training loss (each step)",
        line=dict(color=TRAIN_COLOR, width=1.5),
        hovertemplate="step %{x}<br>training loss %{y:.3f}<extra></extra>"))
    val = _round(val_losses)
    fig.add_trace(go.Scatter(
        x=list(eval_steps), y=val, mode="lines+markers", name="validation loss (held-out text)",
        line=dict(color=VAL_COLOR, width=2), marker=dict(size=8),
        customdata=[None if v is None else round(math.exp(min(v, 50)), 1) for v in val],
        hovertemplate="step %{x}<br>validation loss %{y:.3f}<br>perplexity %{customdata}<extra></extra>"))
    if baseline is not None:
        fig.add_hline(y=round(baseline, 4), line=dict(color=BASELINE_COLOR, dash="dot", width=1),
                      annotation_text=f"guessing uniformly: {baseline:.2f}",
                      annotation_position="bottom right")
    fig.update_xaxes(title="training step", range=[0, total_steps] if total_steps else None)
    fig.update_yaxes(title="loss (cross-entropy, nats per token)", rangemode="tozero")
    # Bottom left is empty: the curve starts high and falls as it moves right.
    fig.update_layout(legend=dict(x=0.01, y=0.02, xanchor="left", yanchor="bottom",
                                  bgcolor="rgba(255,255,255,0.8)"))
    last = next((v for v in reversed(val) if v is not None), None)
    title = "Loss while training" + (f" (validation loss now {last:.2f})" if last is not None else "")
    return style(fig, title, height=380)
