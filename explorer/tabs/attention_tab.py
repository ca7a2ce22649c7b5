"""Attention tab: one head's pattern, the head average, one token across heads, and every head at once."""
from __future__ import annotations

import gradio as gr

from ..components import Slider
from ..compute.attention import attention_run, head_average, pool_patterns, query_row
from ..context import AppContext
from ..errors import handle
from ..figures.attention import GRID_MAX_CELLS, attention_heatmap, head_grid, query_heads
from ..inputs import MAX_VIEW_TOKENS, InputError, Prompt, check_number, check_position, prepare_prompt

TITLE = "Attention"
EXPLANATION = """
In every layer, each token builds a **query** ("what am I looking for?") and every token offers a
**key** ("what do I contain?"). A head compares the query of one token with the keys of all tokens
and turns the matches into **attention weights** that add up to 1: how much of each earlier token's
information this token takes in. GPT-2 may only look **backwards**: the keys of later tokens are
masked (grey), because when it writes a word it cannot have seen the words after it yet.

Each layer has several **heads** that look in different ways at once: some look at the previous
token, some at the first token (a "resting place" when nothing else matches), some at earlier copies
of the same word. Pick a layer and a head to see its pattern; a row is one token looking back.
"""
EXAMPLES = [
    "The cat sat on the mat because it was tired.",
    "one two three four five six seven, one two three four five six seven",
    "Alice gave Bob the book, and then Bob gave it back to Alice.",
    "ROMEO: But soft, what light through yonder window breaks? It is the east, and Juliet is the sun.",
]
GRID_NOTE = ("Each small square is one head's pattern (rows = queries, columns = keys), on the same "
             "0 → 1 colour scale as the big heatmap; long prompts are shrunk so that each cell sums "
             "the attention from a few queries to a few keys. Choose a layer and a head above to enlarge "
             "one; it is outlined in red.")


def _as_flag(value, name: str) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise InputError(f"{name} must be true or false, got {value!r}.")


def _prompt(text, model) -> Prompt:
    return prepare_prompt(text, max_tokens=min(MAX_VIEW_TOKENS, model.config.n_ctx))


def _summary(prompt: Prompt, patterns, layer: int, head: int, query: int) -> str:
    """One computed sentence about the selected head and query token."""
    tokens = [f"`` {t} ``" for t in prompt.tokens]    # double backticks: a token may contain one
    row = patterns[layer, head, query, :query + 1]
    top = int(row.argmax())
    avg = patterns[layer, :, query, :query + 1].mean(axis=0)
    avg_top = int(avg.argmax())
    return (f"{len(tokens)} tokens. **Layer {layer}, head {head}:** token {query} {tokens[query]} puts "
            f"its largest weight, **{row[top]:.2f}**, on token {top} {tokens[top]}. Averaged over the "
            f"{patterns.shape[1]} heads of layer {layer}, it looks most at token {avg_top} "
            f"{tokens[avg_top]} ({avg[avg_top]:.2f}).")


