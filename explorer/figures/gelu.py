"""GELU tab figures: the curves and their slopes, histograms of GELU inputs/outputs, per-layer shares.

The three figures of /gelu_view are each made in one go.Figure(data, layout) call, with the look of
common.style: plotly validates a figure once that way, where add_trace / update_layout / make_subplots
validate and merge at every step (9, 9 and 17 ms for these three figures, against 1-2 ms each)."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .common import FONT, SEQUENTIAL, style

GELU_COLOUR, RELU_COLOUR, EXACT_COLOUR = "#4c78a8", "#e45756", "#54a24b"
PRE_COLOUR, POST_COLOUR = "#4c78a8", "#f58518"


def _layout(title: str, height: int, **layout) -> dict:
    """common.style's layout (font, margins, title at the left, height) as one dict, with the figure's own."""
    return dict(font=FONT, margin=dict(l=60, r=20, t=50, b=50), title=dict(text=title, x=0.01, xanchor="left"),
                height=height, **layout)


def _vline(x: float, xref: str = "x", yref: str = "y", **line) -> dict:
    """What fig.add_vline draws: a line across the whole height of the plot at x."""
    return dict(type="line", x0=x, x1=x, xref=xref, y0=0, y1=1, yref=f"{yref} domain", line=line)


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
    x = _r(centres)
    data = []
    for counts, name, colour in [(pre_counts, "GELU input", PRE_COLOUR), (post_counts, "GELU output", POST_COLOUR)]:
        counts = np.asarray(counts, dtype=np.int64)
        total = max(int(counts.sum()), 1)
        data.append(go.Bar(
            x=x, y=counts, width=width, name=name, marker_color=colour, opacity=0.6,
            customdata=_r(counts / total, 5),
            hovertemplate=(f"{name}<br>%{{x:.3g}} ± {width / 2:.3g}<br>%{{y:,}} values "
                           f"(%{{customdata:.2%}})<extra></extra>")))
    return go.Figure(data, _layout(
        f"Layer {layer}: what goes into GELU and what comes out", 380, barmode="overlay", bargap=0,
        shapes=[_vline(0, color="#666", width=1, dash="dot")],
        xaxis=dict(title=dict(text="value")),
        yaxis=dict(title=dict(text="count (tokens × neurons)"), type="log" if log_y else "linear")))


HEATMAP_GAP = 0.08     # between the inputs' and the outputs' panel, as a share of the width


def all_layers_heatmap(edges, pre_counts, post_counts) -> go.Figure:
    """Every layer at a glance: rows = layers, columns = bins, colour = share of the layer's values.
    Two panels side by side sharing the layer axis (what make_subplots(1, 2, shared_yaxes=True) lays out)."""
    centres, width = _centres(edges)
    pre = np.asarray(pre_counts, dtype=np.float64)
    post = np.asarray(post_counts, dtype=np.float64)
    L = pre.shape[0]
    layers = [f"L{i}" for i in range(L)]
    shares = [pre / np.maximum(pre.sum(1, keepdims=True), 1), post / np.maximum(post.sum(1, keepdims=True), 1)]
    zmax = float(max(s.max() for s in shares)) if L else 1.0
    zmax = zmax or 1.0
    x = _r(centres)
    split = (1 - HEATMAP_GAP) / 2
    data, titles = [], []
    for col, (share, name, title) in enumerate(zip(shares, ["input", "output"], ["GELU inputs", "GELU outputs"])):
        suffix = "" if col == 0 else "2"
        data.append(go.Heatmap(
            z=_r(share, 5), x=x, y=layers, xaxis=f"x{suffix}", yaxis=f"y{suffix}", colorscale=SEQUENTIAL,
            zmin=0, zmax=zmax, showscale=col == 1, colorbar=dict(title=dict(text="share"), thickness=12),
            hovertemplate=f"%{{y}} {name}s<br>%{{x:.3g}} ± {width / 2:.3g}<br>%{{z:.2%}} of the layer"
                          "<extra></extra>"))
        titles.append(dict(text=title, x=split / 2 if col == 0 else 1 - split / 2, xref="paper", xanchor="center",
                           y=1.0, yref="paper", yanchor="bottom", showarrow=False, font=dict(size=16)))
    rows = dict(autorange="reversed", type="category")
    return go.Figure(data, _layout(
        "All layers: where the GELU inputs and outputs fall", max(260, 150 + 22 * L), annotations=titles,
        xaxis=dict(domain=[0, split], anchor="y", title=dict(text="value")),
        xaxis2=dict(domain=[1 - split, 1], anchor="y2", title=dict(text="value")),
        yaxis=dict(anchor="x", **rows), yaxis2=dict(anchor="x2", matches="y", showticklabels=False, **rows)))


def shares_bars(neg_share, zero_share, threshold: float, selected: int | None = None) -> go.Figure:
    """Per layer: the share of negative inputs and of near-zero outputs; the selected layer shaded."""
    neg, zero = np.asarray(neg_share, dtype=np.float64), np.asarray(zero_share, dtype=np.float64)
    layers = [f"L{i}" for i in range(len(neg))]
    data = []
    for vals, name, colour in [(neg, "inputs < 0", PRE_COLOUR),
                               (zero, f"outputs near 0 (|out| < {threshold:g})", POST_COLOUR)]:
        data.append(go.Bar(
            x=layers, y=_r(vals, 5), name=name, marker_color=colour,
            text=[f"{v:.0%}" for v in vals], textposition="outside",
            hovertemplate=f"%{{x}}<br>{name}: %{{y:.1%}}<extra></extra>"))
    shapes, annotations = [], []
    if selected is not None and 0 <= selected < len(neg):
        # Category i sits at x = i on the axis: shade the selected layer's slot.
        shapes.append(dict(type="rect", xref="x", yref="paper", x0=selected - 0.5, x1=selected + 0.5, y0=0, y1=1,
                           fillcolor="#999", opacity=0.18, line_width=0, layer="below"))
        annotations.append(dict(x=layers[selected], y=1.0, yref="paper", text="selected", showarrow=False,
                                yanchor="bottom", font=dict(size=11, color="#555")))
    return go.Figure(data, _layout(
        "Negative inputs and near-zero outputs per layer", 380, barmode="group", shapes=shapes,
        annotations=annotations, legend=dict(orientation="h", x=0, y=-0.3, yanchor="top"),
        xaxis=dict(type="category", title=dict(text="layer")),
        yaxis=dict(title=dict(text="share of the layer's values"), tickformat=".0%", range=[0, 1.1])))
