"""Sampling tab figures: the filtered next-token distribution, and sampled draws against it."""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

from .common import style

STATUS_COLORS = {"kept": "#4c78a8", "cut by top-k": "#f58518", "cut by top-p": "#e45756",
                 "cut by temperature 0": "#9d9d9d"}
FINAL_COLOR = "#2a2a2a"


def plot_text(text: str) -> str:
    """Plotly reads <...> in labels as markup and drops unknown tags (so "<|endoftext|>" would vanish)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def distinct_labels(tokens: list[str], ids: list[int]) -> list[str]:
    """Token strings for a category axis; a string that occurs twice gets its id so no bars merge."""
    seen: dict[str, int] = {}
    for t in tokens:
        seen[t] = seen.get(t, 0) + 1
    return [plot_text(f"{t} (#{i})" if seen[t] > 1 else t) for t, i in zip(tokens, ids)]


def percent_format(max_value: float) -> str:
    """A d3 tick format with enough decimals for the largest value (0.01% needs 2, 40% needs 0)."""
    if not max_value > 0:
        return ".0%"
    return f".{max(0, 1 - math.floor(math.log10(max_value * 100)))}~%"


def _legend_on_top(fig: go.Figure) -> None:
    fig.update_layout(legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0),
                      margin=dict(t=90))


def _r(values, digits: int = 5) -> list[float]:
    return [round(float(v), digits) for v in values]


def distribution_bars(tokens: list[str], ids: list[int], model_probs, final_probs, status: list[str],
                      title: str | None = None) -> go.Figure:
    """Per token: the model's own probability (coloured by what the filters did) next to the final one."""
    labels = distinct_labels(tokens, ids)
    model_probs, final_probs = _r(model_probs), _r(final_probs)
    fig = go.Figure()
    for name, color in STATUS_COLORS.items():
        rows = [i for i, s in enumerate(status) if s == name]
        if not rows:
            continue
        fig.add_trace(go.Bar(
            x=[labels[i] for i in rows], y=[model_probs[i] for i in rows], name=f"model's probability: {name}",
            marker_color=color, offsetgroup="model",
            customdata=[[ids[i], final_probs[i]] for i in rows],
            hovertemplate=("%{x} (id %{customdata[0]})<br>model: %{y:.2%}<br>final: %{customdata[1]:.2%}"
                           f"<br>{name}<extra></extra>")))
    fig.add_trace(go.Bar(
        x=labels, y=final_probs, name="final probability (after filters, renormalised)",
        marker=dict(color="rgba(0,0,0,0)", line=dict(color=FINAL_COLOR, width=2)), offsetgroup="final",
        customdata=[[i] for i in ids],
        hovertemplate="%{x} (id %{customdata[0]})<br>final: %{y:.2%}<extra></extra>"))
    fig.update_layout(barmode="group", bargap=0.25)
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=labels, tickangle=-45)
    fig.update_yaxes(title="probability", rangemode="tozero",
                     tickformat=percent_format(max(model_probs + final_probs, default=0)))
    style(fig, title or "Next-token probabilities", height=480)
    _legend_on_top(fig)
    return fig


def draws_bars(tokens: list[str], ids: list[int], expected, observed, other_expected: float = 0.0,
               other_observed: float = 0.0, n_draws: int = 0, tvd: float | None = None) -> go.Figure:
    """Grouped bars: expected (final) probability vs observed frequency, with the rest lumped as "other"."""
    labels = distinct_labels(tokens, ids)
    expected, observed = list(_r(expected)), list(_r(observed))
    hover_ids = [str(i) for i in ids]
    if other_expected > 5e-6 or other_observed > 0:
        labels.append("(all other tokens)")
        expected.append(round(float(other_expected), 5))
        observed.append(round(float(other_observed), 5))
        hover_ids.append("-")
    counts = [int(round(o * n_draws)) for o in observed]
    fig = go.Figure([
        go.Bar(x=labels, y=expected, name="expected (final probability)", marker_color="#4c78a8",
               customdata=hover_ids, hovertemplate="%{x} (id %{customdata})<br>expected: %{y:.2%}<extra></extra>"),
        go.Bar(x=labels, y=observed, name=f"observed in {n_draws:,} draws", marker_color="#f58518",
               customdata=np.array([hover_ids, counts], dtype=object).T.tolist(),
               hovertemplate="%{x} (id %{customdata[0]})<br>observed: %{y:.2%} "
                             "(%{customdata[1]} draws)<extra></extra>"),
    ])
    fig.update_layout(barmode="group")
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=labels, tickangle=-45)
    fig.update_yaxes(title="share of draws / probability", rangemode="tozero",
                     tickformat=percent_format(max(expected + observed, default=0)))
    title = f"{n_draws:,} draws vs the expected distribution"
    if tvd is not None:
        title += f" (total variation distance {tvd:.3f})"
    style(fig, title, height=440)
    _legend_on_top(fig)
    return fig
