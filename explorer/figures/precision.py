"""Precision tab views: the next tokens under each precision, the errors against fp32, and the cost."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .common import style, unique_labels
from .sampling_view import percent_format, plot_text

COLORS = {"fp32": "#4c78a8", "bf16": "#f58518", "fp16": "#54a24b", "int8": "#e45756"}
OTHER = "#79706e"


def color(name: str) -> str:
    return COLORS.get(name, OTHER)


def top_tokens_bars(precisions: list[str], tokens: list[list[str]], probs: list) -> go.Figure:
    """One panel per precision: its top next tokens (most likely on top), on one shared probability axis."""
    n = len(precisions)
    fig = make_subplots(rows=1, cols=max(n, 1), subplot_titles=[plot_text(p) for p in precisions],
                        horizontal_spacing=0.09, shared_xaxes=True)
    top = 0.0
    for col, (name, toks, p) in enumerate(zip(precisions, tokens, probs), start=1):
        p = np.round(np.asarray(p, dtype=float), 6)
        top = max(top, float(p.max(initial=0)))
        labels = unique_labels([plot_text(t) for t in toks])
        fig.add_trace(go.Bar(
            y=labels, x=p, orientation="h", marker_color=color(name), name=plot_text(name), showlegend=False,
            customdata=[[plot_text(t), f"{v:.2%}"] for t, v in zip(toks, p)],
            hovertemplate=f"{plot_text(name)}: %{{customdata[0]}}<br>probability %{{customdata[1]}}<extra></extra>"),
            row=1, col=col)
        fig.update_yaxes(autorange="reversed", type="category", row=1, col=col)
    fig.update_xaxes(range=[0, top * 1.05 or 1], tickformat=percent_format(top), title_text="probability")
    return style(fig, "Next token: the top 5 under each precision", height=340)


def error_bars(precisions: list[str], max_logit, agreement, max_attention, where: list[str]) -> go.Figure:
    """Three panels, one bar per precision: max |Δ logit|, top-1 agreement, max |Δ attention weight|."""
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.1,
                        subplot_titles=("max |Δ logit| vs fp32", "top-1 agreement with fp32",
                                        "max |Δ attention weight| vs fp32"))
    names = [plot_text(p) for p in precisions]
    colors = [color(p) for p in precisions]
    panels = ((max_logit, "%{y:.4g}", "largest change of any logit, any position"),
              (agreement, "%{y:.1%}", "positions whose most likely token is fp32's"),
              (max_attention, "%{y:.3g}", None))
    for col, (values, fmt, note) in enumerate(panels, start=1):
        values = [float(v) for v in values]
        custom = [[plot_text(w)] for w in where] if note is None else [[note]] * len(values)
        fig.add_trace(go.Bar(x=names, y=values, marker_color=colors, showlegend=False,
                             texttemplate=fmt, textposition="outside", cliponaxis=False, customdata=custom,
                             hovertemplate=f"%{{x}}: {fmt}<br>%{{customdata[0]}}<extra></extra>"),
                      row=1, col=col)
        fig.update_xaxes(type="category", row=1, col=col)
    for col, values in ((1, max_logit), (3, max_attention)):   # room above the tallest bar for its label
        top = max((float(v) for v in values), default=0.0)
        fig.update_yaxes(range=[0, top * 1.2 or 1], row=1, col=col)
    fig.update_yaxes(range=[0, 1.15], tickformat=".0%", row=1, col=2)
    return style(fig, "What rounding changed, against fp32", height=340)


def position_errors(precisions: list[str], tokens: list[str], deltas: list, same: list) -> go.Figure:
    """max |Δ logit| at each prompt position, one line per precision (fp32 is 0 and left out); an open
    marker where the most likely next token differs from fp32's."""
    fig = go.Figure()
    labels = unique_labels([plot_text(t) for t in tokens])
    for name, d, s in zip(precisions, deltas, same):
        d = np.asarray(d, dtype=float)
        if not np.any(d > 0):
            continue
        s = np.asarray(s, dtype=bool)
        fig.add_trace(go.Scatter(
            x=labels, y=np.round(d, 6), mode="lines+markers", name=plot_text(name), line=dict(color=color(name)),
            marker=dict(symbol=["circle" if ok else "x" for ok in s], size=[6 if ok else 11 for ok in s]),
            customdata=[["same as fp32" if ok else "DIFFERENT from fp32"] for ok in s],
            hovertemplate=f"{plot_text(name)} at %{{x}}: max |Δ logit| %{{y:.4g}}<br>"
                          "most likely next token: %{customdata[0]}<extra></extra>"))
    fig.update_xaxes(type="category", tickangle=-60, title_text="position: token")
    fig.update_yaxes(type="log", title_text="max |Δ logit| (log scale)")
    fig.update_layout(legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0))
    fig = style(fig, "Where in the prompt the logits moved (✕: the top token differs from fp32's)", height=380)
    fig.update_layout(margin=dict(t=90))
    return fig


def cost_bars(precisions: list[str], megabytes, milliseconds) -> go.Figure:
    """Two panels, one bar per precision: the weights' memory and the forward pass's time."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12,
                        subplot_titles=("weights in memory (MB)", "forward pass (ms)"))
    names = [plot_text(p) for p in precisions]
    colors = [color(p) for p in precisions]
    mb = [round(float(v), 3) for v in megabytes]
    ms = [round(float(v), 3) for v in milliseconds]
    ref_mb = mb[0] if mb and mb[0] else 1.0
    fig.add_trace(go.Bar(x=names, y=mb, marker_color=colors, showlegend=False,
                         customdata=[[f"{v / ref_mb:.0%}"] for v in mb],
                         hovertemplate="%{x}: %{y:,.1f} MB (%{customdata[0]} of the first)<extra></extra>"),
                  row=1, col=1)
    fig.add_trace(go.Bar(x=names, y=ms, marker_color=colors, showlegend=False,
                         hovertemplate="%{x}: %{y:,.1f} ms<extra></extra>"), row=1, col=2)
    fig.update_xaxes(type="category")
    fig.update_yaxes(rangemode="tozero")
    return style(fig, "What each precision costs", height=320)
