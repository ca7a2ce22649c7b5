"""LayerNorm tab: each LayerNorm's mean/std before and after, per token, and the residual-stream norm."""
from __future__ import annotations

import gradio as gr

from ..components import Slider
from ..compute.layernorm import layernorm_stats, residual_summary, scale_shift_summary, token_summary
from ..context import AppContext
from ..errors import handle
from ..figures.layernorm import before_after_heatmaps, residual_norm_lines, token_profile
from ..inputs import MAX_VIEW_TOKENS, InputError, check_number, prepare_prompt

TITLE = "LayerNorm"
EXPLANATION = """
Every token is a long vector of numbers (the **residual stream**). Before attention and before the
feed-forward layer of each block, and once more at the very end (`ln_f`), a **LayerNorm** rescales
each token's vector on its own: it subtracts the vector's mean and divides by its standard deviation,
so the numbers have **mean 0 and variance 1**. Then it multiplies by a learned **scale** (weight) and
adds a learned **shift** (bias), one per dimension. Those learned numbers set the output's own mean
and spread, so "after" is usually *not* exactly 0 and 1 — only in a fresh, untrained model is it.

Below: each token's mean and std going **into** each LayerNorm (left) and coming **out** (right),
then one token up close, then how long each token's residual vector grows as blocks add to it.
"""
EXAMPLES = [
    "To be, or not to be, that is the question:",
    "the the the the the the the the the the the the",
    "1 2 3 4 5 6 7 8 9 10 11 12",
    "Once upon a time, in a land far away, there lived a dragon who loved poetry.",
]


def build(ctx: AppContext) -> None:
    gr.Markdown(EXPLANATION)
    gr.Examples(EXAMPLES, inputs=[ctx.prompt], label="Example prompts")
    notice = gr.Markdown(elem_id="layernorm-notice", elem_classes="notice")
    with gr.Row():
        # The maximum stays fixed: gradio checks API values against it, per session, so moving it
        # with the prompt would make the accepted range depend on earlier calls. Past the end = last token.
        token = Slider(0, MAX_VIEW_TOKENS - 1, value=ctx.initial_tokens(MAX_VIEW_TOKENS) - 1, step=1,
                          label="Token to look at (position; past the end = the last token)",
                          elem_id="layernorm-token", scale=3)
        btn = gr.Button("Show LayerNorms", elem_id="layernorm-run", variant="primary", scale=1)
    scale_md = gr.Markdown(elem_id="layernorm-scale-shift")
    std_plot = gr.Plot(elem_id="layernorm-std", label="Standard deviation before and after")
    mean_plot = gr.Plot(elem_id="layernorm-mean", label="Mean before and after")
    token_plot = gr.Plot(elem_id="layernorm-token-plot", label="One token, before vs after")
    token_md = gr.Markdown(elem_id="layernorm-token-summary")
    gr.Markdown("### The residual stream grows\nEach block *adds* its attention and feed-forward outputs "
                "to the token's vector, so the vector tends to get longer layer by layer. LayerNorm is "
                "what keeps the inputs of every step on a fixed scale anyway.")
    resid_plot = gr.Plot(elem_id="layernorm-resid", label="Residual stream norm per token")
    resid_md = gr.Markdown(elem_id="layernorm-resid-summary")

    @handle
    def view(text, token_pos, model_name, user_models):
        entry = ctx.model(model_name, user_models)
        model = entry.model
        pos = check_number(token_pos, "token position", 0, MAX_VIEW_TOKENS - 1, integer=True)
        prompt = prepare_prompt(text, max_tokens=min(MAX_VIEW_TOKENS, model.config.n_ctx))
        notices = prompt.notice_markdown()
        T = len(prompt.ids)
        if pos >= T:
            notices += ("\n" if notices else "") + (
                f"ⓘ Token position {pos} is past the end of this {T}-token prompt; showing the last token ({T - 1}).")
            pos = T - 1
        stats = layernorm_stats(model, prompt.ids)
        tokens = prompt.tokens
        return (
            notices,
            pos,
            scale_shift_summary(model),
            before_after_heatmaps(stats.labels, tokens, stats.in_std, stats.out_std, kind="std"),
            before_after_heatmaps(stats.labels, tokens, stats.in_mean, stats.out_mean, kind="mean"),
            token_profile(stats.labels, stats.in_mean[:, pos], stats.in_std[:, pos],
                          stats.out_mean[:, pos], stats.out_std[:, pos], f"{pos}: {tokens[pos]}"),
            token_summary(stats, pos, tokens[pos]),
            residual_norm_lines(stats.stages, stats.resid_norm, tokens),
            residual_summary(stats, tokens),
        )

    inputs = [ctx.prompt, token, *ctx.model_inputs]
    outputs = [notice, token, scale_md, std_plot, mean_plot, token_plot, token_md, resid_plot, resid_md]
    ctx.url_state(token=token)
    btn.click(view, inputs, outputs, api_name="layernorm_view")
    gr.on(ctx.refresh_triggers, view, inputs, outputs, api_visibility="private")
    token.release(view, inputs, outputs, api_visibility="private")
