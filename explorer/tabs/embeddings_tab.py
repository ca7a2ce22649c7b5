"""Embeddings tab: the token table wte (nearest tokens, a 2-D projection) and the position table wpe."""
from __future__ import annotations

import gradio as gr

from ..compute.embeddings import (MAX_WORDS, SPACE_MARK, nearest_tokens, neighbour_markdown, parse_words,
                                  position_summary, position_view, resolve_token, token_projection, untrained_wpe)
from ..context import AppContext
from ..errors import handle
from ..figures.embeddings import neighbour_bars, position_heatmap, position_norms, projection_scatter
from ..inputs import MAX_VIEW_TOKENS, InputError, prepare_prompt
from gpt2core.analysis.trace import token_text
from gpt2core.text.tokenizer import UnknownCharacters

TITLE = "Embeddings"
EXPLANATION = """
**Before block 0, a token is just two rows of numbers added together: its row of the token table
`wte` and its position's row of `wpe`.** Look at which tokens have rows pointing the same way
(training puts words used alike near each other), and at the position heatmap below: GPT-2's learned
positions have a visible structure, neighbouring positions alike, while an untrained model's random
table has none (the heatmap beside it, drawn from the same random init a model starts with; or switch the model).

The similarity is the **cosine** of the angle between two rows (1: the same direction, 0: unrelated).
The projection squeezes the vectors (d numbers each) onto the two directions along which they differ
most (PCA), so tokens that land close together have similar embeddings.
"""
EXAMPLE_TOKENS = ["␣king", "␣love", "␣thee", "␣France", "␣Romeo", "␣night", "␣sword", "␣one", "␣the",
                  "."]
DEFAULT_WORDS = ["king", "queen", "prince", "knight", "lord", "lady", "love", "hate", "fear", "joy", "one", "two",
                 "three", "four", "France", "England", "Rome", "sword", "thee", "thou", "me", "him", "day", "night"]
SOURCES = ["the word list", "the prompt's tokens"]
CHAR_PROJECTION_NOTE = "This model's tokens are single characters: each entry is one of them."
PROJECTION_NOTE = ("Each word is taken with a leading space, as it would appear inside a sentence. "
                   "Type a word and press Enter to add it.")


def _are_tokens(token_v, words_v) -> bool:
    """Whether the token and the word list are tokens of the request's vocabulary."""
    try:
        resolve_token(token_v)
        parse_words(words_v)
    except (InputError, UnknownCharacters):
        return False
    return True


