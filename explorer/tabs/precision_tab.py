"""Precision tab: the same prompt in fp32, bf16, fp16 and int8, side by side (quantisation made visible)."""
from __future__ import annotations

import gradio as gr

from gpt2core.kernels import backend
from gpt2core.reference.devices import device_of

from ..compute.precision import megabytes, precision_view, summary_markdown
from ..context import AppContext
from ..errors import handle
from ..scheduling import step_aside
from ..figures.precision import cost_bars, error_bars, position_errors, top_tokens_bars
from ..inputs import MAX_VIEW_TOKENS, prepare_prompt

TITLE = "Precision"
EXPLANATION = """
A model's weights and activations are numbers, and a number format decides how many digits of each
survive. Here the prompt runs through the same model four times: in **fp32** (32-bit floats, the
reference), **bf16** (bfloat16: fp32's range with 8 significant bits, about 3 decimal digits),
**fp16** (float16: 11 significant bits in a narrower range) and **int8** (PyTorch's dynamic
quantisation: each linear layer's weights as whole numbers from −127 to 127 times one scale, its
inputs quantised the same way on each call). Only the matrix products change format; LayerNorm,
softmax, GELU and the residual stream stay fp32, so every difference below comes from rounding.

**What to look at:** rounding nudges every logit a little (bf16 by about a tenth, int8 by more) while
the attention weights barely move, so the top next token usually stays and only its probability
shifts. It matters when the model is unsure, when two next tokens are nearly tied: there a nudge
swaps them (the ✕ marks in the position chart and "differs from fp32" in the table; try the
examples), and that is the price paid for weights half the size (bf16, fp16) or less (int8).
"""
# Found by trying on the bundled model: on the first two int8 changes the top next token
# (tests/test_precision_tab.py checks two examples do); the last is a sure prediction.
EXAMPLES = [
    "You have broke it, cousin; and by my life, you shall make it",
    "If music be the food of love, play",
    "And I will fill them with",
    "To be, or not to be, that is the question:",
]


def build(ctx: AppContext) -> None:
    gr.Markdown(EXPLANATION)
    gr.Examples(EXAMPLES, inputs=[ctx.prompt], label="Example prompts", elem_id="precision-examples")
    with gr.Row():
        run = gr.Button("Run in every precision", variant="primary", elem_id="precision-run")
    notice = gr.Markdown(elem_id="precision-notice", elem_classes="notice")
    summary = gr.Markdown(elem_id="precision-summary")
    top_plot = gr.Plot(elem_id="precision-top-tokens", label="Top next tokens under each precision")
    error_plot = gr.Plot(elem_id="precision-errors", label="Errors against fp32")
    position_plot = gr.Plot(elem_id="precision-positions", label="Logit change at each position")
    cost_plot = gr.Plot(elem_id="precision-cost", label="Weight memory and run time")

    @handle
    def view(text, model_name, user_models):
        """The prompt (at most the view cap) in every precision: top tokens, errors against fp32, cost."""
        model = ctx.model(model_name, user_models).model
        prompt = prepare_prompt(text, max_tokens=min(MAX_VIEW_TOKENS, model.config.n_ctx))
        notices = [f"ⓘ {n}" for n in prompt.notices]
        wanted = list(backend.PRECISIONS)
        if device_of(model).type != "cpu" and "int8" in wanted:
            wanted.remove("int8")
            notices.append("ⓘ int8 is left out: PyTorch's dynamic quantisation runs on the CPU only, and this "
                           f"model is on {device_of(model)}.")
        v = precision_view(model, prompt, wanted, between=step_aside)   # the views go first between runs
        names = v.names
        return ("\n".join(notices), summary_markdown(v),
                top_tokens_bars(names, [v.top_tokens(r) for r in v.rows], [r.top_probs for r in v.rows]),
                error_bars(names, [r.max_logit_delta for r in v.rows], [r.top1_agreement for r in v.rows],
                           [r.max_attention_delta for r in v.rows],
                           ["the reference" if i == 0 else v.where_text(r, markdown=False)
                            for i, r in enumerate(v.rows)]),
                position_errors(names, v.tokens, [r.logit_delta_by_position for r in v.rows],
                                [r.top1_same for r in v.rows]),
                cost_bars(names, [megabytes(r.weight_bytes) for r in v.rows], [r.seconds * 1000 for r in v.rows]))

    # Four full forward passes (about 1.4 s on GPT-2 124M at 128 tokens): drawn on request, not on page
    # load, and redrawn on Shift+Enter only in a session that has drawn this view already.
    drawn = gr.State(False)

    def redraw(text, model_name, user_models, was_drawn):
        if not was_drawn:
            return tuple(gr.skip() for _ in outputs)
        return view(text, model_name, user_models)

    inputs = [ctx.prompt, *ctx.model_inputs]
    outputs = [notice, summary, top_plot, error_plot, position_plot, cost_plot]
    ctx.url_state(redraw=run)   # a link to this tab presses the button
    run.click(view, inputs, outputs, api_name="precision_view").success(lambda: True, None, drawn,
                                                                        api_visibility="private")
    ctx.prompt.submit(redraw, [*inputs, drawn], outputs, api_visibility="private")
