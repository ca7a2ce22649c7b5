"""LayerNorm tab figures: before/after heatmaps, one token's profile, residual-stream norms.

Each figure is made in one go.Figure(data, layout) call with the look of common.style, the two-panel
ones with the axis domains and panel titles make_subplots(1, 2) lays out: plotly validates a figure
once that way, where make_subplots / add_trace / update_* validate and merge at every step
(~25 ms a figure here at 128 tokens on GPT-2 124M, against a few ms)."""
from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go

from .common import DIVERGING, FONT, SEQUENTIAL, unique_labels


def _r(a, digits: int = 4) -> np.ndarray:
    """Rounded float32: small payloads, plenty of precision for a picture."""
    return np.round(np.asarray(a, dtype=np.float64), digits).astype(np.float32)


def _hover_tokens(tokens: list[str]) -> list[str]:
    """Token strings safe inside plotly's pseudo-HTML hover text (<0x0A> would read as a tag)."""
    return [html.escape(t, quote=False) for t in tokens]


def _layout(title: str, height: int, **layout) -> dict:
    """common.style's layout (font, margins, title at the left, height) as one dict, with the figure's own."""
    return dict(font=FONT, margin=dict(l=60, r=20, t=50, b=50), title=dict(text=title, x=0.01, xanchor="left"),
                height=height, **layout)


def _two_panels(spacing: float, titles: list[str], xaxis: dict, yaxis: dict | None = None) -> dict:
    """What make_subplots(rows=1, cols=2, horizontal_spacing=spacing, subplot_titles=titles) lays out:
    two x/y axis pairs side by side and a title above each panel, with ``xaxis`` / ``yaxis`` on both."""
    width = (1 - spacing) / 2
    domains = [[0.0, width], [1 - width, 1.0]]
    yaxis = yaxis or {}
    layout = {}
    for i, (domain, _) in enumerate(zip(domains, titles)):
        suffix = "" if i == 0 else str(i + 1)
        layout[f"xaxis{suffix}"] = dict(anchor=f"y{suffix}", domain=domain, **xaxis)
        layout[f"yaxis{suffix}"] = dict(anchor=f"x{suffix}", domain=[0.0, 1.0], **yaxis)
    layout["annotations"] = [
        dict(font=dict(size=16), showarrow=False, text=text, x=(d[0] + d[1]) / 2, xanchor="center", xref="paper",
             y=1.0, yanchor="bottom", yref="paper") for text, d in zip(titles, domains)]
    return layout


def before_after_heatmaps(labels: list[str], tokens: list[str], before: np.ndarray, after: np.ndarray,
                          kind: str = "std") -> go.Figure:
    """Two heatmaps side by side (rows = LayerNorms, columns = tokens), each with its own colour bar.

    ``kind`` "std" uses a sequential scale from 0; "mean" a diverging one centred on 0.
    """
    if kind not in ("std", "mean"):
        raise ValueError(f"kind must be 'std' or 'mean', got {kind!r}")
    x = unique_labels(_hover_tokens(tokens))
    data = []
    for col, (vals, when) in enumerate([(before, "before"), (after, "after")]):
        vals = np.asarray(vals, dtype=np.float64)
        bar = dict(x=0.44 if col == 0 else 1.0, len=0.9, thickness=12)
        if kind == "std":
            scale = dict(colorscale=SEQUENTIAL, zmin=0, zmax=float(vals.max()) if vals.size else 1)
        else:
            # A floor on the range: means of ~1e-8 (a fresh LayerNorm) read as "0", not as noise.
            m = max(float(np.abs(vals).max()) if vals.size else 0.0, 1e-3)
            scale = dict(colorscale=DIVERGING, zmid=0, zmin=-m, zmax=m)
        suffix = "" if col == 0 else "2"
        data.append(go.Heatmap(
            z=_r(vals), x=x, y=labels, colorbar=bar, **scale, name=when, xaxis=f"x{suffix}", yaxis=f"y{suffix}",
            hovertemplate=f"%{{y}}<br>token %{{x}}<br>{kind} {when}: %{{z:.4g}}<extra></extra>"))
    what = "standard deviation" if kind == "std" else "mean"
    panels = _two_panels(0.12, [f"input {kind} (before)", f"output {kind} (after)"],
                         xaxis=dict(type="category", tickangle=-45),
                         yaxis=dict(autorange="reversed", type="category", dtick=1))
    return go.Figure(data, _layout(f"Each token's {what} before and after every LayerNorm",
                                   max(320, 160 + 20 * len(labels)), **panels))


