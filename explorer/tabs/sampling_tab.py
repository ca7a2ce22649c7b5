"""Sampling tab: the next-token distribution, what temperature / top-k / top-p do to it, and random draws."""
from __future__ import annotations

import gradio as gr

from ..components import Number, Slider
from ..compute.sampling_view import (draw_counts, draws_markdown, draws_view, final_distribution,
                                     model_fingerprint, next_token_logits, sampling_view, summary_markdown)
from ..context import AppContext
from ..errors import handle
from ..figures.sampling_view import distribution_bars, draws_bars, plot_text
from ..inputs import MAX_PROMPT_TOKENS, check_number, prepare_prompt

TITLE = "Sampling"
EXPLANATION = """
For the next token, GPT-2 gives **every** token in its vocabulary a probability. The sampler then
picks one at random, after up to three adjustments:

- **Temperature** divides the scores before the softmax. Below 1 the likely tokens get likelier;
  above 1 the distribution flattens. At 0 the sampler always takes the single most likely token (greedy).
- **Top-k** keeps only the k most likely tokens (0 = off).
- **Top-p** (nucleus) keeps the fewest most likely tokens whose probabilities add up to at least p (1 = off).

The tokens that survive are **renormalised**: their probabilities are scaled up to add to 100% again.
Move the sliders and watch which tokens get cut. Then draw many samples to see that the random picks
really follow the final probabilities.
"""
EXAMPLES = [
    "The capital of France is",
    "Once upon a time, there was a",
    "To be, or not to be, that is the",
    "1, 2, 3, 4,",
    "My favourite colour is",
]
MAX_SEED = 2**31 - 1


def check_settings(temperature, top_k, top_p) -> tuple[float, int, float]:
    return (check_number(temperature, "temperature", 0, 2),
            check_number(top_k, "top-k", 0, 200, integer=True),
            check_number(top_p, "top-p", 0.05, 1))


def build(ctx: AppContext) -> None:
    gr.Markdown(EXPLANATION)
    notice = gr.Markdown(elem_id="sampling-notice", elem_classes="notice")
    logits_cache = gr.State(None)   # {"key": (model, prompt ids), "logits": (V,) array}: this session only
    with gr.Row():
        temperature = Slider(0, 2, value=1.0, step=0.05, label="Temperature (0 = greedy)",
                                elem_id="sampling-temperature")
        top_k = Slider(0, 200, value=0, step=1, label="Top-k (0 = off)", elem_id="sampling-top-k")
        top_p = Slider(0.05, 1, value=1.0, step=0.05, label="Top-p (1 = off)", elem_id="sampling-top-p")
        n_bars = Slider(5, 50, value=20, step=1, label="Tokens to show", elem_id="sampling-n-bars")
    run = gr.Button("Show next-token distribution", variant="primary", elem_id="sampling-run")
    bars = gr.Plot(label="Next-token distribution", elem_id="sampling-bars")
    summary = gr.Markdown(elem_id="sampling-summary")

    gr.Markdown("### Draw samples\nDraw many tokens from the final distribution and count how often each "
                "one comes up. The same seed always gives the same draws.")
    with gr.Row():
        n_draws = Slider(10, 2000, value=200, step=10, label="Number of draws", elem_id="sampling-n-draws")
        seed = Number(0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed", elem_id="sampling-seed")
        draw_btn = gr.Button("Draw samples", elem_id="sampling-draw")
    draws_plot = gr.Plot(label="Draws vs expected", elem_id="sampling-draws-plot")
    draws_summary = gr.Markdown(elem_id="sampling-draws-summary")
    gr.Examples(EXAMPLES, inputs=[ctx.prompt], label="Example prompts", elem_id="sampling-examples")

    def logits_for(text, cache, entry):
        """The prompt and its next-token logits, reused from this session's cache when unchanged."""
        prompt = prepare_prompt(text, max_tokens=min(MAX_PROMPT_TOKENS, entry.model.config.n_ctx))
        key = (entry.name, model_fingerprint(entry.model), tuple(prompt.ids))
        if not cache or cache.get("key") != key:
            cache = {"key": key, "logits": next_token_logits(entry.model, prompt.ids)}
        return prompt, cache["logits"], cache

    @handle
    def show(text, temp, k, p, n_top, cache, model_name, user_models):
        entry = ctx.model(model_name, user_models)
        temp, k, p = check_settings(temp, k, p)
        n_top = check_number(n_top, "tokens to show", 5, 50, integer=True)
        prompt, logits, cache = logits_for(text, cache, entry)
        view = sampling_view(logits, temp, k, p, n_top)
        tail = prompt.text[-40:].replace("\n", " ")
        title = (f"After “{'…' if len(prompt.text) > 40 else ''}{plot_text(tail)}”: temperature {temp:g}, "
                 f"top-k {k or 'off'}, top-p {format(p, 'g') if p < 1 else 'off'}")
        fig = distribution_bars(view.tokens, view.ids, view.model_probs, view.final_probs, view.status, title)
        return prompt.notice_markdown(), fig, summary_markdown(view, temp, k, p), cache

    @handle
    def draw(text, temp, k, p, n_top, n, seed_value, cache, model_name, user_models):
        entry = ctx.model(model_name, user_models)
        temp, k, p = check_settings(temp, k, p)
        n_top = check_number(n_top, "tokens to show", 5, 50, integer=True)
        n = check_number(n, "number of draws", 10, 2000, integer=True)
        seed_value = check_number(seed_value, "seed", 0, MAX_SEED, integer=True)
        _, logits, cache = logits_for(text, cache, entry)
        final = final_distribution(logits, temp, k, p)
        view = draws_view(final, draw_counts(final, n, seed_value), n_top)
        fig = draws_bars(view.tokens, view.ids, view.expected, view.observed, view.other_expected,
                         view.other_observed, view.n_draws, view.tvd)
        return fig, draws_markdown(view), cache

    ctx.url_state(temperature=temperature, top_k=top_k, top_p=top_p, bars=n_bars, draws=n_draws, seed=seed)
    settings = [ctx.prompt, temperature, top_k, top_p, n_bars]
    show_io = dict(fn=show, inputs=[*settings, logits_cache, *ctx.model_inputs],
                   outputs=[notice, bars, summary, logits_cache])
    draw_io = dict(fn=draw, inputs=[*settings, n_draws, seed, logits_cache, *ctx.model_inputs],
                   outputs=[draws_plot, draws_summary, logits_cache])

    run.click(**show_io, api_name="sampling_distribution").success(**draw_io, api_visibility="private")
    draw_btn.click(**draw_io, api_name="sampling_draws")
    gr.on(ctx.refresh_triggers, **show_io, api_visibility="private").success(**draw_io, api_visibility="private")
    for control in (temperature, top_k, top_p, n_bars):
        control.change(**show_io, api_visibility="private", trigger_mode="always_last",
                       show_progress="hidden").success(**draw_io, api_visibility="private",
                                                       show_progress="hidden")
    for control in (n_draws, seed):
        control.change(**draw_io, api_visibility="private", trigger_mode="always_last", show_progress="hidden")
