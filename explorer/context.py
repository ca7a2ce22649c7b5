"""What every tab's build() gets: the shared header components and the model registry."""
from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr

from .inputs import InputError, prepare_prompt
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

    @property
    def refresh_triggers(self) -> list:
        """When a tab's views recompute by themselves: Shift+Enter in the prompt, and page load."""
        return [self.prompt.submit, self.demo.load]

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
        return self.registry.get(name, user_models, progress)
