"""Tokenizer tab: how the prompt becomes token ids, and the input/target windows training cuts from them."""
from __future__ import annotations

import gradio as gr

from ..components import Slider
from ..compute.tokens import (MAX_TOKENS, MAX_WINDOWS, coverage, partial_labels, sliding_windows,
                              split_characters, split_rows, stats_markdown, text_stats, token_view,
                              tokens_per_word, windows_markdown, word_token_counts)
from ..context import AppContext
from ..errors import handle
from ..figures.tokens import coverage_lines, token_chips_html, tokens_per_word_bars, window_grid
from ..inputs import check_number, prepare_prompt

TITLE = "Tokenizer"
EXPLANATION = """
GPT-2 never sees letters. A **tokenizer** first cuts the text into pieces called **tokens** and
replaces each piece by its number (its **id**) in a fixed vocabulary. Common words are one token,
usually together with the space before them (shown as ␣; a newline is ↵). Rare words are built from
several pieces. The tokenizer works on the UTF-8 **bytes** of the text, so an emoji or a Chinese
character can be split over several tokens that each hold only some of its bytes.
Hover over a token to see its bytes.
"""
WINDOWS_EXPLANATION = """
### What training sees
To train, the text's tokens are cut into **windows** of a fixed length (the context length). The
**target** of a window is the same tokens shifted by one step: under each input token sits the token
that comes right after it. So the model learns one thing, over and over: **predict the next token**
from the tokens before it. The **stride** is how far the next window starts from the previous one.
"""
SPLIT_HEADERS = ["character", "code point", "UTF-8 bytes", "tokens", "which tokens (position, id, bytes)"]
EXAMPLES = [
    "Hello, world!",
    "Tokenization isn't magic: antidisestablishmentarianism splits into pieces, but 'the' doesn't.",
    "Café crème brûlée costs 5 € 🍮😀\n日本語のテキスト",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles",
]


def build(ctx: AppContext) -> None:
    gr.Markdown(EXPLANATION)
    btn = gr.Button("Tokenize", elem_id="tokenizer-run", variant="primary")
    gr.Examples(EXAMPLES, inputs=[ctx.prompt], label="Example prompts")
    notices = gr.Markdown(elem_id="tokenizer-notices", elem_classes="notice")
    chips = gr.HTML(elem_id="tokenizer-tokens", label="Tokens")
    with gr.Row():
        stats = gr.Markdown(elem_id="tokenizer-stats")
        coverage_plot = gr.Plot(elem_id="tokenizer-coverage", label="Characters and bytes per token")
        words_plot = gr.Plot(elem_id="tokenizer-words", label="Tokens per word")
    gr.Markdown("**Characters split across tokens** (their UTF-8 bytes went to more than one token)")
    splits = gr.Dataframe(headers=SPLIT_HEADERS, interactive=False, elem_id="tokenizer-splits",
                          label="Split characters")

    gr.Markdown(WINDOWS_EXPLANATION)
    with gr.Row():
        context_length = Slider(2, 32, value=8, step=1, label="Context length (tokens per window)",
                                   elem_id="tokenizer-context-length")
        stride = Slider(1, 32, value=4, step=1, label="Stride (tokens between window starts)",
                           elem_id="tokenizer-stride")
        windows_btn = gr.Button("Show windows", elem_id="tokenizer-windows-run")
    windows_md = gr.Markdown(elem_id="tokenizer-windows-info")
    windows_plot = gr.Plot(elem_id="tokenizer-windows", label="Training windows")

    @handle
    def show_tokens(text, model_name, user_models):
        entry = ctx.model(model_name, user_models)
        view = token_view(prepare_prompt(text, max_tokens=MAX_TOKENS, keep="start"))
        split = split_characters(view.text, view.infos)
        words, counts = word_token_counts(view.text, view.infos)
        chars_after, bytes_after = coverage(view.text, view.infos)
        stats_md = stats_markdown(text_stats(view.text, view.infos, counts, len(split)),
                                  entry.model.config.vocab_size)
        return (token_chips_html(view.infos, partial_labels(split)), stats_md,
                coverage_lines(chars_after, bytes_after, [t.text for t in view.infos]),
                tokens_per_word_bars(tokens_per_word(words, counts)),
                split_rows(split, view.infos), "\n".join(f"ⓘ {n}" for n in view.notices))

    @handle
    def show_windows(text, n, s, model_name, user_models):
        entry = ctx.model(model_name, user_models)
        n = check_number(n, "Context length", 2, 32, integer=True)
        s = check_number(s, "Stride", 1, 32, integer=True)
        prompt = prepare_prompt(text, max_tokens=MAX_TOKENS, keep="start")
        tokens = prompt.tokens
        w = sliding_windows(prompt.ids, n, s, MAX_WINDOWS)
        return (windows_markdown(tokens, n, s, w, entry.model.config.n_ctx),
                window_grid(w.inputs, w.targets, w.starts, tokens))

    token_outputs = [chips, stats, coverage_plot, words_plot, splits, notices]
    token_inputs = [ctx.prompt, *ctx.model_inputs]
    window_inputs = [ctx.prompt, context_length, stride, *ctx.model_inputs]
    window_outputs = [windows_md, windows_plot]

    btn.click(show_tokens, token_inputs, token_outputs, api_name="tokenizer_breakdown").then(
        show_windows, window_inputs, window_outputs, api_visibility="private")
    windows_btn.click(show_windows, window_inputs, window_outputs, api_name="tokenizer_windows")
    gr.on(ctx.refresh_triggers, show_tokens, token_inputs, token_outputs, api_visibility="private")
    gr.on(ctx.refresh_triggers, show_windows, window_inputs, window_outputs, api_visibility="private")
    for slider in (context_length, stride):
        slider.release(show_windows, window_inputs, window_outputs, api_visibility="private")

