"""Model tab: the architecture with the active config, parameter counts, where the weights came from."""
from __future__ import annotations

import gradio as gr

from ..compute.model_info import architecture_markdown, config_rows, grouped_param_counts
from ..context import AppContext
from ..errors import handle
from ..figures.model_info import param_count_bars

TITLE = "Model"
EXPLANATION = """
GPT-2 is a stack of identical **blocks**. Each token becomes a vector (its token embedding plus a
position embedding); every block lets tokens look back at earlier tokens (**attention**) and then
transforms each token on its own (**feed-forward** with GELU). **LayerNorm** rescales the vectors
before each step. At the end, the output head scores every word in the vocabulary as the next token.
Most parameters sit in the token embedding and the feed-forward layers.
"""


def build(ctx: AppContext) -> None:
    gr.Markdown(EXPLANATION)
    source = gr.Markdown(elem_id="model-source")
    architecture = gr.Markdown(elem_id="model-architecture")
    with gr.Row():
        config = gr.Dataframe(headers=["setting", "value", "meaning"], interactive=False,
                              elem_id="model-config", label="Active config")
        params = gr.Plot(elem_id="model-params", label="Parameter counts")
    card = gr.Markdown(elem_id="model-card")

    @handle
    def show(model_name, user_models):
        entry = ctx.model(model_name, user_models)
        model = entry.model
        banner = "" if entry.trained else "\n\n⚠️ **Untrained:** random weights, so every prediction is noise."
        source_md = f"**{entry.name}** — weights from: {entry.source}{banner}"
        card_md = ""
        if entry.card.get("val_loss") is not None:
            card_md = (f"Trained for {entry.card.get('step', '?')} steps; validation loss "
                       f"{entry.card['val_loss']:.3f} nats/token. See the model card in "
                       f"`checkpoints/` for the data, the commands and samples.")
        return (source_md, architecture_markdown(model), config_rows(model),
                param_count_bars(grouped_param_counts(model)), card_md)

    outputs = [source, architecture, config, params, card]
    btn = gr.Button("Show model", elem_id="model-run", variant="primary")
    btn.click(show, ctx.model_inputs, outputs, api_name="model_info")
    gr.on([ctx.model_choice.change, ctx.page_ready.click], show, ctx.model_inputs, outputs, api_visibility="private")
