"""Shared look of every figure."""
from __future__ import annotations

import plotly.graph_objects as go
import plotly.io as pio

# The trace types and the layout keys of plotly_white that no figure here draws: every figure carries its
# template, deep-copied when the figure is made and again when it is sent (to_json). plotly_white is 7.1 KB of
# JSON, most of it for other trace types (contour, 3-D, maps, ...) and other subplot kinds: on the Walkthrough
# tab's 22 figures that was half the time spent making them and half the payload. The template kept here is
# plotly_white's own entries for what the figures draw, so they look the same (tests/test_figures.py).
TRACE_TYPES = ("bar", "heatmap", "scatter")
UNUSED_LAYOUT = ("geo", "polar", "scene", "ternary")


def _explorer_template() -> go.layout.Template:
    white = pio.templates["plotly_white"].to_plotly_json()
    return go.layout.Template(data={k: white["data"][k] for k in TRACE_TYPES},
                              layout={k: v for k, v in white["layout"].items() if k not in UNUSED_LAYOUT})


# Every figure starts from this template: a figure takes its default template without validating it,
# where setting one in update_layout validates and deep-copies it (about 25 ms a figure here).
pio.templates["explorer"] = _explorer_template()
pio.templates.default = "explorer"

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
