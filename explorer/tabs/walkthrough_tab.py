"""Walkthrough tab: one token through the whole forward pass, step by step, with shapes and statistics."""
from __future__ import annotations

import gradio as gr

from ..compute.walkthrough import (block_choices, picture, residual_norms, step_markdown, summary_markdown,
                                   walkthrough_run, write_log)
from ..context import AppContext
from ..errors import handle
from ..figures.walkthrough import head_rows, key_rows, logit_histogram, residual_norm_path, top_tokens, vector_strip
from ..inputs import MAX_VIEW_TOKENS, Prompt, check_number, check_position, prepare_prompt

TITLE = "Walkthrough"
EXPLANATION = """
**Follow one token through the whole model:** pick a token, and read down the list to see each step
of the forward pass change its vector, with the shape of the tensor at that step and the token's statistics.
Watch the shapes (d → heads → d → 4d → d), the norm ‖v‖ grow at each residual add, and each LayerNorm
bring a wide-ranging vector back to mean 0 and std 1 before its learned scale γ and shift β.

Each step shows its formula in one line, the shape of its tensor for the whole prompt, and the chosen
token's part of it as a strip of coloured cells (red positive, blue negative; hover for the value).
The attention steps have one row per head and one column per earlier token. The blocks not expanded
show one line each, the norm of the token's residual vector coming in and going out: click one to
expand it. The whole trace is also a text log below, to copy or download, the same as
`python -m gpt2core.analysis.trace "your text"` prints.
"""
EXAMPLES = [
    "To be, or not to be, that is the question:",
    "ROMEO: But soft, what light through yonder window breaks?",
    "KING HENRY: Once more unto the breach, dear friends, once more;",
    "First Citizen: We are accounted poor citizens, the patricians good.",
]
EMBED_STEPS, BLOCK_STEPS, FINAL_STEPS = 3, 16, 3


def _prompt(text, model) -> Prompt:
    return prepare_prompt(text, max_tokens=min(MAX_VIEW_TOKENS, model.config.n_ctx))


def _check_block(value, n_layer: int) -> int:
    if value is None:
        return 0
    return check_number(value, f"Block (this model has {n_layer}: 0 to {n_layer - 1})", 0, n_layer - 1,
                        integer=True)


def _figure(pic):
    if pic.kind == "strip":
        return vector_strip(pic.values)
    if pic.kind == "heads":
        return head_rows(pic.values)
    if pic.kind == "keys":
        return key_rows(pic.values, pic.labels, probabilities=pic.probabilities)
    if pic.kind == "histogram":
        return logit_histogram(pic.values, pic.edges)
    if pic.kind == "top":
        return top_tokens(pic.labels, pic.values)
    raise ValueError(f"unknown picture kind {pic.kind!r}")


def block_choices_before_trace(n_layer: int) -> list[tuple[str, int]]:
    """The block list before the first run: names only (the norms come with a trace)."""
    return [(f"block {i}", i) for i in range(n_layer)]


def _step_slots(n: int, prefix: str) -> list[tuple[gr.Markdown, gr.Plot]]:
    slots = []
    for i in range(n):
        with gr.Row(equal_height=False):
            md = gr.Markdown(elem_id=f"walkthrough-{prefix}-{i}-text", elem_classes="walkthrough-step")
            plot = gr.Plot(show_label=False, elem_id=f"walkthrough-{prefix}-{i}-plot", scale=2)
        slots.append((md, plot))
    return slots


