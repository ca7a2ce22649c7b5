"""Beam search views: the search tree (x = step, a node per hypothesis, the best path highlighted), the
finished hypotheses, and greedy / sampling / beam search side by side."""
from __future__ import annotations

import math

import plotly.graph_objects as go

from .common import style
from .generation import esc
from .sampling_view import plot_text

# Node statuses (explorer.compute.beam names them): colour, marker, size, and the words a hover uses.
STATUS_STYLE = {
    "best path": dict(color="#e4572e", symbol="circle", size=13),
    "finished": dict(color="#2a9d3f", symbol="diamond", size=11),
    "kept": dict(color="#1f5fbf", symbol="circle", size=10),
    "ranked, not kept": dict(color="#8a8f96", symbol="circle-open", size=9),
    "not ranked": dict(color="#b9bdc2", symbol="circle", size=6),
}
LEGEND_NAMES = {"best path": "best path", "finished": "finished (ended)", "kept": "kept as a beam",
                "ranked, not kept": "ranked in the best 2W, dropped", "not ranked": "outside the best 2W"}
ROW_PX = 17                 # vertical room per tree row: one line of 11 px label text and a gap
MAX_LABEL_CHARS = 14          # <|endoftext|> fits whole
PLOT_PX = 1150          # about the plot area's width in the app's layout, for how much a step's column holds
LABEL_WITH_NUMBER_PX = 85     # a column this wide holds "token −12.3"; one half as wide, the token alone
MAX_HEIGHT = 2000
# Up to this many nodes the labels are annotations on a white backing, readable where an edge crosses them;
# a bigger tree (width 8, 32 steps) keeps plain scatter text, which the browser draws far faster.
MAX_BACKED_LABELS = 300


def minus(x: float, digits: int = 2) -> str:
    """A number with a real minus sign, as the hover and labels print it."""
    return f"{x:.{digits}f}".replace("-", "−")


def short_label(token: str, most: int = MAX_LABEL_CHARS) -> str:
    return token if len(token) <= most else token[:most - 1] + "…"


def hover_text(tree, node) -> str:
    prompt = tree.nodes[0].token
    what = {
        "best path": ("the winner: the finished hypothesis with the best score"
                      if node.step == tree.best.n_tokens else "on the winner's path"),
        "finished": "finished: it ended (end-of-text, or the last step) among the best "
                    f"{tree.width} and stayed in the {tree.width} best finished",
        "kept": f"kept: one of the {tree.width} beams carried to the next step",
        "ranked, not kept": f"ranked #{node.rank + 1} of the step's {tree.n_candidates} best continuations, "
                            f"below the {tree.width} kept",
        "not ranked": f"dropped: not among the step's {tree.n_candidates} best continuations of all beams",
    }[node.status]
    so_far = plot_text(prompt.replace("\n", "↵")) + "<b>" + plot_text(node.text.replace("\n", "↵")) + "</b>"
    length_note = (f"; score {minus(node.score)} (÷ {node.step}<sup>{tree.length_penalty:g}</sup>)"
                   if tree.length_penalty != 0 else "")
    return (f"<b>{plot_text(node.token)}</b> (new token {node.step})<br>"
            f"text so far: {so_far}<br>"
            f"token log-prob {minus(node.token_logprob)} (p = {math.exp(node.token_logprob):.1%})<br>"
            f"cumulative log-prob {minus(node.cum_logprob)}{length_note}<br>{what}")


