"""Generate tab: stream new tokens one at a time, each coloured by the probability it had."""
from __future__ import annotations

import re
import time

import gradio as gr

from ..components import Number, Slider
from ..compute.generation import continuation_text, generate_tokens, summary
from ..context import AppContext
from ..errors import handle
from ..scheduling import step_aside
from ..figures.generation import percent, probability_line, text_html, token_span
from ..inputs import MAX_NEW_TOKENS, MAX_PROMPT_TOKENS, InputError, check_number, prepare_prompt

TITLE = "Generate"
EXPLANATION = """
GPT-2 writes one token at a time: it predicts a distribution for the next token, the sampler picks
one (with the temperature, top-k and top-p from the Sampling tab), the token is added to the text,
and the model runs again. Each new token below is coloured by the probability the model gave it:
**bright** tokens were expected, **dark** ones were surprising picks. Hover a token to see what else
the model considered. The same seed and settings always give the same text.
"""
EXAMPLES = [
    "Once upon a time",
    "ROMEO:",
    "The meaning of life is",
    "In a shocking finding, scientists discovered",
]
MAX_SEED = 2**31 - 1
TIME_LIMIT = 60          # seconds; a generation stops here even if it has not reached its length
# While streaming, the text is sent at most every UPDATE_EVERY seconds of generation, with every token
# made since the last update (and always in full at the end): each update costs gradio a redraw and a
# send, which made the app's stream about half the speed of the raw decode when it went token by token.
UPDATE_EVERY = 0.1
PLOT_EVERY = 10          # an update redraws the probability line once this many tokens have come since


def md_text(text: str) -> str:
    """Token text inside markdown: backslash-escape the characters markdown or HTML would act on."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~&$])", r"\\\1", text)


def build(ctx: AppContext) -> None:
    gr.Markdown(EXPLANATION)
    notice = gr.Markdown(elem_id="generate-notice", elem_classes="notice")
    with gr.Row():
        temperature = Slider(0, 2, value=0.8, step=0.05, label="Temperature (0 = greedy)",
                                elem_id="generate-temperature")
        top_k = Slider(0, 200, value=40, step=1, label="Top-k (0 = off)", elem_id="generate-top-k")
        top_p = Slider(0.05, 1, value=1.0, step=0.05, label="Top-p (1 = off)", elem_id="generate-top-p")
    with gr.Row():
        max_new = Slider(1, MAX_NEW_TOKENS, value=50, step=1, label="New tokens",
                            elem_id="generate-max-new-tokens")
        seed = Number(0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed", elem_id="generate-seed")
    with gr.Row():
        run = gr.Button("Generate", variant="primary", elem_id="generate-run")
        stop = gr.Button("Stop", variant="stop", elem_id="generate-stop")
        to_score = (gr.Button("Score this text", elem_id="generate-to-score") if "score" in ctx.shared else None)
    generated = gr.State("")   # this session's prompt + continuation, for "Score this text"
    output = gr.HTML(elem_id="generate-text", label="Generated text")
    probs_plot = gr.Plot(label="Probability per token", elem_id="generate-probs")
    info = gr.Markdown(elem_id="generate-summary")
    gr.Examples(EXAMPLES, inputs=[ctx.prompt], label="Example prompts", elem_id="generate-examples")

    @handle
    def generate(text, temp, k, p, n_new, seed_value, model_name, user_models):
        entry = ctx.model(model_name, user_models)
        temp = check_number(temp, "temperature", 0, 2)
        k = check_number(k, "top-k", 0, 200, integer=True)
        p = check_number(p, "top-p", 0.05, 1)
        n_new = check_number(n_new, "new tokens", 1, MAX_NEW_TOKENS, integer=True)
        seed_value = check_number(seed_value, "seed", 0, MAX_SEED, integer=True)
        n_ctx = entry.model.config.n_ctx
        prompt = prepare_prompt(text, max_tokens=min(MAX_PROMPT_TOKENS, n_ctx))
        notices = prompt.notice_markdown()
        if len(prompt.ids) + n_new > n_ctx:
            notices = (f"{notices}\n\nⓘ This model sees at most {n_ctx} tokens: once the text is longer, "
                       f"each new token is predicted from the last {n_ctx} only.").strip()
        tokens, spans = [], []          # each token's HTML is made once, as it comes
        yield notices, text_html(prompt.text, spans, "generating…"), None, "", prompt.text
        start, reason = time.monotonic(), f"reached {n_new} new tokens"
        sent, plotted = time.monotonic(), 0
        for tok in generate_tokens(entry.model, prompt.ids, n_new, temp, k, p, seed_value):
            tokens.append(tok)
            spans.append(token_span(tok))
            if tok.is_eot:
                reason = "the model chose the end-of-text token"
            elif time.monotonic() - start > TIME_LIMIT and len(tokens) < n_new:
                reason = f"time limit of {TIME_LIMIT} s"
                break
            if len(tokens) < n_new and not tok.is_eot and time.monotonic() - sent >= UPDATE_EVERY:
                plot = gr.skip()
                if len(tokens) - plotted >= PLOT_EVERY:
                    plot, plotted = plot_of(tokens), len(tokens)
                yield (gr.skip(), text_html(prompt.text, spans, f"generating… {len(tokens)}/{n_new}"), plot,
                       gr.skip(), prompt.text + continuation_text(tokens))
                sent = time.monotonic()      # from here: the interval is generation time, not gradio's
            step_aside()                     # before the next token: the views asked for meanwhile go first
        s = summary(tokens)
        info_md = (f"**{s['n']}** new tokens (stopped: {reason}). "
                   f"Average probability **{percent(s['mean_prob'])}**; perplexity **{s['perplexity']:.1f}** "
                   f"(as unsure as a fair pick among that many tokens); least likely pick: "
                   f"“{md_text(s['least_label'])}” (#{s['least_index'] + 1}, {percent(s['least_prob'])}).")
        if tokens:   # the last token's text may have gained a U+FFFD (an unfinished character) at the end
            spans[-1] = token_span(tokens[-1])
        yield (notices, text_html(prompt.text, spans), plot_of(tokens), info_md,
               prompt.text + continuation_text(tokens))

    def plot_of(tokens):
        return probability_line([t.label for t in tokens], [t.prob for t in tokens],
                                [t.sampled_prob for t in tokens])

    # The first opening writes a continuation (streamed, in generation's own queue): no empty frame.
    ctx.url_state(temperature=temperature, top_k=top_k, top_p=top_p, new_tokens=max_new, seed=seed, redraw=run)
    event = run.click(generate, [ctx.prompt, temperature, top_k, top_p, max_new, seed, *ctx.model_inputs],
                      [notice, output, probs_plot, info, generated], api_name="generate")
    stop.click(None, None, None, cancels=[event])

    @handle
    def send_to_score(text):
        if not text:
            raise InputError("Generate some text first, then score it.")
        return text, gr.Tabs(selected="score")

    if to_score is not None:   # puts prompt + continuation in the prompt box, opens Score and scores it
        to_score.click(send_to_score, [generated], [ctx.prompt, ctx.tabs], api_visibility="private").success(
            **ctx.shared["score"], api_visibility="private")
