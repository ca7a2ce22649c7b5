"""Generate tab: stream new tokens one at a time, each coloured by the probability it had; beam search,
drawn as the tree it searched; greedy, sampling and beam search side by side."""
from __future__ import annotations

import re
import time

import gradio as gr

from ..components import Number, Slider
from ..compute.beam import beam_tree, compare_continuations
from ..compute.generation import continuation_text, generate_tokens, summary
from ..context import AppContext
from ..errors import handle
from ..scheduling import step_aside
from ..figures.beam import beam_tree_figure, compare_html, finished_html, minus
from ..figures.generation import percent, probability_line, text_html, token_span
from ..inputs import MAX_NEW_TOKENS, MAX_PROMPT_TOKENS, InputError, Prompt, check_number, prepare_prompt

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
BEAM_EXPLANATION = """
### Beam search
Instead of one text, beam search keeps the **beam width** most probable partial continuations at every step,
extends each by every token, and returns the finished one with the best score (total log-prob ÷
length<sup>length penalty</sup>); the tree below shows every step's beams, what they could have become, and
in orange the winner. Follow the orange path to where it leaves greedy's likeliest token, then press
**Compare** to see that beam search found a more probable continuation, and, on the small Shakespeare
model, often a blander one (a stage direction, a phrase said again).
"""
# Prompts where beam search (width 3, 8 tokens) parts from greedy on the bundled Shakespeare model.
BEAM_EXAMPLES = [
    "First Citizen:\nBefore we proceed",
    "Once upon a time",
    "ROMEO:",
]
MAX_BEAM_WIDTH = 8
MAX_BEAM_TOKENS = 32
SHOWN_PER_BEAM = 2       # the tree draws each beam's 2 likeliest next tokens, plus every ranked candidate
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


def _check_flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{name} must be true or false, got {value!r}.")
    return value


def beam_prompt(text, n_ctx: int, n_new: int) -> tuple[Prompt, str]:
    """The prompt cropped so that it and the new tokens fit the context (a beam's cache can't slide), and
    the notices to show."""
    room = n_ctx - n_new
    if room < 1:
        raise InputError(f"This model sees at most {n_ctx} tokens: ask for at most {n_ctx - 1} new tokens.")
    prompt = prepare_prompt(text, max_tokens=min(MAX_PROMPT_TOKENS, room))
    notices = prompt.notice_markdown()
    if len(prompt.ids) == room and room < MAX_PROMPT_TOKENS:
        notices = (f"{notices}\n\nⓘ Beam search keeps the prompt and the {n_new} new tokens within this model's "
                   f"{n_ctx}-token context.").strip()
    return prompt, notices


