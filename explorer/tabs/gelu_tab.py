"""GELU / feed-forward tab: the GELU curve vs ReLU, and what GELU does to this prompt's numbers."""
from __future__ import annotations

import gradio as gr

from ..components import Number
from ..compute.gelu import NEAR_ZERO, curves_summary, gelu_curves, gelu_stats, layer_summary
from ..context import AppContext
from ..errors import handle
from ..figures.gelu import all_layers_heatmap, curves_figure, layer_histogram, shares_bars
from ..inputs import MAX_VIEW_TOKENS, InputError, check_number, prepare_prompt

TITLE = "GELU / feed-forward"
EXPLANATION = f"""
After attention, each block sends every token through a small **feed-forward network** on its own:
the token's vector is stretched to 4 × as many numbers ("neurons"), each neuron goes through **GELU**,
and the result is squeezed back. GELU is the bend that lets the network do more than multiply.

**GELU vs ReLU.** ReLU keeps positive numbers and turns every negative one into exactly 0. GELU is a
smooth version: big positive numbers pass almost unchanged, big negative ones become almost 0, and
small negative numbers come out as small negative numbers. Its slope changes gradually instead of
jumping from 0 to 1, which makes training smoother.

Below the curves: the GELU inputs and outputs of every layer for **your prompt**, as histograms
(how many tokens × neurons fall in each range), and how many inputs are negative and how many
outputs end up near zero (|out| < {NEAR_ZERO:g}).
"""
EXAMPLES = [
    "To be, or not to be, that is the question:",
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "def add(a, b):\n    return a + b",
    "!!! ??? ... --- ***",
]


def _check_bool(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{name} must be true or false, got {value!r}.")
    return value


def build(ctx: AppContext) -> None:
    gr.Markdown(EXPLANATION)
    with gr.Row():
        exact = gr.Checkbox(False, label="Also draw the exact GELU, x·Φ(x)", elem_id="gelu-exact")
    # Drawn when the tab first opens (first_draw below), not while the app starts.
    curves_plot = gr.Plot(elem_id="gelu-curves", label="GELU and ReLU")
    curves_md = gr.Markdown(elem_id="gelu-curves-summary")
    # Pressed by the page the first time the tab opens (ctx.url_state's redraw), and by a link to the tab.
    first_draw = gr.Button("draw", elem_id="gelu-first-draw", elem_classes="url-hidden")

    @handle
    def curves(show_exact):
        c = gelu_curves()
        return curves_figure(c, _check_bool(show_exact, "show_exact")), curves_summary(c)

    exact.change(curves, [exact], [curves_plot, curves_md], api_name="gelu_curves")
    first_draw.click(curves, [exact], [curves_plot, curves_md], api_visibility="private", show_progress="hidden")

    gr.Markdown("### GELU on your prompt")
    gr.Examples(EXAMPLES, inputs=[ctx.prompt], label="Example prompts")
    notice = gr.Markdown(elem_id="gelu-notice", elem_classes="notice")
    n_layer0 = ctx.registry.get(ctx.registry.default).model.config.n_layer
    with gr.Row():
        # A number box, not a slider: gradio checks a slider's fixed maximum, but models differ in depth.
        layer = Number(0, precision=0, minimum=0, label=f"Layer (0 = first; {n_layer0 - 1} is the last "
                          f"in {ctx.registry.default})", elem_id="gelu-layer", scale=3)
        log_y = gr.Checkbox(False, label="Log-scale counts", elem_id="gelu-log", scale=1)
        btn = gr.Button("Show GELU activations", elem_id="gelu-run", variant="primary", scale=1)
    summary = gr.Markdown(elem_id="gelu-layer-summary")
    with gr.Row():
        hist_plot = gr.Plot(elem_id="gelu-hist", label="Selected layer: GELU inputs and outputs")
        shares_plot = gr.Plot(elem_id="gelu-shares", label="Shares per layer")
    all_plot = gr.Plot(elem_id="gelu-all-layers", label="All layers")

    @handle
    def view(text, layer_idx, log_scale, model_name, user_models):
        entry = ctx.model(model_name, user_models)
        model = entry.model
        n_layer = model.config.n_layer
        layer_idx = check_number(layer_idx, "layer", 0, n_layer - 1, integer=True)
        log_scale = _check_bool(log_scale, "log scale")
        prompt = prepare_prompt(text, max_tokens=min(MAX_VIEW_TOKENS, model.config.n_ctx))
        stats = gelu_stats(model, prompt.ids)
        return (
            prompt.notice_markdown(),
            layer_idx,
            f"*{entry.name}* has {n_layer} layers (0 to {n_layer - 1})"
            + (", and its MLPs use the exact GELU, x·Φ(x), as nanoGPT's nn.GELU does (the curves above show both). "
               if model.config.activation == "gelu" else ". ") + layer_summary(stats, layer_idx),
            layer_histogram(stats.edges, stats.pre_counts[layer_idx], stats.post_counts[layer_idx],
                            layer_idx, log_y=log_scale),
            shares_bars(stats.neg_share, stats.zero_share, stats.threshold, selected=layer_idx),
            all_layers_heatmap(stats.edges, stats.pre_counts, stats.post_counts),
        )

    inputs = [ctx.prompt, layer, log_y, *ctx.model_inputs]
    outputs = [notice, layer, summary, hist_plot, shares_plot, all_plot]
    ctx.url_state(layer=layer, log=log_y, exact=exact, redraw=first_draw)
    btn.click(view, inputs, outputs, api_name="gelu_view")
    gr.on(ctx.refresh_triggers, view, inputs, outputs, api_visibility="private")
    layer.submit(view, inputs, outputs, api_visibility="private")
    log_y.input(view, inputs, outputs, api_visibility="private")
