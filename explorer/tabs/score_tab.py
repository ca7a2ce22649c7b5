"""Score tab: how surprised the model is by every token of a text (GLTR's view)."""
from __future__ import annotations

import gradio as gr

from ..compute.score import (BUCKET_NAMES, SURPRISING_HEADERS, bucket_of, rank_histogram, score_view,
                             summary_markdown, surprising_rows)
from ..context import AppContext
from ..errors import handle
from ..figures.score import rank_histogram_bars, scored_text_html, surprisal_line
from ..inputs import MAX_PROMPT_TOKENS, InputError, prepare_prompt

TITLE = "Score"
EXPLANATION = """
Paste any text into the prompt box and the model reads it in one pass: at every position it predicts
the next token, and we look up how it rated the token that really comes next. Each token is coloured
by its **rank** among the model's predictions, in the four buckets of GLTR (Harvard NLP and the
MIT-IBM Watson AI lab): green = among the model's top 10 guesses, yellow = top 100, red = top 1,000,
purple = beyond. Switch to **surprisal** to colour by −log₂ of its probability instead (1 bit = a
coin flip's worth of surprise). Hover a token to see its probability, its rank and the model's top 5
guesses there.

**What to look at:** text sampled from a model is mostly green, because the sampler keeps picking the
model's likely tokens, while text a person wrote has many more yellow, red and purple tokens: people
choose words the model does not expect. Generate some text in the Generate tab, press **Score this
text** there, and compare its colours and perplexity with a passage from a real play.
"""
EXAMPLES = [
    "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.",
    "KING HENRY:\nOnce more unto the breach, dear friends, once more;\nOr close the wall up with our English dead.",
    "To be, or not to be, that is the question. To be, or not to be, that is the question.",
    "The quantum computer's qubits decohere within microseconds, so engineers cool them to millikelvin.",
]
MODES = [("rank (GLTR's four buckets)", "rank"), ("surprisal (bits)", "surprisal")]


def _check_mode(mode) -> str:
    if mode not in ("rank", "surprisal"):
        raise InputError(f"Colour by must be 'rank' or 'surprisal', got {mode!r}.")
    return mode


def text_html(view, mode: str) -> str:
    return scored_text_html(view.texts, view.labels, view.first, view.probs, view.ranks, view.bits, bucket_of(view.ranks),
                            view.alternatives, BUCKET_NAMES, mode)


def build(ctx: AppContext) -> None:
    gr.Markdown(EXPLANATION)
    with gr.Row():
        mode = gr.Radio(MODES, value="rank", label="Colour each token by", elem_id="score-mode")
        run = gr.Button("Score the text", variant="primary", elem_id="score-run")
    gr.Examples(EXAMPLES, inputs=[ctx.prompt], label="Example texts", elem_id="score-examples")
    notice = gr.Markdown(elem_id="score-notice", elem_classes="notice")
    scored = gr.HTML(elem_id="score-text", label="The text, token by token")
    summary = gr.Markdown(elem_id="score-summary")
    with gr.Row():
        hist = gr.Plot(elem_id="score-ranks", label="Rank histogram")
        line = gr.Plot(elem_id="score-surprisal", label="Surprisal along the text")
    gr.Markdown("**The most surprising tokens**")
    surprising = gr.Dataframe(headers=SURPRISING_HEADERS, interactive=False, elem_id="score-surprising",
                              label="Most surprising tokens")
    last_view = gr.State(None)   # this session's last scored text, so the colour toggle needs no new pass

    @handle
    def score(text, color_by, model_name, user_models):
        """Every token of the text scored against the model's prediction for its position."""
        color_by = _check_mode(color_by)
        model = ctx.model(model_name, user_models).model
        # one token less than the limit: the start token goes in front
        prompt = prepare_prompt(text, max_tokens=MAX_PROMPT_TOKENS - 1, keep="start")
        view = score_view(model, prompt)
        counts, labels, bin_buckets = rank_histogram(view.ranks)
        return (prompt.notice_markdown(), text_html(view, color_by), summary_markdown(view),
                rank_histogram_bars(counts, labels, bin_buckets, BUCKET_NAMES),
                surprisal_line(view.labels, view.first, view.bits, view.ranks, bucket_of(view.ranks)),
                surprising_rows(view), view)

    @handle
    def recolor(color_by, view):
        color_by = _check_mode(color_by)
        return gr.skip() if view is None else text_html(view, color_by)

    score_io = dict(fn=score, inputs=[ctx.prompt, mode, *ctx.model_inputs],
                    outputs=[notice, scored, summary, hist, line, surprising, last_view])
    # preprocess=False: the radio's own check names Python types ("<class 'list'>"); _check_mode says it plainly
    ctx.url_state(colour=mode)
    run.click(**score_io, api_name="score_text", preprocess=False)
    gr.on(ctx.refresh_triggers, **score_io, api_visibility="private")
    mode.change(recolor, [mode, last_view], [scored], api_visibility="private", preprocess=False)
    # Another tab (Generate's "Score this text") puts text in the prompt, opens this tab and runs this.
    ctx.shared["score"] = score_io