def beam_summary(tree) -> str:
    best = tree.best
    drawn = len(tree.nodes) - 1
    return (f"Searched **{tree.steps}** step{'s' if tree.steps != 1 else ''} (stopped: {tree.stop_reason}). "
            f"Best of {len(tree.finished)} finished: **{best.n_tokens}** tokens, total log-prob "
            f"**{minus(best.cum_logprob)}** (mean {minus(best.cum_logprob / best.n_tokens)} per token, "
            f"score {minus(best.score)}). Each step ranks the best {tree.n_candidates} (2 × width) of all "
            f"{tree.width} × {tree.vocab_size:,} continuations and keeps the best {tree.width} that have not "
            f"ended; the tree draws those {tree.n_candidates}"
            + (f" and each beam's {tree.shown_per_beam} likeliest next tokens" if tree.shown_per_beam else
               " only (with each beam's likeliest next tokens it would be too tall to read)")
            + f" ({drawn} hypotheses), not the rest of the vocabulary. Hover a node for its text and log-probs.")


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

    gr.Markdown(BEAM_EXPLANATION, elem_id="beam-explanation")
    beam_notice = gr.Markdown(elem_id="beam-notice", elem_classes="notice")
    with gr.Row():
        beam_width = Slider(1, MAX_BEAM_WIDTH, value=3, step=1, label="Beam width", elem_id="beam-width")
        beam_new = Slider(1, MAX_BEAM_TOKENS, value=8, step=1, label="New tokens (beam search)",
                          elem_id="beam-new-tokens")
        length_penalty = Slider(-1, 3, value=1.0, step=0.1, label="Length penalty (0 = total log-prob)",
                                elem_id="beam-length-penalty")
        early_stopping = gr.Checkbox(False, label="Early stopping (stop once width hypotheses have ended)",
                                     elem_id="beam-early-stopping")
    with gr.Row():
        beam_run = gr.Button("Beam search", variant="primary", elem_id="beam-run")
        compare_run = gr.Button("Compare greedy, sampling and beam search", elem_id="beam-compare")
    compare_output = gr.HTML(elem_id="beam-compare-output", label="Greedy, sampling and beam search")
    beam_output = gr.HTML(elem_id="beam-text", label="Beam search result")
    tree_plot = gr.Plot(label="Beam search tree", elem_id="beam-tree")
    beam_info = gr.Markdown(elem_id="beam-summary")
    gr.Examples(BEAM_EXAMPLES, inputs=[ctx.prompt], label="Example prompts for beam search",
                elem_id="beam-examples")

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

    def beam_settings(width, n_new, lp, early):
        return (check_number(width, "Beam width", 1, MAX_BEAM_WIDTH, integer=True),
                check_number(n_new, "New tokens (beam search)", 1, MAX_BEAM_TOKENS, integer=True),
                check_number(lp, "Length penalty (0 = total log-prob)", -1, 3),
                _check_flag(early, "Early stopping"))

    @handle
    def run_beam(text, width, n_new, lp, early, model_name, user_models):
        entry = ctx.model(model_name, user_models)
        width, n_new, lp, early = beam_settings(width, n_new, lp, early)
        prompt, notices = beam_prompt(text, entry.model.config.n_ctx, n_new)
        tree = beam_tree(entry.model, prompt.ids, prompt.text, width, n_new, lp, early, SHOWN_PER_BEAM,
                         between_steps=step_aside)   # long work: the views asked for meanwhile go first
        return notices, finished_html(tree), beam_tree_figure(tree), beam_summary(tree)

    @handle
    def run_compare(text, temp, k, p, seed_value, width, n_new, lp, early, model_name, user_models):
        entry = ctx.model(model_name, user_models)
        temp = check_number(temp, "temperature", 0, 2)
        k = check_number(k, "top-k", 0, 200, integer=True)
        p = check_number(p, "top-p", 0.05, 1)
        seed_value = check_number(seed_value, "seed", 0, MAX_SEED, integer=True)
        width, n_new, lp, early = beam_settings(width, n_new, lp, early)
        prompt, notices = beam_prompt(text, entry.model.config.n_ctx, n_new)
        rows = compare_continuations(entry.model, prompt.ids, n_new, temp, k, p, seed_value, width, lp, early,
                                     between_steps=step_aside)
        return notices, compare_html(prompt.text, rows)

    # The first opening writes a continuation (streamed, in generation's own queue) and runs beam search:
    # no empty frame.
    ctx.url_state(temperature=temperature, top_k=top_k, top_p=top_p, new_tokens=max_new, seed=seed,
                  beam_width=beam_width, beam_tokens=beam_new, length_penalty=length_penalty,
                  early_stopping=early_stopping, redraw=[run, beam_run])
    event = run.click(generate, [ctx.prompt, temperature, top_k, top_p, max_new, seed, *ctx.model_inputs],
                      [notice, output, probs_plot, info, generated], api_name="generate")
    stop.click(None, None, None, cancels=[event])
    beam_inputs = [beam_width, beam_new, length_penalty, early_stopping, *ctx.model_inputs]
    beam_run.click(run_beam, [ctx.prompt, *beam_inputs], [beam_notice, beam_output, tree_plot, beam_info],
                   api_name="generate_beam")
    compare_run.click(run_compare, [ctx.prompt, temperature, top_k, top_p, seed, *beam_inputs],
                      [beam_notice, compare_output], api_name="generate_compare")

    @handle
    def send_to_score(text):
        if not text:
            raise InputError("Generate some text first, then score it.")
        return text, gr.Tabs(selected="score")

    if to_score is not None:   # puts prompt + continuation in the prompt box, opens Score and scores it
        to_score.click(send_to_score, [generated], [ctx.prompt, ctx.tabs], api_visibility="private").success(
            **ctx.shared["score"], api_visibility="private")
