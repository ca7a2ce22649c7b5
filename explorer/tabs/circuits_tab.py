"""Circuits tab: what kind each head is (the head detector, with induction on a repeated random sequence),
and which activations carry the difference between two prompts (activation patching)."""
from __future__ import annotations

import gradio as gr

from ..components import Number
from ..compute.circuits import (MAX_RANDOM_TOKENS, RANDOM, SOURCES, best_heads, detector_view,
                                head_choices, head_view, parse_head, patching_view)
from ..context import AppContext
from ..errors import handle
from ..scheduling import step_aside
from ..figures.attention import attention_heatmap
from ..figures.circuits import head_score_heatmap, patch_head_heatmap, patch_position_heatmap, repeat_loss_line
from gpt2core.analysis.circuits import HEAD_TYPE_LABELS, HEAD_TYPES

TITLE = "Circuits"
DETECTOR_EXPLANATION = """
**Which heads copy?** Feed the model random tokens, then the same tokens again: a model with **induction
heads** predicts the second copy better (watch the loss fall after the red line), because those heads look from
each token to the token that followed it last time. The small bundled model has its induction heads in layer 5,
fed by a previous-token head in layer 3: the second copy of 50 random ids costs it under 1 nat, the first about 13.
The four maps score every head for the classic types (1 = all its attention goes where that type looks); pick
a head below to see its pattern, where an induction head draws a stripe just above the diagonal of the second copy.

- **previous-token**: attends to the token just before. **duplicate-token**: to earlier copies of the same token.
  **induction**: to the token *after* an earlier copy. **first-token**: to position 0, a resting place.
- Scores are the attention each head puts where its type looks, averaged over the query positions where that
  type can look anywhere (as TransformerLens's head detector scores, without the rows that can't score).
"""
PATCH_EXPLANATION = """
**Which activations carry the answer?** Run a *clean* prompt and a *corrupted* one that differs in a word,
then copy one activation of the clean run into the corrupted run at a time: a cell near 1 (red) restores the
clean answer, so the information that decides it flows through there; near 0 it does nothing. Read the
residual-stream map top to bottom to watch the information move from the changed word to the last position.

- The metric is the logit of the clean prompt's answer minus that of the corrupted prompt's answer at the last
  position (or of the two tokens you give), scaled so that 1 = the clean run and 0 = the corrupted run.
- Both prompts must have the same number of tokens. Head outputs are patched at every position at once.
"""
PATCH_EXAMPLES = [
    # Induction first: the second "Romeo and" is answered with whatever followed the first one. On the bundled
    # model, layer 5's attention output at the last position alone restores 0.99 of it (heads 5.1, 5.2, 5.0).
    ["ROMEO. Romeo and Juliet.\nROMEO. Romeo and", "ROMEO. Romeo and Helena.\nROMEO. Romeo and", " Juliet", " Helena"],
    # A word carried six positions forward: "long live the" takes its noun from position 1, through layer 5's
    # attention (0.76 from that one patch on the bundled model).
    ["The king is dead, long live the", "The queen is dead, long live the", " king", " queen"],
    # Indirect-object identification, the circuit GPT-2 124M is known for (load its weights to see it).
    ["When Mary and John went to the store, John gave a drink to",
     "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"],
]


