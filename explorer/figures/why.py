"""Figures of the "Why this token?" tab: the logit lens, the logit attribution, ablations. Pure: arrays in,
plotly Figure out."""
from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go

from .common import DIVERGING, SEQUENTIAL, layout

CELL_CHARS = 7          # a lens cell shows at most this many characters of its token
ATTN_COLOUR, MLP_COLOUR, OTHER_COLOUR = "#4c78a8", "#f58518", "#9d9d9d"
BEFORE_COLOUR, AFTER_COLOUR = "#9d9d9d", "#e45756"


def _esc(text: str) -> str:
    """Plotly reads <...> as markup: a token such as <|endoftext|> would vanish."""
    return html.escape(text, quote=False)


def _short(text: str) -> str:
    return text if len(text) <= CELL_CHARS else text[:CELL_CHARS - 1] + "…"


def _r(a, digits: int = 4) -> np.ndarray:
    return np.round(np.asarray(a, dtype=np.float64), digits)


def lens_heatmap(stages: list[str], tokens: list[str], top_text: list[list[str]], top_prob: np.ndarray,
                 hover: list[list[str]], position: int | None = None,
                 positions: list[int] | None = None) -> go.Figure:
    """Stages (rows, first at the top) x prompt positions: each cell's top-1 token, coloured by its probability.
    ``positions``: the prompt position of each column (None: 0, 1, ...), which labels it; ``position``: the
    prompt position to outline, one of them."""
    S, T = np.shape(top_prob)
    if len(stages) != S or len(tokens) != T or np.shape(top_text)[:2] != (S, T):
        raise ValueError(f"need (S, T) cells with S stage and T token labels, got {np.shape(top_prob)}, "
                         f"{len(stages)} stages and {len(tokens)} tokens")
    positions = list(range(T)) if positions is None else [int(p) for p in positions]
    if len(positions) != T or len(set(positions)) != T:
        raise ValueError(f"need {T} distinct positions, one a column, got {positions}")
    if position is not None and position not in positions:
        raise ValueError(f"position {position} is not one of the columns' positions {positions}")
    x = [f"{p}:{_esc(t)}" for p, t in zip(positions, tokens)]      # distinct: plotly merges equal categories
    cells = [[_esc(_short(t)) for t in row] for row in top_text]
    col = None if position is None else positions.index(position)
    height = int(min(1100, max(360, 120 + 22 * S)))
    span = f"positions {positions[0]}–{positions[-1]}" if T > 1 else f"position {positions[0]}"
    # The whole layout given at once: each update_* call afterwards costs plotly another validation pass.
    return go.Figure(go.Heatmap(
        z=_r(top_prob, 3), x=x, y=stages, text=cells, texttemplate="%{text}",
        textfont=dict(size=11 if T <= 16 else 9),
        customdata=[[_esc(h).replace("&lt;br&gt;", "<br>") for h in row] for row in hover],
        colorscale=SEQUENTIAL, zmin=0, zmax=1, colorbar=dict(title="top-1<br>prob."),
        hovertemplate="after %{x}, stage %{y}<br>%{customdata}<extra></extra>"), layout=layout(
        f"Logit lens at {span}: what each stage would predict next (top-1 token, coloured by its probability)",
        height,
        shapes=[] if col is None else [dict(type="rect", xref="x", yref="y", x0=col - 0.5, x1=col + 0.5, y0=-0.5,
                                            y1=S - 0.5, line=dict(color="#e4572e", width=2))],
        xaxis=dict(type="category", title="position: the token the prediction comes after",
                   tickangle=0 if T <= 16 else -45, tickfont=dict(size=10), showgrid=False),
        yaxis=dict(type="category", autorange="reversed", title="stage of the residual stream", showgrid=False)))


