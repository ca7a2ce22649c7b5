"""Compare tab: two prompts, or two models on one prompt, side by side."""
from __future__ import annotations

import gradio as gr

from ..components import Slider
from ..compute.compare import (UntrainedTwin, check_layer_head, compare_distributions, pattern_difference,
                               run_pair, summary_markdown)
from ..context import AppContext
from ..errors import handle
from ..figures.compare import attention_difference, attention_pair, distribution_pair_bars
from ..figures.tokens import token_chips_html
from ..inputs import MAX_VIEW_TOKENS, InputError, prepare_prompt

TITLE = "Compare"
EXPLANATION = """
A contrast shows what one change does: the same model on two prompts that differ in one word, or two
models on the same prompt (the bundled model against an untrained one with the same shape, GPT-2 once
it is loaded, or a model you trained in the Train tab). Both sides run through their model once; the
chart puts their next-token distributions together (each side's top tokens, with both
probabilities, sorted by how much more likely A finds them than B), and for a chosen layer and head
the two attention patterns are drawn side by side.

**What to look at:** swap one word (lord → lady, Romeo → Juliet) and watch which next tokens gain or
lose probability at the top and bottom of the chart. When both prompts have the same number of
tokens, the difference map (B − A, red = B attends more, blue = less) shows which heads react to the
swapped word; a trained model against its untrained twin shows what training changed.
"""
PROMPT_A = "My lord, the king is dead, and"
PROMPT_B = "My lady, the queen is dead, and"


def build(ctx: AppContext) -> None:
    default = ctx.model(ctx.model_choice.value)
    twin = UntrainedTwin(default.model)
    twin_name = f"untrained twin of {default.name} (random weights)"

    def choices(user_models=None):
        return ctx.registry.names() + [twin_name] + list(user_models or {})

    def resolve(name, user_models, side):
        if name is None:   # the API must say which model each side runs (the page always sends one)
            raise InputError(f"Model {side}: choose a model, one of: {', '.join(choices(user_models))}.")
        if name == twin_name:
            return twin.get()
        try:
            return ctx.model(name, user_models).model
        except InputError as e:
            raise InputError(f"Model {side}: {e}") from None

    cfg = default.model.config
    gr.Markdown(EXPLANATION)
    with gr.Row():
        with gr.Column():
            text_a = gr.Textbox(PROMPT_A, label="Prompt A", lines=2, elem_id="compare-prompt-a")
            model_a = gr.Dropdown(choices(), value=default.name, label="Model A", allow_custom_value=True,
                                  elem_id="compare-model-a")
        with gr.Column():
            text_b = gr.Textbox(PROMPT_B, label="Prompt B", lines=2, elem_id="compare-prompt-b")
            model_b = gr.Dropdown(choices(), value=default.name, label="Model B", allow_custom_value=True,
                                  elem_id="compare-model-b")
    with gr.Row():
        layer = Slider(0, max(cfg.n_layer - 1, 1), value=0, step=1, label="Layer", elem_id="compare-layer")
        head = Slider(0, max(cfg.n_head - 1, 1), value=0, step=1, label="Head", elem_id="compare-head")
        run = gr.Button("Compare", variant="primary", elem_id="compare-run")
    gr.Examples([[PROMPT_A, PROMPT_B, default.name, default.name],
                 ["O Romeo, Romeo! wherefore art thou", "O Juliet, Juliet! wherefore art thou",
                  default.name, default.name],
                 ["Thou art a villain, and", "Thou art a gentleman, and", default.name, default.name],
                 ["ROMEO:\nBut soft, what light", "ROMEO:\nBut soft, what light", default.name, twin_name]],
                inputs=[text_a, text_b, model_a, model_b], label="Example contrasts", elem_id="compare-examples")
    notice = gr.Markdown(elem_id="compare-notice", elem_classes="notice")
    summary = gr.Markdown(elem_id="compare-summary")
    bars = gr.Plot(elem_id="compare-distributions", label="Next-token distributions")
    with gr.Row():
        with gr.Column():
            gr.Markdown("**Tokens of A**")
            chips_a = gr.HTML(elem_id="compare-tokens-a", label="Tokens of A")
        with gr.Column():
            gr.Markdown("**Tokens of B**")
            chips_b = gr.HTML(elem_id="compare-tokens-b", label="Tokens of B")
    attn = gr.Plot(elem_id="compare-attention", label="Both attention patterns")
    diff_plot = gr.Plot(elem_id="compare-difference", label="Attention difference (B − A)")

    @handle
    def compare(text_a, text_b, model_a, model_b, layer, head, user_models):
        """Both prompts (each through its own model): next-token distributions, tokens, one head's patterns."""
        ma, mb = resolve(model_a, user_models, "A"), resolve(model_b, user_models, "B")
        if ma.tokenizer != mb.tokenizer:
            raise InputError("A and B must share a vocabulary to compare their next-token distributions: "
                             f"{model_a} and {model_b} tokenize text differently. Choose two models of one vocabulary.")
        # The vocabulary is one: resolving B (ctx.model) made it the request's tokenizer.
        layer_i, head_i = check_layer_head(layer, head, [ma, mb])
        prompts = []
        for side, text, m in (("A", text_a, ma), ("B", text_b, mb)):
            try:
                prompts.append(prepare_prompt(text, max_tokens=min(MAX_VIEW_TOKENS, m.config.n_ctx)))
            except InputError as e:
                raise InputError(f"Prompt {side}: {e}") from None
        a, b = run_pair((model_a or default.name, model_b or default.name), (ma, mb), tuple(prompts),
                        layer_i, head_i)
        dist = compare_distributions(a.probs, b.probs)
        diff = pattern_difference(a, b)
        where = f"layer {layer_i}, head {head_i}"
        notices = [f"ⓘ Prompt {s.name}: {n}" for s in (a, b) for n in s.prompt.notices]
        return ("\n".join(notices), summary_markdown(a, b, dist, diff, layer_i, head_i),
                distribution_pair_bars(dist.tokens, dist.p_a, dist.p_b, f"A: {a.model_name}", f"B: {b.model_name}"),
                token_chips_html(a.infos), token_chips_html(b.infos),
                attention_pair(a.pattern, b.pattern, a.tokens, b.tokens, f"A, {where}", f"B, {where}"),
                attention_difference(diff, a.tokens, b.tokens, f"B − A, {where}"))

    @handle
    def fit_sliders(name_a, name_b, user_models):
        ma, mb = resolve(name_a, user_models, "A"), resolve(name_b, user_models, "B")
        n_layer = min(ma.config.n_layer, mb.config.n_layer)
        n_head = min(ma.config.n_head, mb.config.n_head)
        return gr.update(maximum=max(n_layer - 1, 1)), gr.update(maximum=max(n_head - 1, 1))

    def refresh_choices(user_models):
        return gr.update(choices=choices(user_models)), gr.update(choices=choices(user_models))

    ctx.url_state(prompt_a=text_a, prompt_b=text_b, model_a=model_a, model_b=model_b, layer=layer, head=head,
                  redraw=run)
    # preprocess=False: API callers may send any layer or head; compare() checks them against both models.
    run.click(compare, [text_a, text_b, model_a, model_b, layer, head, ctx.user_models],
              [notice, summary, bars, chips_a, chips_b, attn, diff_plot], api_name="compare_view",
              preprocess=False)
    for dropdown in (model_a, model_b):
        dropdown.change(fit_sliders, [model_a, model_b, ctx.user_models], [layer, head], api_visibility="private")
    ctx.model_choice.change(refresh_choices, [ctx.user_models], [model_a, model_b], api_visibility="private")
