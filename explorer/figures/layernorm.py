"""LayerNorm tab figures: before/after heatmaps, one token's profile, residual-stream norms."""
from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .common import DIVERGING, SEQUENTIAL, style, unique_labels


def _r(a, digits: int = 4) -> np.ndarray:
    """Rounded float32: small payloads, plenty of precision for a picture."""
    return np.round(np.asarray(a, dtype=np.float64), digits).astype(np.float32)


def _hover_tokens(tokens: list[str]) -> list[str]:
    """Token strings safe inside plotly's pseudo-HTML hover text (<0x0A> would read as a tag)."""
    return [html.escape(t, quote=False) for t in tokens]


def before_after_heatmaps(labels: list[str], tokens: list[str], before: np.ndarray, after: np.ndarray,
                          kind: str = "std") -> go.Figure:
    """Two heatmaps side by side (rows = LayerNorms, columns = tokens), each with its own colour bar.

    ``kind`` "std" uses a sequential scale from 0; "mean" a diverging one centred on 0.
    """
    if kind not in ("std", "mean"):
        raise ValueError(f"kind must be 'std' or 'mean', got {kind!r}")
    x = unique_labels(_hover_tokens(tokens))
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12,
                        subplot_titles=[f"input {kind} (before)", f"output {kind} (after)"])
    for col, (vals, when) in enumerate([(before, "before"), (after, "after")], start=1):
        vals = np.asarray(vals, dtype=np.float64)
        bar = dict(x=0.44 if col == 1 else 1.0, len=0.9, thickness=12)
        if kind == "std":
            scale = dict(colorscale=SEQUENTIAL, zmin=0, zmax=float(vals.max()) if vals.size else 1)
        else:
            # A floor on the range: means of ~1e-8 (a fresh LayerNorm) read as "0", not as noise.
            m = max(float(np.abs(vals).max()) if vals.size else 0.0, 1e-3)
            scale = dict(colorscale=DIVERGING, zmid=0, zmin=-m, zmax=m)
        fig.add_trace(go.Heatmap(
            z=_r(vals), x=x, y=labels, colorbar=bar, **scale, name=when,
            hovertemplate=f"%{{y}}<br>token %{{x}}<br>{kind} {when}: %{{z:.4g}}<extra></extra>"),
            row=1, col=col)
    fig.update_yaxes(autorange="reversed", type="category", dtick=1)
    fig.update_xaxes(type="category", tickangle=-45)
    what = "standard deviation" if kind == "std" else "mean"
    return style(fig, f"Each token's {what} before and after every LayerNorm",
                 height=max(320, 160 + 20 * len(labels)))


def token_profile(labels: list[str], in_mean, in_std, out_mean, out_std, token_label: str) -> go.Figure:
    """One token: std (left) and mean (right) entering vs leaving each LayerNorm, as grouped bars."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1, subplot_titles=["std", "mean"])
    colours = {"before": "#4c78a8", "after": "#f58518"}
    for col, pair in enumerate([(in_std, out_std), (in_mean, out_mean)], start=1):
        stat = "std" if col == 1 else "mean"
        for vals, when in zip(pair, ("before", "after")):
            fig.add_trace(go.Bar(
                x=labels, y=_r(vals), name=when, legendgroup=when, showlegend=col == 1,
                marker_color=colours[when],
                hovertemplate=f"%{{x}}<br>{stat} {when}: %{{y:.4g}}<extra></extra>"), row=1, col=col)
    fig.update_layout(barmode="group")
    fig.update_xaxes(type="category", tickangle=-45)
    return style(fig, f"Token {html.escape(token_label, quote=False)}: before vs after each LayerNorm",
                 height=380)


SEPARATE_LINES_MAX = 16   # up to this many tokens, one trace (own colour, legend entry) per token


def residual_norm_lines(stages: list[str], norms: np.ndarray, tokens: list[str]) -> go.Figure:
    """One line per token: the L2 norm of its residual vector after the embeddings and each block.

    Longer prompts draw all tokens as one trace (lines broken by gaps, the token in the hover):
    plotly spends ~1.5 ms building each trace, 100 ms for 64 of them."""
    norms = np.asarray(norms, dtype=np.float64)
    T = norms.shape[1]
    shown = _hover_tokens(tokens)
    fig = go.Figure()
    style_kw = dict(mode="lines+markers", line=dict(width=1.2), marker=dict(size=4), opacity=0.75)
    if T <= SEPARATE_LINES_MAX:
        for t in range(T):
            fig.add_trace(go.Scatter(
                x=stages, y=_r(norms[:, t], 3), name=f"{t}:{shown[t]}", **style_kw,
                hovertemplate=f"token {t}: {shown[t]}<br>%{{x}}: norm %{{y:.4g}}<extra></extra>"))
    else:
        gap = [None]
        fig.add_trace(go.Scatter(
            x=[x for _ in range(T) for x in [*stages, None]],
            y=[y for t in range(T) for y in [*_r(norms[:, t], 3).tolist(), *gap]],
            text=[label for t in range(T) for label in [f"{t}: {shown[t]}"] * len(stages) + [""]],
            name=f"each of the {T} tokens", **style_kw, line_color="#4c78a8",
            hovertemplate="token %{text}<br>%{x}: norm %{y:.4g}<extra></extra>"))
    fig.add_trace(go.Scatter(
        x=stages, y=_r(np.median(norms, axis=1), 3), mode="lines", name="median over tokens",
        line=dict(color="black", width=3, dash="dash"),
        hovertemplate="median over tokens<br>%{x}: norm %{y:.4g}<extra></extra>"))
    fig.update_xaxes(type="category", title="residual stream after")
    fig.update_yaxes(title="L2 norm of the token's vector", rangemode="tozero")
    return style(fig, "How long each token's residual vector gets, layer by layer", height=420)
