"""What every tab's build() gets: the shared header components and the model registry."""
from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr

from gpt2core.text import tokenizer

from . import scheduling
from .inputs import InputError, prepare_prompt
from .lecture import UrlState
from .session import ModelEntry, ModelRegistry


@dataclass
class AppContext:
    registry: ModelRegistry
    prompt: gr.Textbox          # the shared prompt (elem_id "prompt")
    model_choice: gr.Dropdown   # this user's model (elem_id "model-choice"); also an API argument
    user_models: gr.State       # {name: ModelEntry} trained in this session (Train tab)
    demo: gr.Blocks             # the app, for its page-load event
    tabs: gr.Tabs | None = None  # the tab bar: gr.Tabs(selected=<short name>) as an output switches tabs
    shared: dict = field(default_factory=dict)   # what a tab offers later tabs, e.g. "score": its event kwargs
    # Clicked by the page once a link's settings are restored (explorer.lecture): the tabs' first draw.
    page_ready: gr.Button | None = None
    url: UrlState = field(default_factory=UrlState)
    building_tab: str = ""      # the short name of the tab whose build() runs now

    @property
    def refresh_triggers(self) -> list:
        """When a tab's views recompute by themselves: Shift+Enter in the prompt, and page load (after a
        link's settings are restored, so the first draw is the linked view)."""
        return [self.prompt.submit, self.page_ready.click]

    def url_state(self, limits=None, redraw=None, **components) -> None:
        """Put these controls of the tab being built into the page's link under these keys.
        ``limits(model_entry, prompt_text) -> {key: (lo, hi)}`` gives ranges that depend on the model or
        the prompt; other numbers are checked against their control's own minimum and maximum.
        ``redraw``: the button (or list of buttons) the tab's first opening and a link to it press, for
        what doesn't draw on page load."""
        self.url.add(self.building_tab, components, limits, redraw)

    @property
    def model_inputs(self) -> list:
        """Put these last in a handler's inputs; the handler calls ctx.model(name, user_models)."""
        return [self.model_choice, self.user_models]

    def initial_tokens(self, max_tokens: int) -> int:
        """How many tokens the default prompt has (for sliders' starting ranges)."""
        try:
            return len(prepare_prompt(self.prompt.value, max_tokens=max_tokens).ids)
        except InputError:
            return 1

    def model(self, name: str | None, user_models: dict | None = None, progress=None) -> ModelEntry:
        """The request's model; its vocabulary becomes the request's tokenizer (a character model's shows
        characters in every tab). Each request runs in a context of its own (explorer.scheduling), so this
        never reaches another user's request."""
        entry = self.registry.get(name, user_models, progress)
        if scheduling.in_request():     # at build time (the slider ranges) the process keeps GPT-2's BPE
            tokenizer.activate(entry.model.tokenizer)
        return entry
