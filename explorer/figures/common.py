"""Shared look of every figure."""
from __future__ import annotations

import plotly.graph_objects as go
import plotly.io as pio

# Every figure starts from this template: a figure takes its default template without validating it,
# where setting one in update_layout validates and deep-copies it (about 25 ms a figure here).
pio.templates.default = "plotly_white"

DIVERGING = "RdBu_r"      # signed values, centred on 0
SEQUENTIAL = "Viridis"    # probabilities and other non-negative values
FONT = dict(family="Inter, system-ui, sans-serif", size=12)


def style(fig: go.Figure, title: str | None = None, height: int | None = None) -> go.Figure:
    fig.update_layout(font=FONT, margin=dict(l=60, r=20, t=50 if title else 20, b=50),
                      title=dict(text=title, x=0.01, xanchor="left") if title else None)
    if height:
        fig.update_layout(height=height)
    return fig


def layout(title: str | None = None, height: int | None = None, **more) -> dict:
    """What ``style(fig, title, height)`` sets, and ``more``, as one layout dict: a figure made in one
    ``go.Figure(data, layout(...))`` call is validated once, where each update_layout / update_xaxes / add_shape
    on a made figure validates and copies its layout again (an attention heatmap: 9.8 ms made by updates, 2.6 ms
    in one call, the same JSON)."""
    out = dict(font=FONT, margin=dict(l=60, r=20, t=50 if title else 20, b=50),
               title=dict(text=title, x=0.01, xanchor="left") if title else None, **more)
    if height:
        out["height"] = height
    return out


def unique_labels(tokens: list[str]) -> list[str]:
    """Plotly merges equal category labels on an axis; number them so each token keeps its row."""
    return [f"{i}:{t}" for i, t in enumerate(tokens)]
