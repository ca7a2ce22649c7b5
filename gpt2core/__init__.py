"""GPT-2 from scratch: model, capture hooks, tokenizer, sampling, generation, weights.

The folders follow the architecture (README, "Architecture"):
  reference/  the model a student reads: config, model, hooks, weights, devices
  kernels/    where the reference's ops run fast: the backend's per-op choice and the C kernels
  text/       GPT-2's byte-level BPE: the tokenizer and its merges taken apart
  decoding/   from logits to text: sampling, KV-cache generation, beam search
  analysis/   reading the model: lens, circuits, scores, the one-token trace, precisions
  features/   reading it by features: neurons, sparse autoencoders, steering
  training/   data, pre-training, instruction and classification fine-tuning, model cards
"""
import importlib

from .decoding.generate import Step, generate, next_token_distribution, stream
from .reference.config import PRESETS, GPT2Config, get_config
from .reference.hooks import ActivationCache, capture
from .reference.model import GPT2, KVCache
from .reference.weights import WeightsError, load, load_from_hub, load_hf, save
from .text.tokenizer import EOT, EOT_ID, breakdown, decode, encode

__all__ = ["PRESETS", "GPT2Config", "get_config", "GPT2", "KVCache", "ActivationCache", "capture",
           "encode", "decode", "breakdown", "EOT", "EOT_ID", "generate", "stream", "Step", "next_token_distribution",
           "load", "load_hf", "load_from_hub", "save", "WeightsError"]

# `from gpt2core import lens` (the flat layout's spelling) still finds the module in its folder, imported
# when first asked for. `generate` is not here: `gpt2core.generate` is the function, as it always was.
_MODULES = {
    "config": "reference", "model": "reference", "hooks": "reference", "weights": "reference", "devices": "reference",
    "formats": "reference",
    "backend": "kernels", "native": "kernels",
    "tokenizer": "text", "merges": "text",
    "sampling": "decoding", "beam": "decoding",
    "lens": "analysis", "circuits": "analysis", "score": "analysis", "trace": "analysis", "precision": "analysis",
    "data": "training", "train": "training", "finetune": "training", "classify": "training",
    "classify_data": "training", "instruct_data": "training", "modelcard": "training",
}


def __getattr__(name: str):
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{_MODULES[name]}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
