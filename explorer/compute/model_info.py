"""What the Model tab shows: the config, the architecture in words, parameter counts by group."""
from __future__ import annotations

from gpt2core import GPT2


def grouped_param_counts(model: GPT2) -> dict[str, int]:
    """Counts summed over layers: embeddings, attention, feed-forward, LayerNorms, head."""
    groups = {"token embedding": 0, "position embedding": 0, "attention": 0, "feed-forward": 0,
              "LayerNorms": 0, "output head (untied)": 0}
    for name, n in model.param_counts().items():
        if name.startswith("token embedding"):
            groups["token embedding"] += n
        elif name.startswith("position embedding"):
            groups["position embedding"] += n
        elif name.endswith("attention"):
            groups["attention"] += n
        elif name.endswith("feed-forward"):
            groups["feed-forward"] += n
        elif "LayerNorm" in name:
            groups["LayerNorms"] += n
        else:
            groups["output head (untied)"] += n
    if model.config.tie_weights:
        groups.pop("output head (untied)")
    return groups


def config_rows(model: GPT2) -> list[list]:
    cfg = model.config
    return [
        ["vocabulary size", f"{cfg.vocab_size:,}", "tokens the tokenizer knows"],
        ["context length", f"{cfg.n_ctx:,}", "the most tokens the model can see at once"],
        ["width d (n_embd)", f"{cfg.n_embd:,}", "numbers per token in the residual stream"],
        ["heads (n_head)", f"{cfg.n_head}", f"each head works in {cfg.head_dim} dimensions"],
        ["layers (n_layer)", f"{cfg.n_layer}", "transformer blocks, one after another"],
        ["feed-forward width", f"{4 * cfg.n_embd:,}", "4 x d, with GELU between"],
        ["dropout", f"{cfg.dropout}", "only while training; off in this explorer"],
        ["q/k/v bias", "yes" if cfg.qkv_bias else "no", "as in OpenAI's checkpoint" if cfg.qkv_bias else ""],
        ["output head", "tied to token embedding" if cfg.tie_weights else "separate", ""],
        ["parameters", f"{model.num_params():,}", "unique (a tied head counts once)"],
    ]


def architecture_markdown(model: GPT2) -> str:
    cfg = model.config
    return (
        f"**token ids** (T ≤ {cfg.n_ctx}) → **token embedding** wte [{cfg.vocab_size:,} × {cfg.n_embd}] "
        f"+ **position embedding** wpe [{cfg.n_ctx} × {cfg.n_embd}]\n\n"
        f"→ **{cfg.n_layer} × block**, each:  x = x + Attention(LayerNorm₁(x)) "
        f"({cfg.n_head} heads × {cfg.head_dim} dims, causal);  x = x + MLP(LayerNorm₂(x)) "
        f"({cfg.n_embd} → {4 * cfg.n_embd} → GELU → {cfg.n_embd})\n\n"
        f"→ **final LayerNorm** → **output head** [{cfg.n_embd} × {cfg.vocab_size:,}]"
        f"{' (the token embedding, transposed)' if cfg.tie_weights else ''} → **logits** for the next token"
    )
