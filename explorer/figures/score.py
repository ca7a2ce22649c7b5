"""Score tab views: the text coloured token by token, the rank histogram, surprisal along the text."""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from .common import SEQUENTIAL, layout
from .generation import esc, percent
from .sampling_view import plot_text

# GLTR's colours for its four buckets: top 10 green, top 100 yellow, top 1,000 red, beyond purple.
BUCKET_COLORS = ("#adff80", "#ffea80", "#ff9280", "#e5b0ff")
MAX_BITS = 20.0          # the surprisal scale runs from 0 to 20 bits (one in a million) and stops there
UNSCORED = "#eeeeee"     # the first token: nothing before it to predict it from


def surprisal_color(bits: float) -> str:
    """Bright for expected tokens, dark for surprising ones (the Generate tab's scale, by bits)."""
    color = sample_colorscale(SEQUENTIAL, [1 - min(max(bits / MAX_BITS, 0.0), 1.0)])[0]
    if color.startswith("rgb"):
        parts = [int(round(float(v))) for v in color[color.index("(") + 1:color.index(")")].split(",")[:3]]
        return "#" + "".join(f"{v:02x}" for v in parts)
    return color


def _legend(mode: str, bucket_names) -> str:
    if mode == "rank":
        items = "".join(f'<span style="background:{c};padding:1px 8px;border-radius:3px;margin-right:6px">'
                        f"{esc(n)}</span>" for c, n in zip(BUCKET_COLORS, bucket_names))
        return (f'<div style="font-size:12px;margin-top:8px">rank of the actual token among the model\'s '
                f"predictions: {items}</div>")
    stops = ", ".join(f"{surprisal_color(MAX_BITS * i / 10)} {i * 10}%" for i in range(11))
    return ('<div style="display:flex;align-items:center;gap:10px;font-size:12px;margin-top:8px">'
            "<span>surprisal:</span><span>0 bits</span>"
            f'<div style="width:240px;height:12px;border-radius:3px;background:linear-gradient(to right, {stops})">'
            f"</div><span>{MAX_BITS:g}+ bits</span></div>")


def scored_text_html(texts, labels, first, probs, ranks, bits, buckets, alternatives, bucket_names,
                     mode: str = "rank") -> str:
    """The text, each token on its colour: GLTR bucket (``mode`` "rank") or surprisal ("surprisal").

    ``texts``/``labels`` have one entry per token; the other arrays one per scored token, tokens
    ``first`` onwards (earlier ones are drawn unscored). Hover (title) gives the probability, the
    rank and the model's top alternatives.
    """
    spans = []
    for t, text in enumerate(texts):
        if t < first:
            spans.append(f'<span style="background:{UNSCORED}" title="{esc(labels[t])}: not scored '
                         f'(nothing before it)">{esc(text)}</span>')
            continue
        k = t - first
        if mode == "rank":
            bg, fg = BUCKET_COLORS[int(buckets[k])], "#000"
        else:
            bg = surprisal_color(float(bits[k]))
            fg = "#000" if bits[k] < MAX_BITS * 0.4 else "#fff"
        tip = (f"{labels[t]}: probability {percent(float(probs[k]))}, rank {int(ranks[k]):,}, "
               f"{float(bits[k]):.2f} bits\nmodel's top 5: "
               + " · ".join(f"{a} {percent(p)}" for a, p in alternatives[k]))
        spans.append(f'<span style="background:{bg};color:{fg};border-radius:3px;padding:1px 0;'
                     f'box-shadow:inset -1px 0 0 rgba(255,255,255,0.8)" '
                     f'title="{esc(tip).replace(chr(10), "&#10;")}">{esc(text)}</span>')
    return ('<div class="score-output"><div style="white-space:pre-wrap;word-break:break-word;line-height:1.9;'
            'font-size:15px;padding:10px;border:1px solid #ddd;border-radius:6px;color:#000">'
            f'{"".join(spans)}</div>{_legend(mode, bucket_names)}</div>')


def rank_histogram_bars(counts, bin_labels, bin_buckets, bucket_names) -> go.Figure:
    """How many tokens had each rank (log-spaced bins), each bar in its GLTR bucket's colour."""
    total = int(sum(counts))
    shares = [f"{c / total:.1%}" if total else "0%" for c in counts]
    return go.Figure(go.Bar(
        x=list(bin_labels), y=list(counts), marker=dict(color=[BUCKET_COLORS[b] for b in bin_buckets],
                                                        line=dict(color="#666", width=0.5)),
        customdata=[[bucket_names[b], s] for b, s in zip(bin_buckets, shares)], text=list(counts),
        textposition="auto", textangle=0,
        hovertemplate="rank %{x}: %{y} tokens (%{customdata[1]}), %{customdata[0]}<extra></extra>"),
        layout(f"Ranks of the {total:,} scored tokens", 340,
               xaxis=dict(title="rank of the actual token (1 = the model's top guess)", type="category"),
               yaxis=dict(title="tokens")))


def surprisal_line(labels, first, bits, ranks, buckets) -> go.Figure:
    """Surprisal of each scored token (tokens ``first`` onwards) along the text, in its GLTR bucket's colour."""
    x = list(range(first, first + len(bits)))
    names = [plot_text(t) for t in labels[first:]]
    mean = float(sum(float(b) for b in bits) / len(bits)) if len(bits) else 0.0
    return go.Figure(go.Scatter(
        x=x, y=[round(float(b), 3) for b in bits], mode="lines+markers", line=dict(color="#999", width=1),
        marker=dict(size=7, color=[BUCKET_COLORS[int(b)] for b in buckets], line=dict(color="#444", width=0.5)),
        customdata=[[n, int(r)] for n, r in zip(names, ranks)],
        hovertemplate="token %{x} %{customdata[0]}<br>%{y:.2f} bits, rank %{customdata[1]}<extra></extra>"),
        layout(f"Surprisal of each token (mean {mean:.2f} bits)", 320, xaxis=dict(title="token position"),
               yaxis=dict(title="surprisal (bits)", rangemode="tozero")))