def beam_tree_figure(tree) -> go.Figure:
    """The search as a tree. ``tree`` has nodes (step, parent, row, token, text, token_logprob, cum_logprob,
    score, status, rank; node 0 is the prompt), width, n_candidates, length_penalty, steps
    (explorer.compute.beam.BeamTree)."""
    nodes = tree.nodes
    fig = go.Figure()
    for on_path in (False, True):    # edges: grey, then the best path's on top
        xs, ys = [], []
        for node in nodes[1:]:
            if (node.status == "best path") == on_path:
                parent = nodes[node.parent]
                xs += [parent.step, node.step, None]
                ys += [parent.row, node.row, None]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                                 line=dict(color="#e4572e" if on_path else "#c9ccd1", width=3.5 if on_path else 1)))
    root = nodes[0]
    fig.add_trace(go.Scatter(x=[0], y=[root.row], mode="markers+text", text=["prompt"], textposition="top center",
                             marker=dict(color="#333", symbol="square", size=11), showlegend=False,
                             hovertext=[f"the prompt: {plot_text(root.token.replace(chr(10), '↵'))}"],
                             hoverinfo="text", textfont=dict(size=11, color="#333")))
    n_rows = int(max(n.row for n in nodes)) + 1
    height = 130 + ROW_PX * n_rows
    # A tree taller than the page has room for labels only its beams, finished ones and winner: the rest
    # would overprint one another (their hovers still say everything).
    dense = height > MAX_HEIGHT
    backed = len(nodes) <= MAX_BACKED_LABELS
    column_px = PLOT_PX / (tree.steps + 1.35)
    with_numbers = column_px >= LABEL_WITH_NUMBER_PX
    columns_hold_text = column_px >= LABEL_WITH_NUMBER_PX / 2   # else no labels: hover the nodes
    annotations = []
    for status, look in STATUS_STYLE.items():
        these = [n for n in nodes[1:] if n.status == status]
        if not these:
            continue
        labelled = columns_hold_text and (not dense or status in ("best path", "finished", "kept"))
        labels = [f"{plot_text(short_label(n.token))} {minus(n.cum_logprob, 1)}" if with_numbers
                  else plot_text(short_label(n.token, 6)) for n in these]
        text_color = look["color"] if status != "not ranked" else "#8a8f96"
        fig.add_trace(go.Scatter(
            x=[n.step for n in these], y=[n.row for n in these],
            mode="markers+text" if labelled and not backed else "markers",
            name=LEGEND_NAMES[status], text=labels if labelled and not backed else None,
            textposition="middle right", textfont=dict(size=11, color=text_color),
            marker=dict(color=look["color"], symbol=look["symbol"], size=look["size"],
                        line=dict(width=1.5 if look["symbol"].endswith("open") else 0, color=look["color"])),
            hovertext=[hover_text(tree, n) for n in these], hoverinfo="text"))
        if labelled and backed:
            annotations += [dict(x=n.step, y=n.row, text=label, showarrow=False, xanchor="left", xshift=10,
                                 font=dict(size=11, color=text_color), bgcolor="rgba(255,255,255,0.85)",
                                 borderpad=0) for n, label in zip(these, labels)]
    fig.layout.annotations = annotations     # at once: add_annotation validates each, ~4 ms apiece
    fig.update_xaxes(title="new token #", tickmode="array", tickvals=list(range(tree.steps + 1)),
                     ticktext=["prompt"] + [str(i) for i in range(1, tree.steps + 1)],
                     range=[-max(0.4, 25 / column_px), tree.steps + 0.95], showgrid=False, zeroline=False)
    fig.update_yaxes(visible=False, autorange="reversed")
    fig.update_layout(legend=dict(orientation="h", y=1.0, yanchor="bottom", x=0, font=dict(size=11)),
                      hoverlabel=dict(align="left"), meta=dict(filename=f"beam_tree_w{tree.width}"))
    height = min(MAX_HEIGHT, max(380, height))
    title = ("label = token and cumulative log-prob" if with_numbers else
             "label = token; hover for log-probs" if columns_hold_text else "hover a node for its token and log-probs")
    fig = style(fig, f"Beam search, width {tree.width}: {title}", height=height)
    fig.update_layout(margin=dict(t=80))    # room for the title and the legend above the tree
    return fig


def one_line(text: str) -> str:
    """Escaped text on one line: each newline a grey ↵, so that a table row stays one row high."""
    return '<span style="color:#999">↵</span>'.join(esc(part) for part in text.split("\n"))


def finished_html(tree) -> str:
    """The prompt and the best continuation, then every finished hypothesis with its score."""
    best = tree.best
    cell = 'style="padding:2px 10px;border:none;border-bottom:1px solid #eee"'
    rows = "".join(
        f'<tr style="{"font-weight:600" if i == 0 else ""}"><td {cell}>{i + 1}</td>'
        f"<td {cell}>{one_line(f.text)}</td><td {cell}>{f.n_tokens}{' (end-of-text)' if f.ends_with_eos else ''}</td>"
        f"<td {cell}>{minus(f.cum_logprob)}</td><td {cell}>{minus(f.score)}</td></tr>"
        for i, f in enumerate(tree.finished))
    head = "".join(f'<th {cell}>{h}</th>' for h in (
        "#", "finished hypothesis", "tokens", "total log-prob",
        f"score (total ÷ tokens<sup>{tree.length_penalty:g}</sup>)"))
    return ('<div class="beam-output">'
            '<div style="white-space:pre-wrap;word-break:break-word;line-height:1.9;font-size:15px;'
            'padding:10px;border:1px solid #ddd;border-radius:6px">'
            f'<span style="color:#444">{esc(tree.prompt_text)}</span>'
            f'<span style="background:#fde2d9;border-radius:3px">{esc(best.text)}</span></div>'
            '<table class="beam-finished" style="font-size:13px;margin-top:8px;border-collapse:collapse;'
            f'border:none;width:auto">'
            f"<tr>{head}</tr>{rows}</table></div>")


def compare_html(prompt_text: str, rows) -> str:
    """Greedy, sampling and beam search continuations side by side. ``rows`` have method, settings, text,
    token_ids, total_logprob and mean_logprob (explorer.compute.beam.Continuation); the highest total is bold."""
    best = max(range(len(rows)), key=lambda i: rows[i].total_logprob if rows[i].token_ids else -math.inf)
    cells = []
    for i, r in enumerate(rows):
        weight = "font-weight:600;" if i == best else ""
        cells.append(
            f'<div style="flex:1;min-width:220px;border:1px solid #ddd;border-radius:6px;padding:10px;{weight}">'
            f'<div style="font-size:15px">{esc(r.method)}</div>'
            f'<div style="font-size:12px;color:#666;font-weight:400">{esc(r.settings)}</div>'
            f'<div style="white-space:pre-wrap;word-break:break-word;margin:8px 0;font-weight:400">'
            f'<span style="color:#888">…{esc(prompt_text[-30:])}</span>{esc(r.text)}</div>'
            f'<div style="font-size:13px">{len(r.token_ids)} tokens · total log-prob '
            f'<span class="total">{minus(r.total_logprob)}</span> · mean '
            f'<span class="mean">{minus(r.mean_logprob) if r.token_ids else "–"}</span> per token</div></div>')
    return f'<div class="beam-compare" style="display:flex;gap:10px;flex-wrap:wrap">{"".join(cells)}</div>'
