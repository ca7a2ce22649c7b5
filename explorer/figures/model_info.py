from __future__ import annotations

import plotly.graph_objects as go

from .common import style


def param_count_bars(counts: dict[str, int]) -> go.Figure:
    """Horizontal bars: parameters per component, with the share of the total."""
    names, values = list(counts), list(counts.values())
    total = sum(values) or 1
    fig = go.Figure(go.Bar(
        x=values, y=names, orientation="h", marker_color="#4c78a8",
        text=[f"{v:,} ({v / total:.1%})" for v in values], textposition="auto",
        hovertemplate="%{y}: %{x:,} parameters<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title="parameters")
    return style(fig, f"Parameters by component (total {total:,})", height=120 + 40 * len(names))
