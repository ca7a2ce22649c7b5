"""The Train tab's loss curve: per-step training loss and the validation loss at each evaluation."""
from __future__ import annotations

import html
import math

import plotly.graph_objects as go

from .common import style

TRAIN_COLOR, VAL_COLOR, BASELINE_COLOR = "#9ecae1", "#d62728", "#888888"


def _round(values, digits: int = 4) -> list:
    return [None if v is None or not math.isfinite(v) else round(float(v), digits) for v in values]


def loss_curve(train_steps, train_losses, eval_steps, val_losses, total_steps: int | None = None,
               baseline: float | None = None, val_name: str = "validation loss (held-out text)",
               title: str = "Loss while training") -> go.Figure:
    """Line of the loss at every training step, markers for the validation loss at each eval.

    ``baseline`` (e.g. ln of the vocabulary size) is drawn as a dotted line: the loss of a model
    that guesses every token with the same probability. ``total_steps`` fixes the x range so the
    curve grows from left to right while training runs.
    """
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=list(train_steps), y=_round(train_losses), mode="lines", name="training loss (each step)",
        line=dict(color=TRAIN_COLOR, width=1.5),
        hovertemplate="step %{x}<br>training loss %{y:.3f}<extra></extra>"))
    val = _round(val_losses)
    fig.add_trace(go.Scatter(
        x=list(eval_steps), y=val, mode="lines+markers", name=val_name,
        line=dict(color=VAL_COLOR, width=2), marker=dict(size=8),
        customdata=[None if v is None else round(math.exp(min(v, 50)), 1) for v in val],
        hovertemplate="step %{x}<br>validation loss %{y:.3f}<br>perplexity %{customdata}<extra></extra>"))
    if baseline is not None:
        fig.add_hline(y=round(baseline, 4), line=dict(color=BASELINE_COLOR, dash="dot", width=1),
                      annotation_text=f"guessing uniformly: {baseline:.2f}",
                      annotation_position="bottom right")
    fig.update_xaxes(title="training step", range=[0, total_steps] if total_steps else None)
    fig.update_yaxes(title="loss (cross-entropy, nats per token)", rangemode="tozero")
    # Bottom left is empty: the curve starts high and falls as it moves right.
    fig.update_layout(legend=dict(x=0.01, y=0.02, xanchor="left", yanchor="bottom",
                                  bgcolor="rgba(255,255,255,0.8)"))
    last = next((v for v in reversed(val) if v is not None), None)
    title += f" (validation loss now {last:.2f})" if last is not None else ""
    return style(fig, title, height=380)


# ---- instruction tuning -------------------------------------------------------------------------
IGNORED_STYLE = "color:#9a9a9a;background:#f1f1f1"
TRAINED_STYLE = "color:#111;background:#ffe08a;font-weight:600;outline:1px solid #e0b000"
_ROW = "white-space:pre-wrap;word-break:break-word;line-height:1.9;font:14px monospace;padding:10px;" \
       "border:1px solid #ddd;border-radius:6px"


def masked_tokens_html(tokens) -> str:
    """One training example token by token: what the loss ignores greyed, what it trains highlighted.

    ``tokens`` have text, trained and role (explorer.compute.training.MaskedToken). Inline styles only.
    """
    spans = []
    for t in tokens:
        style_ = TRAINED_STYLE if t.trained else IGNORED_STYLE
        what = "trained (its prediction carries loss)" if t.trained else "ignored by the loss (label -100)"
        tip = f"{t.role}: {what}"
        spans.append(f'<span class="tok-{"trained" if t.trained else "ignored"}" style="{style_};border-radius:3px" '
                     f'title="{html.escape(tip)}">{html.escape(t.text)}</span>')
    n_trained = sum(t.trained for t in tokens)
    legend = (f'<div style="font-size:12px;margin-top:6px"><span style="{IGNORED_STYLE};padding:0 4px">grey</span>: '
              f"ignored by the loss (the prompt and the padding, {len(tokens) - n_trained} tokens) · "
              f'<span style="{TRAINED_STYLE};padding:0 4px">highlighted</span>: trained '
              f"(the response and its end token, {n_trained} tokens)</div>")
    return f'<div class="instruct-example"><div style="{_ROW}">{"".join(spans)}</div>{legend}</div>'


def _verdict(answer, ok) -> str:
    if answer is None:
        return '<td style="color:#888">…</td>'
    mark, color = ("✓", "#1a7f37") if ok else ("✗", "#b42318")
    return f'<td><code>{html.escape(answer) or "(empty)"}</code> <b style="color:{color}">{mark}</b></td>'


def answers_html(rows: list[dict], exact_before: float | None = None, exact_after: float | None = None,
                 n_records: int = 0) -> str:
    """Held-out instructions with the expected answer and the model's greedy answers before and after."""
    head = "<tr><th>instruction</th><th>input</th><th>expected</th><th>before</th><th>after</th></tr>"
    body = "".join(f"<tr><td>{html.escape(r['instruction'])}</td><td><code>{html.escape(r['input'])}</code></td>"
                   f"<td><code>{html.escape(r['expected'])}</code></td>{_verdict(r['before'], r['before_ok'])}"
                   f"{_verdict(r['after'], r['after_ok'])}</tr>" for r in rows)
    summary = ""
    if exact_before is not None:
        summary = (f'<p style="font-size:13px">Exact match on {n_records} held-out records: '
                   f"<b>{exact_before:.0%}</b> before"
                   + (f", <b>{exact_after:.0%}</b> after." if exact_after is not None else ", training…") + "</p>")
    return (f'<div class="instruct-answers">{summary}<table style="font-size:13px;border-collapse:collapse">'
            f"{head}{body}</table></div>")
