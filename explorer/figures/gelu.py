"""GELU tab figures: the curves and their slopes, histograms of GELU inputs/outputs, per-layer shares."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .common import SEQUENTIAL, style

GELU_COLOUR, RELU_COLOUR, EXACT_COLOUR = "#4c78a8", "#e45756", "#54a24b"
PRE_COLOUR, POST_COLOUR = "#4c78a8", "#f58518"


def _r(a, digits: int = 4) -> np.ndarray:
    return np.round(np.asarray(a, dtype=np.float64), digits).astype(np.float32)


def curves_figure(curves, show_exact: bool = False) -> go.Figure:
    """Left: GELU and ReLU. Right: their derivatives (slopes). ``curves`` is a compute.gelu.Curves."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=["the functions", "their slopes (derivatives)"])
    x = _r(curves.x, 3)
    lines = [
        (1, curves.gelu, "GELU (GPT-2, tanh formula)", GELU_COLOUR, "solid", "GELU"),
        (1, curves.relu, "ReLU = max(0, x)", RELU_COLOUR, "dot", "ReLU"),
        (2, curves.gelu_grad, "GELU slope", GELU_COLOUR, "solid", "GELU"),
        (2, curves.relu_grad, "ReLU slope", RELU_COLOUR, "dot", "ReLU"),
    ]
    if show_exact:
        lines.insert(2, (1, curves.gelu_exact, "exact GELU x·Φ(x)", EXACT_COLOUR, "dash", "exact"))
    for col, y, name, colour, dash, group in lines:
        fig.add_trace(go.Scatter(
            x=x, y=_r(y), mode="lines", name=name, legendgroup=group,
            line=dict(color=colour, dash=dash, width=2.5 if group == "GELU" else 2),
            # ReLU's slope jumps at 0: draw it as a step, not a steep line.
            line_shape="hv" if name == "ReLU slope" else "linear",
            hovertemplate=f"{name}<br>x = %{{x:.3f}}<br>y = %{{y:.4f}}<extra></extra>"), row=1, col=col)
    for col in (1, 2):
        fig.add_hline(y=0, line=dict(color="#999", width=1), row=1, col=col)
        fig.add_vline(x=0, line=dict(color="#999", width=1), row=1, col=col)
    fig.update_xaxes(title="x (input)")
    fig.update_yaxes(title="output", row=1, col=1)
    fig.update_yaxes(title="slope", row=1, col=2)
    return style(fig, "GELU vs ReLU", height=380)


def _centres(edges: np.ndarray) -> tuple[np.ndarray, float]:
    edges = np.asarray(edges, dtype=np.float64)
    return (edges[:-1] + edges[1:]) / 2, float(edges[1] - edges[0])


def layer_histogram(edges, pre_counts, post_counts, layer: int, log_y: bool = False) -> go.Figure:
    """Overlaid histograms of one layer's GELU inputs and outputs (counts per bin, shared bins)."""
    centres, width = _centres(edges)
    fig = go.Figure()
    for counts, name, colour in [(pre_counts, "GELU input", PRE_COLOUR), (post_counts, "GELU output", POST_COLOUR)]:
        counts = np.asarray(counts, dtype=np.int64)
        total = max(int(counts.sum()), 1)
        fig.add_trace(go.Bar(
            x=_r(centres), y=counts, width=width, name=name, marker_color=colour, opacity=0.6,
            customdata=_r(counts / total, 5),
            hovertemplate=(f"{name}<br>%{{x:.3g}} ± {width / 2:.3g}<br>%{{y:,}} values "
                           f"(%{{customdata:.2%}})<extra></extra>")))
    fig.update_layout(barmode="overlay", bargap=0)
    fig.add_vline(x=0, line=dict(color="#666", width=1, dash="dot"))
    fig.update_xaxes(title="value")
    fig.update_yaxes(title="count (tokens × neurons)", type="log" if log_y else "linear")
    return style(fig, f"Layer {layer}: what goes into GELU and what comes out", height=380)


def all_layers_heatmap(edges, pre_counts, post_counts) -> go.Figure:
    """Every layer at a glance: rows = layers, columns = bins, colour = share of the layer's values."""
    centres, width = _centres(edges)
    pre = np.asarray(pre_counts, dtype=np.float64)
    post = np.asarray(post_counts, dtype=np.float64)
    L = pre.shape[0]
    layers = [f"L{i}" for i in range(L)]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.08, shared_yaxes=True,
                        subplot_titles=["GELU inputs", "GELU outputs"])
    shares = [pre / np.maximum(pre.sum(1, keepdims=True), 1), post / np.maximum(post.sum(1, keepdims=True), 1)]
    zmax = float(max(s.max() for s in shares)) or 1.0
    for col, (share, name) in enumerate(zip(shares, ["input", "output"]), start=1):
        fig.add_trace(go.Heatmap(
            z=_r(share, 5), x=_r(centres), y=layers, colorscale=SEQUENTIAL, zmin=0, zmax=zmax,
            showscale=col == 2, colorbar=dict(title="share", thickness=12),
            hovertemplate=f"%{{y}} {name}s<br>%{{x:.3g}} ± {width / 2:.3g}<br>%{{z:.2%}} of the layer"
                          "<extra></extra>"), row=1, col=col)
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(title="value")
    return style(fig, "All layers: where the GELU inputs and outputs fall", height=max(260, 150 + 22 * L))


def shares_bars(neg_share, zero_share, threshold: float, selected: int | None = None) -> go.Figure:
    """Per layer: the share of negative inputs and of near-zero outputs; the selected layer shaded."""
    neg, zero = np.asarray(neg_share, dtype=np.float64), np.asarray(zero_share, dtype=np.float64)
    layers = [f"L{i}" for i in range(len(neg))]
    fig = go.Figure()
    for vals, name, colour in [(neg, "inputs < 0", PRE_COLOUR),
                               (zero, f"outputs near 0 (|out| < {threshold:g})", POST_COLOUR)]:
        fig.add_trace(go.Bar(
            x=layers, y=_r(vals, 5), name=name, marker_color=colour,
            text=[f"{v:.0%}" for v in vals], textposition="outside",
            hovertemplate=f"%{{x}}<br>{name}: %{{y:.1%}}<extra></extra>"))
    fig.update_layout(barmode="group")
    if selected is not None and 0 <= selected < len(neg):
        # Category i sits at x = i on the axis: shade the selected layer's slot.
        fig.add_shape(type="rect", xref="x", yref="paper", x0=selected - 0.5, x1=selected + 0.5, y0=0, y1=1,
                      fillcolor="#999", opacity=0.18, line_width=0, layer="below")
        fig.add_annotation(x=layers[selected], y=1.0, yref="paper", text="selected", showarrow=False,
                           yanchor="bottom", font=dict(size=11, color="#555"))
    fig.update_layout(legend=dict(orientation="h", x=0, y=-0.3, yanchor="top"))
    fig.update_xaxes(type="category", title="layer")
    fig.update_yaxes(title="share of the layer's values", tickformat=".0%", range=[0, 1.1])
    return style(fig, "Negative inputs and near-zero outputs per layer", height=380)
