"""Builds the Gradio app: header (prompt, model choice, banner) and one tab per module."""
from __future__ import annotations

import time

import gradio as gr

from .context import AppContext
from . import lecture, memory, own_model, scheduling, startup
from .errors import handle
from .inputs import MAX_VIEW_TOKENS, InputError, prepare_prompt
from .session import HUB_NAME, HubDownload, ModelRegistry, device_label
from .tabs import load_tabs

# Requests reuse freed activation memory in a bounded number of malloc arenas (explorer.memory): set for any
# process that builds the app, before its server's threads start (the command line sets it earlier still).
memory.configure()

DEFAULT_PROMPT = "To be, or not to be, that is the question:"
DOWNLOAD_POLL_S = 1.0         # how often a page asks how far the background GPT-2 download is
MAX_QUEUE = 64                # waiting events beyond this are refused with "queue full"
# Browser sessions whose state (trained models, the last scored text, ...) is kept; beyond it gradio drops
# the least recently used one. Its default, 10,000, would let a day of page loads hold the memory.
SESSIONS_KEPT = 256
CSS = """
#untrained-banner { background: #fff3cd; border: 1px solid #e0b000; border-radius: 6px; padding: 4px 12px; }
.notice { color: #8a5a00; }
/* 14 tabs: at gradio's 16 px a side the last ones fall into the tab bar's overflow menu on a 1400 px window */
#tabs .tab-container > button { padding: 0 9px; }   /* the tabs and gradio's hidden copy it measures */
""" + lecture.CSS
HEADER = """
# GPT-2 Explorer
Type a prompt, then open a tab to watch GPT-2 work on it: how the tokenizer splits the text, where
each attention head looks, how LayerNorm and GELU reshape the numbers, and how the sampler picks the
next token. Press **Shift+Enter** in the prompt box (or a tab's button) to refresh the views.
"""


def model_status(entry) -> tuple[str, dict]:
    device = device_label(next(entry.model.parameters()).device)
    text = (f"**Model:** {entry.name} · {entry.model.num_params():,} parameters · on {device} · "
            f"weights: {entry.source}")
    banner = gr.update(visible=not entry.trained,
                       value="⚠️ **Untrained model:** these weights are random, so its predictions are "
                             "noise. The mechanics (tokens, attention, LayerNorm, GELU) are still real.")
    return text, banner


def precision_status(entry, text) -> str:
    """The status line of a model served in a lower precision (``--dtype``): its error against fp32 on the
    user's prompt (at most the views' token cap; the default prompt while the box is empty), and in bf16 how
    this CPU computes the products (bf16 units, or operands rounded to bf16 and multiplied in fp32). Two
    forward passes of the prompt; "" in fp32 (exact)."""
    from gpt2core.kernels import backend
    from gpt2core.analysis.precision import error_report

    from .compute.precision import status_markdown

    precision = getattr(entry.model, "precision", "fp32")
    if precision == "fp32":
        return f"**Precision:** fp32 (exact) for {entry.name}."
    n_ctx = entry.model.config.n_ctx
    try:
        prompt, what = prepare_prompt(text, max_tokens=min(MAX_VIEW_TOKENS, n_ctx)), "this prompt"
    except InputError:
        prompt, what = prepare_prompt(DEFAULT_PROMPT, max_tokens=min(MAX_VIEW_TOKENS, n_ctx)), "the default prompt"
    if prompt.notices and len(prompt.ids) == min(MAX_VIEW_TOKENS, n_ctx):
        what += f"'s last {len(prompt.ids)} tokens"
    on_cpu = next(entry.model.parameters()).device.type == "cpu"
    return status_markdown(error_report(entry.model, prompt.ids, precision), precision, what,
                           backend.bf16_units() if on_cpu else None)


def download_notice(download: HubDownload | None) -> str:
    """The cold-start notice: how far GPT-2's download is, and that the bundled model serves meanwhile."""
    if download is None:
        return ""
    if download.state == "downloading":
        return (f"⏳ **GPT-2 is downloading: {download.fraction:.0%}** ({download.message}). Until it is ready "
                f"every tab works on the bundled model; the menu switches to GPT-2 by itself when it is.")
    if download.state == "ready":
        return "✅ **GPT-2 is ready** and is now the default model."
    return f"⚠️ **GPT-2 could not be downloaded:** {download.error} The bundled model keeps serving."


def wire_link(ctx: AppContext, tab_ids: list[str], presentation, copy_link, link_box) -> None:
    """The page's link and presentation mode (explorer.lecture): restore on load, then draw; keep the address
    bar current as controls change; copy it on request."""
    fields = [f.component for f in ctx.url.fields]

    def restore(request: gr.Request):
        query = dict(request.query_params) if request is not None else {}
        updates, messages = lecture.restore_updates(query, ctx, tab_ids)
        for message in messages:
            gr.Warning(message)
        return updates

    ctx.demo.load(None, js=lecture.page_script(ctx.url))
    link_inputs = [ctx.prompt, ctx.model_choice, presentation, *fields]
    ctx.demo.load(restore, None, [ctx.prompt, ctx.model_choice, ctx.tabs, presentation, *fields],
                  api_visibility="private", show_progress="hidden").then(
        None, link_inputs, None, js=lecture.after_restore_js(ctx.url))
    link_js = "(prompt, model, present, ...values) => window.explorer.link(prompt, model, present, values)"
    # A tab switch shows the new panel after the event: read the open tab a moment later.
    later_js = ("(prompt, model, present, ...values) => { setTimeout(() => "
                "window.explorer.link(prompt, model, present, values), 100); }")
    gr.on([c.change for c in link_inputs], None, link_inputs, None, js=link_js)
    ctx.tabs.select(None, link_inputs, None, js=later_js)
    # A tab that draws only on its button draws the first time it opens, so no one meets empty frames.
    ctx.tabs.select(None, None, None, js="() => { setTimeout(() => window.explorer.firstOpen(window.explorer.openTab()), "
                    "100); }")
    copy_link.click(None, link_inputs, [link_box], js="(prompt, model, present, ...values) => { "
                    "const url = window.explorer.link(prompt, model, present, values); "
                    "navigator.clipboard?.writeText(url).catch(() => {}); return url; }")
    presentation.change(None, [presentation], None, js="(on) => window.explorer.present_mode(on)")