def token_profile(labels: list[str], in_mean, in_std, out_mean, out_std, token_label: str) -> go.Figure:
    """One token: std (left) and mean (right) entering vs leaving each LayerNorm, as grouped bars."""
    colours = {"before": "#4c78a8", "after": "#f58518"}
    data = []
    for col, pair in enumerate([(in_std, out_std), (in_mean, out_mean)]):
        stat = "std" if col == 0 else "mean"
        suffix = "" if col == 0 else "2"
        for vals, when in zip(pair, ("before", "after")):
            data.append(go.Bar(
                x=labels, y=_r(vals), name=when, legendgroup=when, showlegend=col == 0,
                marker_color=colours[when], xaxis=f"x{suffix}", yaxis=f"y{suffix}",
                hovertemplate=f"%{{x}}<br>{stat} {when}: %{{y:.4g}}<extra></extra>"))
    panels = _two_panels(0.1, ["std", "mean"], xaxis=dict(type="category", tickangle=-45))
    return go.Figure(data, _layout(f"Token {html.escape(token_label, quote=False)}: before vs after each LayerNorm",
                                   380, barmode="group", **panels))


SEPARATE_LINES_MAX = 16   # up to this many tokens, one trace (own colour, legend entry) per token


def residual_norm_lines(stages: list[str], norms: np.ndarray, tokens: list[str]) -> go.Figure:
    """One line per token: the L2 norm of its residual vector after the embeddings and each block.

    Longer prompts draw all tokens as one trace (lines broken by gaps, the token in the hover):
    plotly spends ~1.5 ms building each trace, 100 ms for 64 of them."""
    norms = np.asarray(norms, dtype=np.float64)
    S, T = norms.shape
    shown = _hover_tokens(tokens)
    style_kw = dict(mode="lines+markers", line=dict(width=1.2), marker=dict(size=4), opacity=0.75)
    rounded = _r(norms, 3)                                   # (S, T)
    data = []
    if T <= SEPARATE_LINES_MAX:
        for t in range(T):
            data.append(go.Scatter(
                x=stages, y=rounded[:, t], name=f"{t}:{shown[t]}", **style_kw,
                hovertemplate=f"token {t}: {shown[t]}<br>%{{x}}: norm %{{y:.4g}}<extra></extra>"))
    else:
        # Token after token, each S stages then a gap (None) that breaks the line.
        ys = np.empty((T, S + 1), dtype=object)
        ys[:, :S] = rounded.T.tolist()
        ys[:, S] = None
        texts = np.empty((T, S + 1), dtype=object)
        texts[:, :S] = np.array([f"{t}: {shown[t]}" for t in range(T)], dtype=object)[:, None]
        texts[:, S] = ""
        # A plain dict: go.Figure validates its 1,800-value lists once, where a go.Scatter would be
        # validated on its own and then again (and deep-copied) by go.Figure.
        data.append(dict(
            type="scatter", x=np.array([*stages, None] * T, dtype=object), y=ys.ravel(), text=texts.ravel(),
            name=f"each of the {T} tokens", **style_kw, line_color="#4c78a8",
            hovertemplate="token %{text}<br>%{x}: norm %{y:.4g}<extra></extra>"))
    data.append(go.Scatter(
        x=stages, y=_r(np.median(norms, axis=1), 3), mode="lines", name="median over tokens",
        line=dict(color="black", width=3, dash="dash"),
        hovertemplate="median over tokens<br>%{x}: norm %{y:.4g}<extra></extra>"))
    return go.Figure(data, _layout(
        "How long each token's residual vector gets, layer by layer", 420,
        xaxis=dict(type="category", title=dict(text="residual stream after")),
        yaxis=dict(title=dict(text="L2 norm of the token's vector"), rangemode="tozero")))
