"""Why this token? Where the prediction forms (logit lens), which parts push it (attribution), and what
happens without them (ablation)."""
from __future__ import annotations

import gradio as gr
import numpy as np

from ..components import Number
from ..compute.why import (LENS_WINDOW, ablation_view, attribution_view, check_mode, lens_view, parse_parts,
                           parse_token, scan_view, token_text)
from ..context import AppContext
from ..errors import handle
from ..scheduling import step_aside
from ..figures.why import before_after_bars, head_heatmap, layer_bars, lens_heatmap, lens_lines
from ..inputs import MAX_VIEW_TOKENS, check_position, prepare_prompt

TITLE = "Why this token?"
EXPLANATION = f"""
**Where does the prediction form, and which parts make it?** In the logit lens, read down a column to see at
which stage the model's final pick first comes out on top; the columns are the {LENS_WINDOW} positions up to
your chosen one (outlined, the last column: set the position to move the window along the prompt). In the
attribution, red heads and bars above zero push the target token up, blue heads and bars below zero push it down.

- **Logit lens:** the residual stream is read after the embeddings, after each block's attention and after
  each block, and pushed through the final LayerNorm and the unembedding as if the model stopped there.
  The last row is the model's real output. The model still reads the whole prompt up to the chosen position;
  only the {LENS_WINDOW} positions shown are unembedded (at every stage, a product with the whole vocabulary).
- **Attribution:** the target's logit is split exactly into what each part wrote into the residual stream:
  the embeddings, every head, every attention bias, every MLP (with the final LayerNorm's scale held at its
  value in this run). Give a contrast token to split the logit *difference* instead, e.g. ␣Paris vs ␣London.
- **Ablation:** knock heads or MLPs out (set their output to zero, or to its average over the prompt) and
  run the model again, or scan every head one at a time to find the ones the prediction needs.

Repeated text is where copying heads show up in the scan: on the bundled model, the first example's scan
names the previous-token head 3.0 and the induction head 5.2 (see the Circuits tab); each costs under 0.2 of
log-probability alone, for the other induction heads of layer 5 copy too. The others are a speaker's name after a
line break and a contrast between two next tokens.
Type tokens as text with their leading space (` lord`), or as `#id` (`#198` is a newline).
"""
EXAMPLES = [
    ["My lord, my lord, my lord, my", " lord", ""],
    ["HAMLET.\nWhat a piece of work is a man!\n\nHORATIO.\nMy lord?\n\nHAM", "", ""],
    ["KING HENRY.\nOnce more unto the breach, dear friends.\n\nEXETER.\nMy lord.\n\nKING", " HENRY", "."],
    ["I thank you, my good", " lord", "#198"],
]