def build(ctx: AppContext) -> None:
    cfg = ctx.model(ctx.model_choice.value).model.config
    n0 = ctx.initial_tokens(MAX_VIEW_TOKENS)
    gr.Markdown(EXPLANATION, elem_id="attention-explanation")
    gr.Examples(EXAMPLES, inputs=[ctx.prompt], label="Example prompts")
    with gr.Row():
        layer = Slider(0, max(cfg.n_layer - 1, 1), value=0, step=1, label="Layer", elem_id="attention-layer")
        head = Slider(0, max(cfg.n_head - 1, 1), value=0, step=1, label="Head", elem_id="attention-head")
        query = Slider(0, max(n0 - 1, 1), value=n0 - 1, step=1, label="Query token (position)",
                          info="the token whose view you follow; starts at the last one",
                          elem_id="attention-query")
    with gr.Row():
        show_scores = gr.Checkbox(False, label="Show raw scores (before softmax) in the big heatmap",
                                  elem_id="attention-show-scores")
        btn = gr.Button("Show attention", elem_id="attention-run", variant="primary")
    n_tokens = gr.State(n0)   # tokens in the last prompt shown: lets the query slider follow the last token
    # The prompt the sliders were just fitted to, for the draw that follows: the prompt box itself may
    # already hold newer text by then (typed, or a link's), which the fitted query slider need not fit.
    fitted_prompt = gr.Textbox(ctx.prompt.value, visible=False, elem_id="attention-fitted-prompt")
    info = gr.Markdown(elem_id="attention-info")
    with gr.Row():
        head_plot = gr.Plot(elem_id="attention-heatmap", label="One head", scale=3)
        avg_plot = gr.Plot(elem_id="attention-average", label="Average of the layer's heads", scale=2)
    query_plot = gr.Plot(elem_id="attention-query-heads", label="One token, every head of the layer")
    gr.Markdown(GRID_NOTE, elem_id="attention-grid-note")
    grid_plot = gr.Plot(elem_id="attention-grid", label="Every head in every layer")

    @handle
    def sync_controls(text, layer_v, head_v, query_v, last_t, model_name, user_models):
        """Fit the sliders to the model (layers, heads) and the prompt (tokens) before drawing."""
        model = ctx.model(model_name, user_models).model
        c = model.config
        T = len(_prompt(text, model).ids)

        def fit(value, top, default):
            try:
                return min(max(int(value), 0), top)
            except (TypeError, ValueError):
                return default

        def slider(value, new_value, top):
            # Send the value only when it has to move: a value sent back could undo a slider the
            # user is dragging right now.
            update = dict(maximum=max(top, 1))
            if new_value != value:
                update["value"] = new_value
            return gr.update(**update)

        q = fit(query_v, T - 1, T - 1)
        if not last_t or query_v is None or query_v >= T or query_v == last_t - 1:
            q = T - 1      # a new prompt: follow its last token (unless the user picked another one)
        return (slider(layer_v, fit(layer_v, c.n_layer - 1, 0), c.n_layer - 1),
                slider(head_v, fit(head_v, c.n_head - 1, 0), c.n_head - 1),
                slider(query_v, q, T - 1), T, text)

    @handle
    def attention_view(text, layer_v, head_v, query_v, scores_v, model_name, user_models):
        """Every attention figure for one prompt: the chosen head, the layer's head average, one query
        token across the layer's heads, the grid of all heads, and a notice line. query -1 = last token."""
        model = ctx.model(model_name, user_models).model
        c = model.config
        layer_i = check_number(layer_v, "Layer", 0, c.n_layer - 1, integer=True)
        head_i = check_number(head_v, "Head", 0, c.n_head - 1, integer=True)
        want_scores = _as_flag(scores_v, "Show scores")
        prompt = _prompt(text, model)
        T = len(prompt.ids)
        q = check_position(query_v, T, "Query position")
        run = attention_run(model, prompt.ids, scores_layer=layer_i if want_scores else None)
        tokens = prompt.tokens
        if want_scores:
            big = attention_heatmap(run.scores[head_i], tokens, f"Layer {layer_i}, head {head_i}: raw scores "
                                    "(query · key / √d, before softmax)", scores=True, query=q)
        else:
            big = attention_heatmap(run.patterns[layer_i, head_i], tokens,
                                    f"Layer {layer_i}, head {head_i}: attention weights", query=q)
        avg = attention_heatmap(head_average(run.patterns, layer_i), tokens,
                                f"Layer {layer_i}: average of its {c.n_head} heads", query=q)
        per_head = query_heads(query_row(run.patterns, layer_i, q), tokens, q, layer_i, selected_head=head_i)
        pooled, step = pool_patterns(run.patterns, GRID_MAX_CELLS)
        grid = head_grid(pooled, step, selected=(layer_i, head_i))
        notes = prompt.notice_markdown()
        text_md = (notes + "\n\n" if notes else "") + _summary(prompt, run.patterns, layer_i, head_i, q)
        return big, avg, per_head, grid, text_md

    def link_limits(entry, text):
        c, T = entry.model.config, len(_prompt(text, entry.model).ids)
        return {"layer": (0, c.n_layer - 1), "head": (0, c.n_head - 1), "query": (0, T - 1)}

    ctx.url_state(layer=layer, head=head, query=query, scores=show_scores, limits=link_limits)
    model_inputs = list(ctx.model_inputs)
    sync = gr.on([btn.click, ctx.prompt.submit, ctx.page_ready.click, layer.release, head.release, query.release, show_scores.input,
                  ctx.model_choice.change],
                 sync_controls, [ctx.prompt, layer, head, query, n_tokens, *model_inputs],
                 [layer, head, query, n_tokens, fitted_prompt], api_visibility="private")
    # preprocess=False: API callers may send any layer, head or query (sliders would refuse values
    # outside their build-time range with a generic message); attention_view checks them itself.
    sync.success(attention_view, [fitted_prompt, layer, head, query, show_scores, *model_inputs],
                 [head_plot, avg_plot, query_plot, grid_plot, info], api_name="attention_view",
                 preprocess=False)
