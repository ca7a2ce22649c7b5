"""Generate tab views: the text with each new token coloured by its probability, and a probability line."""
from __future__ import annotations

import functools
import html
import math

import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from .common import SEQUENTIAL, style
from .sampling_view import plot_text

LOG10_MIN = -4          # the colour scale runs from probability 1e-4 (and below) to 1, on a log scale
LEGEND_TICKS = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]


def scale_position(prob: float) -> float:
    """Where a probability sits on the colour scale, 0..1 (log10 from 1e-4 to 1)."""
    if not prob > 0:
        return 0.0
    return min(max((math.log10(prob) - LOG10_MIN) / -LOG10_MIN, 0.0), 1.0)


def _hex(rgb: str) -> str:
    parts = [int(round(float(v))) for v in rgb[rgb.index("(") + 1:rgb.index(")")].split(",")[:3]]
    return "#" + "".join(f"{v:02x}" for v in parts)


@functools.lru_cache(maxsize=8192)
def prob_color(prob: float) -> str:
    """Background colour for a token of this probability (the sequential scale, log spaced).
    Cached: plotly's sample_colorscale takes about 0.3 ms a call, and a streamed probability line asks
    again for every earlier token's colour at each redraw."""
    color = sample_colorscale(SEQUENTIAL, [scale_position(prob)])[0]
    return _hex(color) if color.startswith("rgb") else color


def text_color(prob: float) -> str:
    """Black on the light end of the scale, white on the dark end."""
    return "#000" if scale_position(prob) > 0.6 else "#fff"


def esc(text: str) -> str:
    """HTML-escape, and also turn the characters templates react to ({ } $ `) into entities."""
    return (html.escape(text, quote=True).replace("{", "&#123;").replace("}", "&#125;")
            .replace("$", "&#36;").replace("`", "&#96;"))


def percent(p: float) -> str:
    return f"{p:.1%}" if p >= 0.001 else f"{p:.2g}"


def tooltip(label: str, prob: float, sampled_prob: float, alternatives) -> str:
    lines = [f"{label}: {percent(prob)} (model), {percent(sampled_prob)} after the filters",
             "model's top choices: " + " · ".join(f"{a} {percent(p)}" for a, p in alternatives)]
    return "\n".join(lines)


@functools.cache
def legend_html() -> str:
    stops = ", ".join(f"{prob_color(10 ** (LOG10_MIN * (1 - i / 10)))} {i * 10}%" for i in range(11))
    ticks = "".join(
        f'<span style="position:absolute;left:{scale_position(t) * 100:.0f}%;transform:translateX(-50%)">'
        f"{t * 100:g}%</span>" for t in LEGEND_TICKS)
    return ('<div style="display:flex;align-items:center;gap:12px;font-size:12px;margin-top:10px">'
            "<span>probability the model gave each new token:</span>"
            '<div style="width:260px;margin:0 24px">'
            f'<div style="height:12px;border-radius:3px;background:linear-gradient(to right, {stops})"></div>'
            f'<div style="position:relative;height:16px">{ticks}</div></div>'
            '<span style="color:#666">(log scale; hover a token for its alternatives)</span></div>')


def token_span(t) -> str:
    """One new token on a background coloured by its probability, its alternatives in the tooltip.

    ``t`` has text, label, prob, sampled_prob, alternatives and is_eot
    (explorer.compute.generation.GeneratedToken). A streamed view makes each token's span once."""
    style_ = (f"background:{prob_color(t.prob)};color:{text_color(t.prob)};border-radius:3px;"
              "padding:1px 0;box-shadow:inset -1px 0 0 rgba(255,255,255,0.7)")   # a hairline between tokens
    if t.is_eot:
        style_ += ";font-style:italic;outline:1px dashed #888"
    title = esc(tooltip(t.label, t.prob, t.sampled_prob, t.alternatives)).replace("\n", "&#10;")
    return f'<span style="{style_}" title="{title}">{esc(t.text)}</span>'


def text_html(prompt_text: str, spans: list[str], status: str = "") -> str:
    """The prompt in plain text, then the new tokens' spans (``token_span``), a status line and the legend.
    No scripts, only inline styles."""
    status_html = f'<div style="font-size:12px;color:#666;margin-top:6px">{esc(status)}</div>' if status else ""
    return ('<div class="generate-output">'
            '<div style="white-space:pre-wrap;word-break:break-word;line-height:1.9;font-size:15px;'
            'padding:10px;border:1px solid #ddd;border-radius:6px">'
            f'<span style="color:#444">{esc(prompt_text)}</span>{"".join(spans)}</div>'
            f"{status_html}{legend_html()}</div>")


def tokens_html(prompt_text: str, tokens, status: str = "") -> str:
    """The prompt in plain text, then each new token on a background coloured by its probability
    (``token_span``; ``tokens`` are explorer.compute.generation.GeneratedToken)."""
    return text_html(prompt_text, [token_span(t) for t in tokens], status)


def probability_line(labels: list[str], probs, sampled_probs) -> go.Figure:
    """Per generated token: the model's probability (markers coloured like the text) and after the filters."""
    x = list(range(1, len(labels) + 1))
    labels = [plot_text(t) for t in labels]
    probs = [round(float(p), 5) for p in probs]
    sampled = [round(float(p), 5) for p in sampled_probs]
    fig = go.Figure([
        go.Scatter(x=x, y=probs, mode="lines+markers", name="model's probability",
                   line=dict(color="#888", width=1),
                   marker=dict(size=8, color=[prob_color(p) for p in probs], line=dict(color="#444", width=0.5)),
                   customdata=labels, hovertemplate="#%{x} %{customdata}<br>model: %{y:.2%}<extra></extra>"),
        go.Scatter(x=x, y=sampled, mode="lines", name="after temperature / top-k / top-p",
                   line=dict(color="#f58518", width=1, dash="dot"),
                   customdata=labels, hovertemplate="#%{x} %{customdata}<br>after filters: %{y:.2%}<extra></extra>"),
    ])
    mean = sum(probs) / len(probs) if probs else 0.0
    fig.update_xaxes(title="generated token #")
    fig.update_yaxes(title="probability", tickformat=".0%", range=[0, 1.05])
    fig.update_layout(legend=dict(orientation="h", y=-0.25, x=0))
    return style(fig, f"Probability of each generated token (average {percent(mean)})", height=340)