def build(ctx: AppContext) -> None:
    gr.Markdown(EXPLANATION, elem_id="why-explanation")
    with gr.Row():
        position = Number(-1, precision=0, minimum=-1, label="Position (-1 = the last token)", elem_id="why-position")
        target = gr.Textbox("", label="Target token (empty: the model's top prediction)", elem_id="why-target")
        contrast = gr.Textbox("", label="Contrast token (optional: explain target minus contrast)",
                              elem_id="why-contrast")
    gr.Examples(EXAMPLES, inputs=[ctx.prompt, target, contrast], label="Example prompts (prompt, target, contrast)",
                elem_id="why-examples")
    run = gr.Button("Explain the prediction", variant="primary", elem_id="why-run")
    notice = gr.Markdown(elem_id="why-notice", elem_classes="notice")

    gr.Markdown("### 1. Logit lens: what each stage would predict")
    lens_summary = gr.Markdown(elem_id="why-lens-summary")
    lens_plot = gr.Plot(label="Logit lens", elem_id="why-lens")
    lines_plot = gr.Plot(label="The chosen position, stage by stage", elem_id="why-lens-lines")

    gr.Markdown("### 2. Attribution: who pushed the target's logit")
    attribution_summary = gr.Markdown(elem_id="why-attribution-summary")
    with gr.Row():
        heads_plot = gr.Plot(label="Each head's share", elem_id="why-heads")
        layers_plot = gr.Plot(label="Each layer: attention against MLP", elem_id="why-layers")

    gr.Markdown("### 3. Ablation: knock parts out and watch the prediction change")
    with gr.Row():
        heads_box = gr.Textbox("", label="Heads to knock out (layer.head, e.g. 0.1, 3.2)", elem_id="why-ablate-heads")
        mlps_box = gr.Textbox("", label="MLP layers to knock out (e.g. 0, 4)", elem_id="why-ablate-mlps")
        mode = gr.Radio(["zero", "mean"], value="zero", label="Ablation",
                        info="zero: the output becomes 0; mean: its average over this prompt's positions",
                        elem_id="why-ablate-mode")
    with gr.Row():
        ablate = gr.Button("Knock out and re-run", elem_id="why-ablate")
        scan = gr.Button("Scan: knock out each head alone", elem_id="why-scan")
    ablation_summary = gr.Markdown(elem_id="why-ablation-summary")
    ablation_plot = gr.Plot(label="Next-token distribution before and after", elem_id="why-ablation")
    scan_summary = gr.Markdown(elem_id="why-scan-summary")
    scan_plot = gr.Plot(label="Change in the target's log-probability when each head is knocked out",
                        elem_id="why-scan-plot")

    def setup(text, position_v, target_v, contrast_v, model_name, user_models):
        """The model, the prompt, the position and the tokens of one request, checked."""
        model = ctx.model(model_name, user_models).model
        prompt = prepare_prompt(text, max_tokens=min(MAX_VIEW_TOKENS, model.config.n_ctx))
        pos = check_position(position_v, len(prompt.ids))
        V = model.config.vocab_size
        tgt, con = parse_token(target_v, "target token", V), parse_token(contrast_v, "contrast token", V)
        notes = [n for n in (prompt.notice_markdown(), tgt.notice and f"ⓘ {tgt.notice}",
                             con.notice and f"ⓘ {con.notice}") if n]
        return model, prompt, pos, tgt.id, con.id, "\n\n".join(notes)

    @handle
    def show_lens(text, position_v, target_v, model_name, user_models):
        model, prompt, pos, tgt, _, notes = setup(text, position_v, target_v, "", model_name, user_models)
        view = lens_view(model, prompt.ids, pos, tgt)
        heat = lens_heatmap(view.stages, view.tokens, view.top_text, view.top_prob, view.hover, position=pos,
                            positions=view.positions)
        lines = lens_lines(view.stages, view.series,
                           f"After position {pos} ({token_text(prompt.ids[pos])}): probability and rank by stage")
        return notes, view.summary, heat, lines

    @handle
    def show_attribution(text, position_v, target_v, contrast_v, model_name, user_models):
        model, prompt, pos, tgt, con, _ = setup(text, position_v, target_v, contrast_v, model_name, user_models)
        view = attribution_view(model, prompt.ids, pos, tgt, con)
        heads = head_heatmap(view.heads, f"Each head's share of {view.title}", "logit", "logit")
        bars = layer_bars(view.attn, view.mlp, view.embed, view.pos_embed, view.ln_f_bias,
                          f"The parts of {view.title}: they add up to {view.total:.3f}")
        return view.summary, heads, bars

    @handle
    def show_ablation(text, position_v, target_v, heads_v, mlps_v, mode_v, model_name, user_models):
        model, prompt, pos, tgt, _, _ = setup(text, position_v, target_v, "", model_name, user_models)
        heads, mlps = parse_parts(heads_v, mlps_v, model.config)
        view = ablation_view(model, prompt.ids, pos, tgt, heads, mlps, check_mode(mode_v))
        fig = before_after_bars(view.tokens, view.ids, view.before, view.after,
                                f"The next token after position {pos} ({token_text(prompt.ids[pos])}), "
                                f"before and after the ablation")
        return view.summary, fig

    @handle
    def show_scan(text, position_v, target_v, mode_v, model_name, user_models, progress=gr.Progress()):
        model, prompt, pos, tgt, _, _ = setup(text, position_v, target_v, "", model_name, user_models)
        mode_v = check_mode(mode_v)
        progress(0, desc="knocking out each head in turn")
        view = scan_view(model, prompt.ids, pos, tgt, mode_v,
                         progress=lambda done, total: (progress(done / total, desc=f"{done} of {total} heads"),
                                                       step_aside()))
        fig = head_heatmap(view.deltas, f"Change in log p({token_text(view.target)}) when each head alone is "
                           f"knocked out ({mode_v} ablation)", "Δ log p", "in log-probability")
        layer, h = np.unravel_index(int(np.argmin(view.deltas)), view.deltas.shape)
        return view.summary, fig, f"{layer}.{h}"

    @handle
    def ablate_scan_top(text, position_v, target_v, heads_v, mlps_v, mode_v, top, model_name, user_models):
        """After a scan, with nothing typed in the ablation boxes: knock out the head the scan found mattered
        most, so the ablation view is drawn too (and shows that head's effect on the whole distribution)."""
        if (heads_v or "").strip() or (mlps_v or "").strip() or not top:
            return gr.skip(), gr.skip(), gr.skip()
        return (top, *show_ablation(text, position_v, target_v, top, "", mode_v, model_name, user_models))

    # preprocess=False: every value reaches the handlers as sent, and they check it with plain messages
    # (gradio's own Radio check answers an API caller with a Python repr of the value).
    # The first opening draws all four parts: the lens and attribution, the default ablation, the scan.
    # The first opening draws all four parts: the lens and attribution, then the scan, whose top head is
    # then ablated (ablate_scan_top).
    ctx.url_state(position=position, target=target, contrast=contrast, redraw=[run, scan])
    head_inputs = [ctx.prompt, position, target]
    triggers = [run.click, ctx.prompt.submit]
    gr.on(triggers, show_lens, [*head_inputs, *ctx.model_inputs], [notice, lens_summary, lens_plot, lines_plot],
          api_name="why_lens", preprocess=False)
    gr.on(triggers, show_attribution, [*head_inputs, contrast, *ctx.model_inputs],
          [attribution_summary, heads_plot, layers_plot], api_name="why_attribution", preprocess=False)
    gr.on([ablate.click, heads_box.submit, mlps_box.submit], show_ablation,
          [*head_inputs, heads_box, mlps_box, mode, *ctx.model_inputs], [ablation_summary, ablation_plot],
          api_name="why_ablate", preprocess=False)
    scan_top = gr.State("")   # this session's last scan: the head whose knock-out lowered the target most
    scan.click(show_scan, [*head_inputs, mode, *ctx.model_inputs], [scan_summary, scan_plot, scan_top],
               api_name="why_scan", preprocess=False).success(
        ablate_scan_top, [*head_inputs, heads_box, mlps_box, mode, scan_top, *ctx.model_inputs],
        [heads_box, ablation_summary, ablation_plot], api_visibility="private", preprocess=False)
