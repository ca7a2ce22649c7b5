"""Tokenizer tab: how the prompt becomes token ids, and the input/target windows training cuts from them."""
from __future__ import annotations

import gradio as gr

from gpt2core.text import merges
from gpt2core.text.tokenizer import get_encoding, printable

from ..components import Number, Slider
from ..compute import merges as merge_compute
from ..compute.tokens import (MAX_TOKENS, MAX_WINDOWS, coverage, partial_labels, sliding_windows,
                              split_characters, split_rows, stats_markdown, text_stats, token_view,
                              tokens_per_word, windows_markdown, word_token_counts)
from ..context import AppContext
from ..errors import handle
from ..figures.merges import chunks_html, merge_ladder
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
MERGES_EXPLANATION = """
### How BPE builds each token
Before any merging, GPT-2's regular expression cuts the text into **chunks**: a word with the space
before it, a number, a run of punctuation, a run of whitespace. Byte-pair encoding (BPE) then works
on one chunk at a time. It starts from the chunk's bytes and, step by step, joins the adjacent pair
that comes **first in GPT-2's list of {n_merges:,} learned merges** (`vocab.bpe`; a low rank means a pair
that was frequent in GPT-2's training text), until no adjacent pair is in the list.

**What to look at:** common words are rebuilt from their letters in a handful of merges, ending in a
single token, while a rare word stops early, still in several pieces. Pick a chunk by its number
(the numbers under the chunks below); -1 takes the chunk with the most merges.
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

    # Every token past the 256 single bytes (and <|endoftext|>) is one merge: 50,000, counted from the encoding
    # the page needs anyway, not by reading vocab.bpe while the app starts (merges.merge_ranks does on first use).
    gr.Markdown(MERGES_EXPLANATION.format(n_merges=get_encoding().n_vocab - 256 - 1))
    with gr.Row():
        # at most MAX_TOKENS chunks: the prompt is cut to that many tokens, and a chunk is at least one
        chunk_index = Number(-1, precision=0, minimum=-1, maximum=MAX_TOKENS - 1,
                             label="Chunk to take apart (-1 = most merges)",
                             elem_id="tokenizer-chunk")
        merges_btn = gr.Button("Show merges", elem_id="tokenizer-merges-run")
    chunks_view = gr.HTML(elem_id="tokenizer-chunks", label="Chunks")
    merges_md = gr.Markdown(elem_id="tokenizer-merges-info")
    ladder_plot = gr.Plot(elem_id="tokenizer-merge-ladder", label="Merge steps")
    merges_table = gr.Dataframe(headers=merge_compute.MERGE_HEADERS, interactive=False,
                                elem_id="tokenizer-merges", label="Each merge, in the order BPE made it")
    gr.Markdown(merge_compute.map_markdown())
    bytes_table = gr.Dataframe(headers=merge_compute.BYTE_HEADERS, interactive=False,
                               elem_id="tokenizer-bytes", label="The chunk's bytes and their GPT-2 symbols")

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

    @handle
    def show_merges(text, chunk, model_name, user_models):
        """The prompt's chunks and each BPE merge of one of them (-1: the one with the most merges)."""
        index = check_number(chunk, "Chunk", -1, MAX_TOKENS - 1, integer=True)
        own = ctx.model(model_name, user_models).model.tokenizer
        if own is not None:     # merges are GPT-2's BPE; a character vocabulary has none to show
            return ("", f"**{model_name} has no merges to show.** Its vocabulary is {own.describe()}: each token is "
                    "one character, so nothing is merged. The merges here are how GPT-2's byte-level BPE builds "
                    "its tokens; choose a GPT-2 model in the menu above to take them apart.",
                    None, [], [])
        view = merge_compute.merge_view(prepare_prompt(text, max_tokens=MAX_TOKENS, keep="start").text, index)
        trace = view.trace
        ladder = merge_ladder(trace.start, [(s.left, s.right, s.rank, s.pieces) for s in trace.steps],
                              lambda piece: len(merges.bytes_of(piece)))
        return (chunks_html([printable(c.data) for c in view.chunks], view.chunk.index),
                merge_compute.summary_markdown(view), ladder, merge_compute.merge_rows(trace),
                merge_compute.byte_rows(view.chunk))

    merge_io = dict(fn=show_merges, inputs=[ctx.prompt, chunk_index, *ctx.model_inputs],
                    outputs=[chunks_view, merges_md, ladder_plot, merges_table, bytes_table])
    token_outputs = [chips, stats, coverage_plot, words_plot, splits, notices]
    token_inputs = [ctx.prompt, *ctx.model_inputs]
    window_inputs = [ctx.prompt, context_length, stride, *ctx.model_inputs]
    window_outputs = [windows_md, windows_plot]

    btn.click(show_tokens, token_inputs, token_outputs, api_name="tokenizer_breakdown").then(
        show_windows, window_inputs, window_outputs, api_visibility="private").then(
        **merge_io, api_visibility="private")
    ctx.url_state(context=context_length, stride=stride)
    merges_btn.click(**merge_io, api_name="tokenizer_merges")
    chunk_index.submit(**merge_io, api_visibility="private")
    gr.on(ctx.refresh_triggers, **merge_io, api_visibility="private")
    windows_btn.click(show_windows, window_inputs, window_outputs, api_name="tokenizer_windows")
    gr.on(ctx.refresh_triggers, show_tokens, token_inputs, token_outputs, api_visibility="private")
    gr.on(ctx.refresh_triggers, show_windows, window_inputs, window_outputs, api_visibility="private")
    for slider in (context_length, stride):
        slider.release(show_windows, window_inputs, window_outputs, api_visibility="private")