def build(ctx: AppContext) -> None:
    gr.Markdown(EXPLANATION, elem_id="embeddings-explanation")
    gr.Examples(["To be, or not to be, that is the question:",
                 "The king and the queen, the prince and the duke, went to France and to England."],
                inputs=[ctx.prompt], label="Example prompts (for the projection of the prompt's tokens)")
    gr.Markdown("### Token embeddings: the nearest tokens")
    with gr.Row():
        token = gr.Dropdown(EXAMPLE_TOKENS, value=EXAMPLE_TOKENS[0], allow_custom_value=True, scale=2,
                            label=f"Token ({SPACE_MARK} = a leading space: {SPACE_MARK}king is ' king', as inside a "
                                  "sentence; type your own)", elem_id="embeddings-token")
        btn = gr.Button("Show the embeddings", variant="primary", elem_id="embeddings-run", scale=1)
    with gr.Row():
        neighbours_plot = gr.Plot(show_label=False, elem_id="embeddings-neighbours", scale=3)
        neighbours_table = gr.Markdown(elem_id="embeddings-neighbours-table")

    gr.Markdown("### Token embeddings in 2-D")
    with gr.Row():
        source = gr.Radio(SOURCES, value=SOURCES[0], label="Project", elem_id="embeddings-source")
        words = gr.Dropdown(DEFAULT_WORDS, value=DEFAULT_WORDS, multiselect=True, allow_custom_value=True,
                            label=f"Word list (up to {MAX_WORDS})", info=PROJECTION_NOTE, scale=3,
                            elem_id="embeddings-words")
    projection_info = gr.Markdown(elem_id="embeddings-projection-info")
    projection_plot = gr.Plot(show_label=False, elem_id="embeddings-projection")

    gr.Markdown("### Position embeddings")
    positions_info = gr.Markdown(elem_id="embeddings-positions-info")
    with gr.Row():
        trained_plot = gr.Plot(show_label=False, elem_id="embeddings-positions")
        untrained_plot = gr.Plot(show_label=False, elem_id="embeddings-positions-untrained")
    norms_plot = gr.Plot(show_label=False, elem_id="embeddings-position-norms")

    @handle
    def embeddings_neighbours(token_v, text, model_name, user_models):
        """The 10 tokens nearest to a token by cosine similarity of their wte rows (␣ = a leading space);
        the token list gains the prompt's tokens."""
        model = ctx.model(model_name, user_models).model
        nb = nearest_tokens(model, resolve_token(token_v))
        query = token_text(nb.query_id)
        try:
            prompt_tokens = prepare_prompt(text, max_tokens=MAX_VIEW_TOKENS).tokens
        except InputError:
            prompt_tokens = []        # an empty prompt doesn't stop a lookup that doesn't need it
        choices = list(dict.fromkeys([*EXAMPLE_TOKENS, *prompt_tokens]))
        return (neighbour_bars(nb.tokens, nb.similarities, query), neighbour_markdown(nb),
                gr.update(choices=choices))

    @handle
    def embeddings_projection(text, source_v, words_v, model_name, user_models):
        """A 2-D PCA of the wte rows of the word list or of the prompt's tokens, labelled with the tokens."""
        model = ctx.model(model_name, user_models).model
        if source_v not in SOURCES:
            raise InputError(f"Project must be one of {SOURCES}, got {source_v!r}.")
        notes = ""
        if source_v == SOURCES[0]:
            ids, what = parse_words(words_v), "the word list"
        else:
            prompt = prepare_prompt(text, max_tokens=min(MAX_VIEW_TOKENS, model.config.n_ctx))
            ids, what, notes = prompt.ids, "the prompt's tokens", prompt.notice_markdown()
        proj = token_projection(model, ids)
        fig = projection_scatter(proj.coords, proj.tokens, proj.explained,
                                 f"{len(proj.ids)} tokens of {what} on their first two principal components")
        info = (f"The two axes hold {proj.explained.sum():.0%} of the variance of these {len(proj.ids)} vectors "
                f"(d = {model.config.n_embd}); the rest is lost in the picture, so check closeness in the "
                "nearest-token list above.")
        return fig, "\n\n".join(x for x in (notes, info) if x)

    @handle
    def embeddings_positions(model_name, user_models):
        """Cosine similarity of every pair of position embeddings (shrunk for long contexts) and each
        position's norm, beside an untrained table of the same shape."""
        model = ctx.model(model_name, user_models).model
        c = model.config
        trained = position_view(model.wpe.weight)
        untrained = position_view(untrained_wpe(c.n_ctx, c.n_embd))
        shrunk = "" if trained.step == 1 else f", averaged over {trained.step}×{trained.step} positions a cell"
        return (position_summary(trained, untrained),
                position_heatmap(trained.similarity, trained.step, f"This model: cos(wpe[i], wpe[j]){shrunk}"),
                position_heatmap(untrained.similarity, untrained.step, "Untrained (random init, std 0.02)"),
                position_norms(trained.norms, untrained.norms))

    model_inputs = list(ctx.model_inputs)
    neighbours_io = dict(fn=embeddings_neighbours, inputs=[token, ctx.prompt, *model_inputs],
                         outputs=[neighbours_plot, neighbours_table, token])
    projection_io = dict(fn=embeddings_projection, inputs=[ctx.prompt, source, words, *model_inputs],
                         outputs=[projection_plot, projection_info])
    positions_io = dict(fn=embeddings_positions, inputs=model_inputs,
                        outputs=[positions_info, trained_plot, untrained_plot, norms_plot])
    ctx.url_state(token=token, redraw=btn)
    # preprocess=False: API callers may send any token or word (the dropdowns would refuse values not in
    # their lists with a generic message); the handlers check them and answer in words.
    btn.click(**neighbours_io, api_name="embeddings_neighbours", preprocess=False)
    btn.click(**projection_io, api_name="embeddings_projection", preprocess=False)
    btn.click(**positions_io, api_name="embeddings_positions", preprocess=False)
    token.input(**neighbours_io, api_visibility="private", preprocess=False, trigger_mode="always_last")
    gr.on([source.input, words.input, ctx.prompt.submit], **projection_io, api_visibility="private",
          preprocess=False, trigger_mode="always_last")
    @handle
    def fit_inputs(token_v, words_v, model_name, user_models):
        """A model with its own vocabulary (characters) can't look up ␣king: give it tokens it has, keeping
        the user's own where they still are tokens."""
        own = ctx.model(model_name, user_models).model.tokenizer
        if _are_tokens(token_v, words_v):
            return gr.update(), gr.update()
        if own is None:
            return gr.update(choices=EXAMPLE_TOKENS, value=EXAMPLE_TOKENS[0]), \
                gr.update(choices=DEFAULT_WORDS, value=DEFAULT_WORDS, info=PROJECTION_NOTE)
        letters = [c for c in own.itos if c.isalpha()] or [c for c in own.itos if c.isprintable()]
        chars = letters[:MAX_WORDS] if len(letters) >= 3 else own.itos[:MAX_WORDS]
        first = "e" if "e" in own.stoi else chars[0]
        return gr.update(choices=[c.replace(" ", SPACE_MARK) for c in own.itos], value=first), \
            gr.update(choices=chars, value=chars, info=CHAR_PROJECTION_NOTE)

    # The model switch fits the inputs to its vocabulary, then redraws all three.
    fitted = ctx.model_choice.change(fit_inputs, [token, words, *model_inputs], [token, words],
                                     api_visibility="private", preprocess=False)
    for io in (neighbours_io, projection_io, positions_io):
        fitted.then(**io, api_visibility="private", preprocess=False)