def build(ctx: AppContext) -> None:
    model0 = ctx.model(ctx.model_choice.value).model
    gr.Markdown("### 1. Induction and the head detector")
    gr.Markdown(DETECTOR_EXPLANATION, elem_id="circuits-explanation")
    with gr.Row():
        source = gr.Radio(list(SOURCES), value=RANDOM, label="Score the heads on", elem_id="circuits-source")
        n_tokens = Number(30, precision=0, minimum=2, maximum=MAX_RANDOM_TOKENS, label="Random tokens (each copy)",
                          elem_id="circuits-n-tokens")
        seed = Number(0, precision=0, minimum=0, label="Seed", elem_id="circuits-seed")
        detect = gr.Button("Detect heads", variant="primary", elem_id="circuits-detect")
    detector_summary = gr.Markdown(elem_id="circuits-detector-summary")
    loss_plot = gr.Plot(label="Loss at each position", elem_id="circuits-loss")
    plots = {}
    for row in (HEAD_TYPES[:2], HEAD_TYPES[2:]):
        with gr.Row():
            for kind in row:
                plots[kind] = gr.Plot(label=HEAD_TYPE_LABELS[kind], elem_id=f"circuits-{kind.replace('_', '-')}")
    with gr.Row():
        head = gr.Dropdown(head_choices(model0), value="0.0", label="Open a head's pattern (layer.head)",
                           allow_custom_value=True, elem_id="circuits-head", scale=1)
    pattern_plot = gr.Plot(label="That head's attention on the sequence", elem_id="circuits-pattern")

    gr.Markdown("### 2. Activation patching")
    gr.Markdown(PATCH_EXPLANATION, elem_id="circuits-patch-explanation")
    with gr.Row():
        clean = gr.Textbox(PATCH_EXAMPLES[0][0], label="Clean prompt", lines=2, elem_id="circuits-clean")
        corrupt = gr.Textbox(PATCH_EXAMPLES[0][1], label="Corrupted prompt (same number of tokens)", lines=2,
                             elem_id="circuits-corrupt")
    with gr.Row():
        answer = gr.Textbox(PATCH_EXAMPLES[0][2], label="Answer token (empty: the clean prompt's top token)", elem_id="circuits-answer")
        wrong = gr.Textbox(PATCH_EXAMPLES[0][3], label="Wrong-answer token (empty: the corrupted prompt's top token)",
                           elem_id="circuits-wrong")
    gr.Examples(PATCH_EXAMPLES, inputs=[clean, corrupt, answer, wrong],
                label="Example pairs (clean, corrupted, answer, wrong answer)", elem_id="circuits-examples")
    patch = gr.Button("Patch every activation", variant="primary", elem_id="circuits-patch")
    patch_summary = gr.Markdown(elem_id="circuits-patch-summary")
    resid_plot = gr.Plot(label="Residual stream (entering each layer)", elem_id="circuits-resid")
    with gr.Row():
        attn_plot = gr.Plot(label="Attention output", elem_id="circuits-attn")
        mlp_plot = gr.Plot(label="MLP output", elem_id="circuits-mlp")
    heads_plot = gr.Plot(label="Each head's output", elem_id="circuits-heads")

    def pattern_figure(pattern, tokens, scores, layer, h):
        """``scores``: kind -> this head's score."""
        return attention_heatmap(pattern, tokens, f"Head {layer}.{h}: induction {scores['induction']:.2f}, "
                                                  f"previous-token {scores['previous_token']:.2f}")

    @handle
    def show_detector(source_v, text, n_v, seed_v, model_name, user_models):
        model = ctx.model(model_name, user_models).model
        view = detector_view(model, source_v, text, n_v, seed_v)
        top = best_heads(view.scores["induction"], 1)
        layer, h = (top[0][0], top[0][1]) if top else (0, 0)
        figs = [head_score_heatmap(view.scores[k], f"{HEAD_TYPE_LABELS[k]} score") for k in HEAD_TYPES]
        line = repeat_loss_line(view.loss, view.tokens, view.repeat_from,
                                "Next-token loss along the sequence" + (" (random tokens, then the same again)"
                                                                       if view.repeat_from else ""))
        menu = gr.update(choices=head_choices(model), value=f"{layer}.{h}")
        head_scores = {k: float(v[layer, h]) for k, v in view.scores.items()}
        return (view.summary, line, *figs, menu, pattern_figure(view.patterns[layer, h], view.tokens, head_scores,
                                                                layer, h))

    @handle
    def show_head(head_v, source_v, text, n_v, seed_v, model_name, user_models):
        model = ctx.model(model_name, user_models).model
        layer, h = parse_head(head_v, model)
        view = head_view(model, source_v, text, n_v, seed_v, layer, h)
        return pattern_figure(view.pattern, view.tokens, view.scores, layer, h)

    @handle
    def show_patching(clean_v, corrupt_v, answer_v, wrong_v, model_name, user_models, progress=gr.Progress()):
        model = ctx.model(model_name, user_models).model
        progress(0, desc="patching each activation in turn")
        view = patching_view(model, clean_v, corrupt_v, answer_v, wrong_v,
                             progress=lambda done, total: (progress(done / total, desc=f"{done} of {total} patches"),
                                                           step_aside()))
        what = "(1 = clean, 0 = corrupted)"
        return (view.summary,
                patch_position_heatmap(view.scores["resid_pre"], view.clean_tokens,
                                       f"Patching the residual stream entering each layer {what}"),
                patch_position_heatmap(view.scores["attn_out"], view.clean_tokens, f"Attention output {what}"),
                patch_position_heatmap(view.scores["mlp_out"], view.clean_tokens, f"MLP output {what}"),
                patch_head_heatmap(view.scores["heads"], f"Each head's output, all positions {what}"))

    detector_inputs = [source, ctx.prompt, n_tokens, seed, *ctx.model_inputs]
    detector_outputs = [detector_summary, loss_plot, *plots.values(), head, pattern_plot]
    gr.on([detect.click, ctx.page_ready.click, ctx.prompt.submit, ctx.model_choice.change, source.change],
          show_detector, detector_inputs, detector_outputs, api_name="circuits_detect", preprocess=False)
    head.input(show_head, [head, source, ctx.prompt, n_tokens, seed, *ctx.model_inputs], [pattern_plot],
               api_name="circuits_head", preprocess=False)
    # Its own queue, one sweep at a time (explorer.scheduling): hundreds of forward passes.
    gr.on([patch.click, clean.submit, corrupt.submit], show_patching, [clean, corrupt, answer, wrong, *ctx.model_inputs],
          [patch_summary, resid_plot, attn_plot, mlp_plot, heads_plot], api_name="circuits_patch", preprocess=False)

    # redraw: the patch button is pressed the first time the tab opens (and by a link to it); a sweep is
    # too long to run on every page load.
    ctx.url_state(source=source, n_tokens=n_tokens, seed=seed, head=head, clean=clean, corrupt=corrupt,
                  answer=answer, wrong=wrong, redraw=patch)
