"""One module per tab, each with TITLE and build(ctx); TABS is their order in the app."""
from __future__ import annotations

import importlib

# circuits_tab after why_tab: both take the prediction apart. precision_tab after compare_tab: it is a contrast too, one model on one prompt in four number formats.
TAB_MODULES = ["tokenizer_tab", "walkthrough_tab", "embeddings_tab", "attention_tab", "layernorm_tab",
               "gelu_tab", "sampling_tab", "why_tab", "circuits_tab", "score_tab", "compare_tab", "precision_tab", "generate_tab",
               "train_tab", "model_tab"]


def load_tabs():
    """The tab modules that exist (tabs land one by one), in order."""
    tabs = []
    for name in TAB_MODULES:
        try:
            tabs.append(importlib.import_module(f"{__name__}.{name}"))
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
    return tabs