def build_app(registry: ModelRegistry) -> gr.Blocks:
    default = registry.get(registry.default)
    with gr.Blocks(title="GPT-2 Explorer") as demo:
        # The queue's settings first: queue() remakes gradio's app with the page's config, which costs
        # nothing yet on an empty page (after the build it was one more pass over some 400 components).
        demo.queue(max_size=MAX_QUEUE, default_concurrency_limit=scheduling.VIEW_SLOTS)
        gr.Markdown(HEADER)
        if registry.startup_notice:
            gr.Markdown(f"ⓘ {registry.startup_notice}", elem_id="startup-notice", elem_classes="notice")
        status_text, banner_update = model_status(default)
        banner = gr.Markdown(banner_update["value"], visible=banner_update["visible"], elem_id="untrained-banner")
        with gr.Row():
            prompt = gr.Textbox(DEFAULT_PROMPT, label="Prompt", lines=2, scale=4, elem_id="prompt")
            model_choice = gr.Dropdown(registry.choices(), value=registry.default, label="Model", scale=1,
                                       allow_custom_value=True, elem_id="model-choice")
        status = gr.Markdown(status_text, elem_id="model-status")
        lower = registry.precision != "fp32"   # --dtype: the error against fp32 next to the model status
        precision_md = gr.Markdown(precision_status(default, DEFAULT_PROMPT) if lower else "", visible=lower,
                                   elem_id="precision-status")
        with gr.Row(equal_height=True):
            presentation = gr.Checkbox(False, label="Presentation mode: large fonts for a lecture hall",
                                       elem_id="presentation", scale=2)
            copy_link = gr.Button("Copy link", elem_id="copy-link", size="sm", scale=1)
            link_box = gr.Textbox(label="Link to this view (the address bar holds it too)", elem_id="share-link",
                                  interactive=False, scale=4, max_lines=1)
        # Clicked by the page after a link's settings are restored: the tabs' first draw (ctx.refresh_triggers).
        page_ready = gr.Button("draw", elem_id="page-ready", elem_classes="url-hidden")
        cold_start = registry.hub_download
        download_md = gr.Markdown(download_notice(cold_start), visible=cold_start is not None,
                                  elem_id="hub-download", elem_classes="notice")
        user_models = gr.State({})
        ctx = AppContext(registry, prompt, model_choice, user_models, demo, page_ready=page_ready)
        own_model.build(ctx)     # "Open your own model": an upload joins this session's menu

        @handle
        def select_model(name, user_models, progress=gr.Progress()):
            entry = ctx.model(name, user_models, progress=lambda f, msg: progress(f, desc=msg))
            return model_status(entry)

        model_choice.change(select_model, ctx.model_inputs, [status, banner], api_name="select_model")
        if lower:
            @handle
            def show_precision(text, name, user_models):
                return precision_status(ctx.model(name, user_models), text)

            # On the user's prompt: when it is submitted, when the model changes, and when the page opens.
            gr.on([prompt.submit, model_choice.change, page_ready.click], show_precision,
                  [prompt, *ctx.model_inputs], [precision_md], api_name="precision_status",
                  show_progress="hidden")
        if cold_start is not None:
            serving_meanwhile = registry.default   # what the page serves until GPT-2 is ready
            timer = gr.Timer(DOWNLOAD_POLL_S, active=cold_start.state == "downloading")

            def poll_download(choice):
                download = registry.hub_download
                if download.state == "downloading":
                    return download_notice(download), gr.update(), gr.Timer(active=True)
                # Done: stop asking; switch this page to GPT-2 unless its user chose another model.
                switch = download.state == "ready" and choice in (serving_meanwhile, None, "")
                menu = gr.update(choices=registry.choices(), **({"value": HUB_NAME} if switch else {}))
                return download_notice(download), menu, gr.Timer(active=False)

            timer.tick(poll_download, [model_choice], [download_md, model_choice, timer], api_visibility="private",
                       show_progress="hidden")
        tab_ids = []
        tabs = load_tabs()
        startup.mark("build: header, tab modules imported")
        build_s = {}
        with gr.Tabs(elem_id="tabs") as ctx.tabs:
            for tab in tabs:
                short = tab.__name__.rsplit('.', 1)[-1].removesuffix('_tab')
                tab_ids.append(short)
                ctx.building_tab = short
                t = time.perf_counter()
                with gr.Tab(tab.TITLE, id=short, elem_id=f"tab-{short}"):   # id: gr.Tabs(selected=short)
                    tab.build(ctx)
                build_s[short] = round(time.perf_counter() - t, 4)
        wire_link(ctx, tab_ids, presentation, copy_link, link_box)
        startup.mark("build: tabs", tabs=build_s)
    startup.mark("build: gradio's config and app")     # gr.Blocks' exit: the page's config, its routes
    scheduling.assign(demo)      # the views' shared queue, and one per kind of long work
    memory.start_trimming()      # freed pages go back to the OS every few seconds
    return demo
