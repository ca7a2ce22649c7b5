"""GPT-2 configuration: one dataclass, named presets."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


ACTIVATIONS = ("gelu_tanh", "gelu")   # GELU's tanh approximation, GELU exact (erf)


@dataclass(frozen=True)
class GPT2Config:
    vocab_size: int = 50257
    n_ctx: int = 1024          # context length (block size)
    n_embd: int = 768          # model width d
    n_head: int = 12
    n_layer: int = 12
    dropout: float = 0.1       # embedding, attention and residual dropout
    qkv_bias: bool = True      # OpenAI's checkpoints have biases on q, k, v
    tie_weights: bool = True   # lm_head shares the token embedding
    layer_norm_eps: float = 1e-5
    # OpenAI's GPT-2 uses the tanh approximation; nanoGPT's nn.GELU() is the exact (erf) one.
    activation: str = "gelu_tanh"  # "gelu_tanh" or "gelu"

    def __post_init__(self):
        for name in ("vocab_size", "n_ctx", "n_embd", "n_head", "n_layer"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPT2Config.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        eps = self.layer_norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
            raise ValueError(f"layer_norm_eps must be a finite number > 0, got {eps!r}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GPT2Config":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        return cls(**data)

    def replace(self, **changes) -> "GPT2Config":
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, GPT2Config] = {
    "gpt2": GPT2Config(),
    "gpt2-medium": GPT2Config(n_embd=1024, n_head=16, n_layer=24),
    "gpt2-large": GPT2Config(n_embd=1280, n_head=20, n_layer=36),
    "gpt2-xl": GPT2Config(n_embd=1600, n_head=25, n_layer=48),
    # The seeds' variant: no biases on the q/k/v projection.
    "gpt2-nobias": GPT2Config(qkv_bias=False),
    # Small enough for unit tests and the Train tab; same tokenizer, same architecture.
    "tiny": GPT2Config(n_ctx=128, n_embd=64, n_head=4, n_layer=2, dropout=0.0),
}


def get_config(name: str, **overrides) -> GPT2Config:
    try:
        base = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}") from None
    return base.replace(**overrides) if overrides else base