def build(ctx: AppContext) -> None:
    cfg = ctx.model(ctx.model_choice.value).model.config
    n0 = ctx.initial_tokens(MAX_VIEW_TOKENS)
    gr.Markdown(EXPLANATION, elem_id="walkthrough-explanation")
    gr.Examples(EXAMPLES, inputs=[ctx.prompt], label="Example prompts")
    with gr.Row():
        position = gr.Slider(0, max(n0 - 1, 1), value=n0 - 1, step=1, label="Token to follow (position)",
                             info="starts at the last token", elem_id="walkthrough-position")
        btn = gr.Button("Walk through the forward pass", elem_id="walkthrough-run", variant="primary")
    n_tokens = gr.State(n0)
    info = gr.Markdown(elem_id="walkthrough-info")
    norms_plot = gr.Plot(show_label=False, elem_id="walkthrough-norms")

    gr.Markdown("### 1. Embedding: the token and its position become one vector")
    embed_slots = _step_slots(EMBED_STEPS, "embed")
    gr.Markdown("### 2. The blocks: click one to expand it")
    block = gr.Radio(block_choices_before_trace(cfg.n_layer), value=0, label="Blocks (‖x‖ = norm of the token's "
                     "residual vector coming in → going out)", elem_id="walkthrough-blocks")
    block_title = gr.Markdown(elem_id="walkthrough-block-title")
    block_slots = _step_slots(BLOCK_STEPS, "block")
    gr.Markdown("### 3. Output: the final LayerNorm, the logits and the next token")
    final_slots = _step_slots(FINAL_STEPS, "final")
    gr.Markdown("### The trace as a log\nThe same steps for every block, as `python -m gpt2core.analysis.trace` prints them.")
    log_text = gr.Code(language=None, lines=12, max_lines=30, interactive=False, label="Trace log",
                       elem_id="walkthrough-log")
    log_file = gr.File(label="Download the log", interactive=False, elem_id="walkthrough-log-file")

    @handle
    def sync_position(text, position_v, last_t, model_name, user_models):
        """Fit the position slider to the prompt; a new prompt starts at its last token."""
        T = len(_prompt(text, ctx.model(model_name, user_models).model).ids)
        try:
            p = min(max(int(position_v), 0), T - 1)
        except (TypeError, ValueError):
            p = T - 1
        if not last_t or position_v is None or position_v >= T or position_v == last_t - 1:
            p = T - 1
        update = dict(maximum=max(T - 1, 1))
        if p != position_v:
            update["value"] = p
        return gr.update(**update), T

    @handle
    def walkthrough_view(text, position_v, block_v, model_name, user_models):
        """Every step for one token (position -1 = the last) with one block expanded: a summary, the
        residual norms, the embedding steps, the block list, the expanded block's steps, the output
        steps, and the trace log as text and as a file."""
        model = ctx.model(model_name, user_models).model
        c = model.config
        prompt = _prompt(text, model)
        t = check_position(position_v, len(prompt.ids), "Token position")
        b = _check_block(block_v, c.n_layer)
        tr = walkthrough_run(model, prompt.ids, t)
        tokens = prompt.tokens
        norms, stages = residual_norms(tr)
        outputs = [("\n\n".join(x for x in (prompt.notice_markdown(), summary_markdown(tr, b)) if x)),
                   residual_norm_path(stages, norms, expanded=b)]
        number = 0

        def add(steps):
            nonlocal number
            for step in steps:
                number += 1
                outputs.extend([step_markdown(step, number, t), _figure(picture(step, tokens))])

        add(tr.embed_steps)
        bl = tr.blocks[b]
        outputs += [gr.update(choices=block_choices(tr), value=b),
                    f"#### Block {b}: ‖x‖ {bl.norm_in:.4g} → {bl.norm_out:.4g}  \nx + attn(ln_1(x)), then + "
                    f"mlp(ln_2(x)): attention with {c.n_head} heads of {c.head_dim}, then an MLP through "
                    f"{4 * c.n_embd} = 4 × {c.n_embd} units."]
        add(tr.block_steps(b))
        add(tr.final_steps)
        log, path = write_log(tr)
        return (*outputs, log, str(path))

    slots = [x for pair in (*embed_slots, *block_slots, *final_slots) for x in pair]
    outputs = [info, norms_plot, *slots[:2 * EMBED_STEPS], block, block_title, *slots[2 * EMBED_STEPS:],
               log_text, log_file]
    ctx.url_state(redraw=btn)   # drawn the first time the tab opens (and by a link to it)
    model_inputs = list(ctx.model_inputs)
    sync = gr.on([btn.click, ctx.prompt.submit, position.release, ctx.model_choice.change], sync_position,
                 [ctx.prompt, position, n_tokens, *model_inputs], [position, n_tokens], api_visibility="private")
    # preprocess=False: API callers may send any position or block (the slider and the list would refuse
    # values outside their build-time range with a generic message); walkthrough_view checks them itself.
    sync.success(walkthrough_view, [ctx.prompt, position, block, *model_inputs], outputs,
                 api_name="walkthrough_view", preprocess=False)
    block.input(walkthrough_view, [ctx.prompt, position, block, *model_inputs], outputs,
                api_visibility="private", preprocess=False)
