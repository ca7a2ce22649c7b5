"""GPT-2 from scratch: model, capture hooks, tokenizer, sampling, generation, weights."""
from .config import PRESETS, GPT2Config, get_config
from .generate import Step, generate, next_token_distribution, stream
from .hooks import ActivationCache, capture
from .model import GPT2, KVCache
from .tokenizer import EOT, EOT_ID, breakdown, decode, encode
from .weights import WeightsError, load, load_from_hub, load_hf, save

__all__ = ["PRESETS", "GPT2Config", "get_config", "GPT2", "KVCache", "ActivationCache", "capture",
           "encode", "decode", "breakdown", "EOT", "EOT_ID", "generate", "stream", "Step", "next_token_distribution",
           "load", "load_hf", "load_from_hub", "save", "WeightsError"]