def lens_lines(stages: list[str], series: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> go.Figure:
    """For one position: each tracked token's probability (left) and rank (right, log scale, 1 on top).
    The two panels are laid out by hand: plotly's make_subplots costs half this figure's time (7 ms)."""
    colours = ["#4c78a8", "#e45756", "#54a24b"]
    traces = []
    for (name, (probs, ranks)), colour in zip(series.items(), colours):
        label = _esc(name)
        traces.append(go.Scatter(x=stages, y=_r(probs, 5), mode="lines+markers", name=label, legendgroup=label,
                                 line=dict(color=colour), xaxis="x", yaxis="y",
                                 hovertemplate=f"{label}<br>%{{x}}: %{{y:.2%}}<extra></extra>"))
        traces.append(go.Scatter(x=stages, y=np.asarray(ranks, dtype=np.int64), mode="lines+markers", name=label,
                                 legendgroup=label, showlegend=False, line=dict(color=colour), xaxis="x2", yaxis="y2",
                                 hovertemplate=f"{label}<br>%{{x}}: rank %{{y:,}}<extra></extra>"))
    left, right = [0.0, 0.45], [0.55, 1.0]          # horizontal_spacing 0.1, as make_subplots lays it out
    ticks = dict(tickangle=-45, tickfont=dict(size=9))
    panel_title = dict(xref="paper", yref="paper", y=1.0, yanchor="bottom", xanchor="center", showarrow=False,
                       font=dict(size=16))
    lay = layout(
        title, 420,
        xaxis=dict(domain=left, anchor="y", **ticks), yaxis=dict(domain=[0, 1], anchor="x", range=[0, 1],
                                                                 tickformat=".0%"),
        xaxis2=dict(domain=right, anchor="y2", **ticks), yaxis2=dict(domain=[0, 1], anchor="x2", type="log",
                                                                    autorange="reversed"),
        annotations=[dict(panel_title, text="probability", x=sum(left) / 2),
                     dict(panel_title, text="rank (1 = top)", x=sum(right) / 2)],
        legend=dict(orientation="h", x=0, y=1.12, yanchor="bottom"))
    lay["margin"]["t"] = 110
    return go.Figure(data=traces, layout=lay)


def _symmetric(values: np.ndarray) -> float:
    top = float(np.nanmax(np.abs(values))) if np.size(values) else 0.0
    return top if top > 0 else 1.0


def head_heatmap(values: np.ndarray, title: str, colorbar: str, hover_unit: str) -> go.Figure:
    """Layers (rows) x heads: a signed number per head, on a diverging scale centred on 0."""
    values = np.asarray(values, dtype=np.float64)
    L, nh = values.shape
    top = _symmetric(values)
    return go.Figure(go.Heatmap(
        z=_r(values), x=[f"H{h}" for h in range(nh)], y=[f"L{l}" for l in range(L)],
        colorscale=DIVERGING, zmid=0, zmin=-top, zmax=top, colorbar=dict(title=colorbar),
        text=[[f"{v:+.2f}" for v in row] for row in values], texttemplate="%{text}" if L * nh <= 200 else "",
        hovertemplate=f"layer %{{y}}, head %{{x}}: %{{z:+.3f}} {hover_unit}<extra></extra>"),
        layout(title, int(min(700, max(300, 120 + 34 * L))),
               xaxis=dict(title="head", type="category", showgrid=False),
               yaxis=dict(title="layer", type="category", autorange="reversed", showgrid=False)))


def layer_bars(attn: np.ndarray, mlp: np.ndarray, embed: float, pos_embed: float, ln_f_bias: float,
               title: str) -> go.Figure:
    """Every part's share of the logit in the order the forward pass adds them: the embeddings, then per
    layer its attention (heads and bias) and its MLP, then ln_f's bias. The bars add up to the logit."""
    L = len(attn)
    layers = [f"L{l}" for l in range(L)]
    traces = [go.Bar(x=["token emb.", "position emb."], y=_r([embed, pos_embed]), name="embeddings",
                     marker_color=OTHER_COLOUR, hovertemplate="%{x}: %{y:+.3f}<extra></extra>"),
              go.Bar(x=layers, y=_r(attn), name="attention (heads + bias)", marker_color=ATTN_COLOUR,
                     hovertemplate="%{x} attention: %{y:+.3f}<extra></extra>"),
              go.Bar(x=layers, y=_r(mlp), name="MLP", marker_color=MLP_COLOUR,
                     hovertemplate="%{x} MLP: %{y:+.3f}<extra></extra>"),
              go.Bar(x=["ln_f bias"], y=_r([ln_f_bias]), name="ln_f bias", marker_color="#bab0ac",
                     hovertemplate="ln_f bias: %{y:+.3f}<extra></extra>")]
    lay = layout(title, 400, barmode="group", legend=dict(orientation="h", x=0, y=1.0, yanchor="bottom"),
                 xaxis=dict(type="category", categoryorder="array",
                            categoryarray=["token emb.", "position emb.", *layers, "ln_f bias"]),
                 yaxis=dict(title="share of the logit", zeroline=True, zerolinecolor="#888"))
    lay["margin"]["t"] = 90
    return go.Figure(traces, lay)


def before_after_bars(tokens: list[str], ids: list[int], before: np.ndarray, after: np.ndarray,
                      title: str) -> go.Figure:
    """The next-token distribution before and after an ablation, token by token."""
    seen: dict[str, int] = {}
    for t in tokens:
        seen[t] = seen.get(t, 0) + 1
    x = [_esc(f"{t} (#{i})" if seen[t] > 1 else t) for t, i in zip(tokens, ids)]
    traces = [go.Bar(x=x, y=_r(values, 5), name=name, marker_color=colour, customdata=ids,
                     hovertemplate=f"%{{x}} (id %{{customdata}})<br>{name}: %{{y:.2%}}<extra></extra>")
              for name, values, colour in (("before", before, BEFORE_COLOUR),
                                           ("after the ablation", after, AFTER_COLOUR))]
    lay = layout(title, 400, barmode="group", legend=dict(orientation="h", x=0, y=1.0, yanchor="bottom"),
                 xaxis=dict(type="category", tickangle=-45, title="next token"),
                 yaxis=dict(title="probability", tickformat=".0%", rangemode="tozero"))
    lay["margin"]["t"] = 90
    return go.Figure(traces, lay)
