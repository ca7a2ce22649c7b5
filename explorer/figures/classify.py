"""The Train tab's genre classifier: class probabilities, the last token's attention, the training curve."""
from __future__ import annotations

import html
import math

import numpy as np
import plotly.graph_objects as go

from .common import style, unique_labels

CLASS_COLORS = ("#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e")
LOSS_COLOR, ACC_COLOR, BASELINE_COLOR, LAST_COLOR, ATTN_COLOR = "#9ecae1", "#d62728", "#888888", "#e4572e", "#6baed6"


def _r(values, digits: int = 4) -> list:
    return [None if v is None or not math.isfinite(v) else round(float(v), digits) for v in values]


def class_probabilities(labels: list[str], probs, title: str = "Class probabilities") -> go.Figure:
    """One horizontal bar per class, its probability written on it; the most likely class outlined."""
    p = _r(np.asarray(probs, dtype=np.float64))
    top = int(np.argmax(probs)) if len(p) else -1
    fig = go.Figure(go.Bar(
        x=p, y=list(labels), orientation="h", text=[f"{v:.0%}" for v in p], textposition="auto",
        marker=dict(color=[CLASS_COLORS[i % len(CLASS_COLORS)] for i in range(len(p))],
                    line=dict(color=["#111" if i == top else "rgba(0,0,0,0)" for i in range(len(p))], width=2)),
        hovertemplate="%{y}: %{x:.1%}<extra></extra>", name="probability"))
    fig.add_vline(x=round(1 / max(1, len(p)), 4), line=dict(color=BASELINE_COLOR, dash="dot", width=1),
                  annotation_text="equal chances", annotation_position="top")
    fig.update_xaxes(title="probability", range=[0, 1], tickformat=".0%")
    fig.update_yaxes(autorange="reversed")
    return style(fig, title, height=250)


def last_token_attention(tokens: list[str], weights, layer: int, head: int) -> go.Figure:
    """How the last token (the one the head reads) splits its attention over the line, in one head."""
    w = _r(np.asarray(weights, dtype=np.float64))
    T = len(w)
    shown = [html.escape(t, quote=False) for t in tokens]
    fig = go.Figure(go.Bar(
        x=unique_labels(shown), y=w, customdata=[[t, i] for i, t in enumerate(shown)],
        marker=dict(color=[LAST_COLOR if i == T - 1 else ATTN_COLOR for i in range(T)]),
        hovertemplate="token '%{customdata[0]}' (position %{customdata[1]}): weight %{y:.3f}<extra></extra>",
        name="attention weight"))
    fig.update_xaxes(type="category", title="the token looked at (the last one, which the head reads, in orange)",
                     tickangle=-45, tickfont=dict(size=10))
    fig.update_yaxes(title="attention weight", range=[0, 1])
    last = shown[-1] if shown else ""
    return style(fig, f"Layer {layer}, head {head}: where the last token '{last.strip() or last}' looks", height=330)


def training_curve(train_steps, losses, eval_steps, accuracies, baseline: float | None = None,
                   total_steps: int | None = None, chance_loss: float | None = None) -> go.Figure:
    """Training loss at each step (left axis) and held-out accuracy at each evaluation (right axis), with
    the majority-class baseline dotted on the accuracy axis and, dashed on the loss axis, the loss of
    equal chances."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=list(train_steps), y=_r(losses), mode="lines", name="training loss (each step)",
                             line=dict(color=LOSS_COLOR, width=1.5),
                             hovertemplate="step %{x}<br>loss %{y:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=list(eval_steps), y=_r(accuracies), mode="lines+markers", yaxis="y2",
                             name="held-out accuracy", line=dict(color=ACC_COLOR, width=2), marker=dict(size=7),
                             hovertemplate="step %{x}<br>held-out accuracy %{y:.1%}<extra></extra>"))
    if baseline is not None:
        fig.add_shape(type="line", xref="paper", x0=0, x1=1, yref="y2", y0=round(baseline, 4), y1=round(baseline, 4),
                      line=dict(color=BASELINE_COLOR, dash="dot", width=1))
        # Below the line: the accuracy it is there to be compared with runs mostly above it.
        fig.add_annotation(xref="paper", x=1, yref="y2", y=round(baseline, 4), xanchor="right", yanchor="top",
                           text=f"majority-class baseline {baseline:.0%}", showarrow=False, font=dict(size=11),
                           bgcolor="rgba(255,255,255,0.8)")
    if chance_loss is not None:
        fig.add_hline(y=round(chance_loss, 4), line=dict(color=LOSS_COLOR, dash="dash", width=1),
                      annotation_text=f"loss of equal chances ({chance_loss:.2f})", annotation_position="top left",
                      annotation_font=dict(size=11, color=LOSS_COLOR))
    fig.update_xaxes(title="training step", range=[0, total_steps] if total_steps else None)
    fig.update_layout(yaxis=dict(title="loss (cross-entropy)", rangemode="tozero"),
                      yaxis2=dict(title="held-out accuracy", overlaying="y", side="right", range=[0, 1],
                                  tickformat=".0%", showgrid=False),
                      legend=dict(x=0.01, y=0.02, xanchor="left", yanchor="bottom", bgcolor="rgba(255,255,255,0.8)"))
    title = "Training the head"
    last = next((a for a in reversed(_r(accuracies)) if a is not None), None)
    title += f" (held-out accuracy now {last:.0%})" if last is not None else ""
    fig = style(fig, title, height=340)
    fig.update_layout(margin=dict(r=70))   # room for the accuracy axis on the right
    return fig
