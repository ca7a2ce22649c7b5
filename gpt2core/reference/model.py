"""GPT-2 from scratch, numerically the same as OpenAI's (and Hugging Face's) GPT-2.

Parameter names follow the GPT-2 checkpoint (wte, wpe, ln_1, attn.c_attn, attn.c_proj, ln_2,
mlp.c_fc, mlp.c_proj, ln_f) so loading is a short mapping; the block list is called ``blocks``
(``h`` in the checkpoint) so hook names read ``blocks.3.attn.hook_pattern``.

Each op is written once, in plain PyTorch. ``@backend.kernel`` lets gpt2core.kernels.backend run it with a
faster kernel where one is measured faster on this machine: the same numbers to float rounding, the
same hook points.

Shape key: B batch, T query tokens, S key tokens (past + T), d n_embd, nh heads, hs head size.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import backend
from .config import GPT2Config, get_config
from .hooks import ActivationCache, HookPoint, capture, name_hook_points


class Linear(nn.Module):
    """y = x W^T + b, like nn.Linear, with W stored (in, out) in memory.

    That is the layout of GPT-2's Conv1D checkpoints and the faster one for MKL (x @ W_stored is a
    plain row-major product: 7-16% faster at 64 tokens, as bench/ measures). ``weight`` is still the
    (out, in) tensor nn.Linear has, a transposed view of that storage, so names, shapes and state dicts
    are unchanged.
    """

    def __init__(self, d_in: int, d_out: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = d_in, d_out
        self.weight = nn.Parameter(torch.empty(d_in, d_out).t())   # (out, in) view of (in, out) storage
        self.bias = nn.Parameter(torch.zeros(d_out)) if bias else None

    @backend.kernel("linear")
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)                               # (..., out)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class LayerNorm(nn.Module):
    """y = (x - mean) / sqrt(var + eps) * weight + bias, with the statistics exposed as hooks."""

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))   # scale (gamma)
        self.bias = nn.Parameter(torch.zeros(d))    # shift (beta)
        self.hook_in_mean = HookPoint()     # (B, T)
        self.hook_in_var = HookPoint()      # (B, T)
        self.hook_normalized = HookPoint()  # (B, T, d)
        self.hook_out_mean = HookPoint()    # (B, T)
        self.hook_out_var = HookPoint()     # (B, T)
        # The statistics' hook points in the order the backend's kernel makes them (a plain tuple, not a
        # submodule list).
        self._stat_hooks = (self.hook_in_mean, self.hook_in_var, self.hook_normalized, self.hook_out_mean,
                            self.hook_out_var)

    @backend.kernel("layer_norm")
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.hook_in_mean(x.mean(-1)).unsqueeze(-1)                         # (B, T, 1)
        var = self.hook_in_var(x.var(-1, unbiased=False)).unsqueeze(-1)             # (B, T, 1)
        x_hat = self.hook_normalized((x - mean) * torch.rsqrt(var + self.eps))     # (B, T, d)
        out = x_hat * self.weight + self.bias                                      # (B, T, d)
        # Output statistics cost a pass over the tensor, so compute them only when asked.
        if self.hook_out_mean.wants():
            self.hook_out_mean(out.mean(-1))
        if self.hook_out_var.wants():
            self.hook_out_var(out.var(-1, unbiased=False))
        return out


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation, as in OpenAI's GPT-2 code."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class GELU(nn.Module):
    """gelu() above, fused: one pass over (B, T, 4d) instead of eight (equal to gelu() to float rounding).
    ``approximate="none"``: the exact GELU, x * Phi(x), that nanoGPT's nn.GELU() computes."""

    def __init__(self, approximate: str = "tanh"):
        super().__init__()
        self.approximate = approximate

    @backend.kernel("gelu")
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate=self.approximate)                           # (B, T, 4d)


class MLP(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.c_fc = Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.act = GELU("tanh" if cfg.activation == "gelu_tanh" else "none")
        self.c_proj = Linear(4 * cfg.n_embd, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.dropout)
        self.hook_pre = HookPoint()    # GELU input  (B, T, 4d)
        self.hook_post = HookPoint()   # GELU output (B, T, 4d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.hook_pre(self.c_fc(x))           # (B, T, 4d)
        post = self.hook_post(self.act(pre))        # (B, T, 4d)
        return self.dropout(self.c_proj(post))      # (B, T, d)


class KVCache:
    """Preallocated keys and values for every layer, so decoding appends without copying."""

    def __init__(self, cfg: GPT2Config, batch_size: int, max_len: int | None = None,
                 dtype: torch.dtype = torch.float32, device=None):
        self.max_len = min(max_len or cfg.n_ctx, cfg.n_ctx)
        shape = (cfg.n_layer, batch_size, cfg.n_head, self.max_len, cfg.head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)   # (L, B, nh, S_max, hs)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.length = 0   # positions filled so far

    def reset(self):
        self.length = 0


@functools.lru_cache(maxsize=32)
def future_mask(T: int, S: int, past: int, device) -> torch.Tensor:
    """(T, S) bool, True where query t (at position past + t) would see a later key: the causal mask's
    complement, made once per shape (it is read-only)."""
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(past).logical_not_()


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPT2Config, layer_idx: int = 0):
        super().__init__()
        self.n_head, self.head_dim, self.layer_idx = cfg.n_head, cfg.head_dim, layer_idx
        self.c_attn = Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.qkv_bias)  # q, k, v fused
        self.c_proj = Linear(cfg.n_embd, cfg.n_embd)
        self.attn_dropout = nn.Dropout(cfg.dropout)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.hook_q = HookPoint()            # (B, nh, T, hs)
        self.hook_k = HookPoint()            # (B, nh, S, hs)
        self.hook_v = HookPoint()            # (B, nh, S, hs)
        self.hook_attn_scores = HookPoint()  # (B, nh, T, S) scaled, masked with -inf, pre-softmax
        self.hook_pattern = HookPoint()      # (B, nh, T, S) softmax, before dropout
        self.hook_z = HookPoint()            # (B, T, nh, hs) weighted values per head
        # In the order hooks.recorded() answers for them (a plain tuple, not a submodule list).
        self._hook_points = (self.hook_q, self.hook_k, self.hook_v, self.hook_attn_scores, self.hook_pattern,
                       self.hook_z)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        qkv = self.c_attn(x)                                                      # (B, T, 3d)
        z = self.attend(qkv, kv_cache)                                            # (B, T, d)
        return self.resid_dropout(self.c_proj(z))                                 # (B, T, d)

    @backend.kernel("attention")
    def attend(self, qkv: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """Each head's softmax(q k^T / sqrt(hs)) v, the heads side by side."""
        B, T, three_d = qkv.shape
        d = three_d // 3
        q, k, v = qkv.split(d, dim=2)                                             # 3 x (B, T, d)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)              # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)              # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)              # (B, nh, T, hs)
        past = 0
        if kv_cache is not None:
            past = kv_cache.length
            kv_cache.k[self.layer_idx, :, :, past:past + T] = k
            kv_cache.v[self.layer_idx, :, :, past:past + T] = v
            k = kv_cache.k[self.layer_idx, :, :, :past + T]                       # (B, nh, S, hs)
            v = kv_cache.v[self.layer_idx, :, :, :past + T]                       # (B, nh, S, hs)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        S = k.shape[2]
        # Scaling q (T x hs per head) costs less than scaling the scores (T x S); for a power-of-two
        # head size (64 in GPT-2) the two are the same floats.
        scores = (q * (1.0 / math.sqrt(self.head_dim))) @ k.transpose(-2, -1)     # (B, nh, T, S)
        if T > 1:  # a single new query sees every cached key: nothing to mask
            scores.masked_fill_(future_mask(T, S, past, qkv.device), float("-inf"))
        scores = self.hook_attn_scores(scores)
        pattern = self.hook_pattern(F.softmax(scores, dim=-1))                    # (B, nh, T, S)
        z = self.attn_dropout(pattern) @ v                                        # (B, nh, T, hs)
        z = self.hook_z(z.transpose(1, 2))                                        # (B, T, nh, hs)
        return z.reshape(B, T, d)                                                 # (B, T, d)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then + mlp(ln_2(x))."""

    def __init__(self, cfg: GPT2Config, layer_idx: int = 0):
        super().__init__()
        self.ln_1 = LayerNorm(cfg.n_embd, cfg.layer_norm_eps)
        self.attn = CausalSelfAttention(cfg, layer_idx)
        self.ln_2 = LayerNorm(cfg.n_embd, cfg.layer_norm_eps)
        self.mlp = MLP(cfg)
        self.hook_resid_pre = HookPoint()   # (B, T, d)
        self.hook_attn_out = HookPoint()    # (B, T, d)
        self.hook_resid_mid = HookPoint()   # (B, T, d)
        self.hook_mlp_out = HookPoint()     # (B, T, d)
        self.hook_resid_post = HookPoint()  # (B, T, d)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(self.ln_1(x), kv_cache)))
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(self.ln_2(x))))


class GPT2(nn.Module):
    def __init__(self, cfg: GPT2Config, init_weights: bool = True):
        """``init_weights=False`` leaves the weights uninitialised, for a loader that overwrites them all
        (random init of GPT-2 124M costs ~1 s, and on the meta device it imports torch._dynamo: 2.4 s)."""
        super().__init__()
        self.config = cfg
        # Stored (d, vocab), so the tied head gets Linear's fast layout; lookups read it as (vocab, d).
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd, _weight=torch.empty(cfg.n_embd, cfg.vocab_size).t())
        self.wpe = nn.Embedding(cfg.n_ctx, cfg.n_embd, _weight=torch.empty(cfg.n_ctx, cfg.n_embd))
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layer)])
        self.ln_f = LayerNorm(cfg.n_embd, cfg.layer_norm_eps)
        self.lm_head = Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight
        self.hook_embed = HookPoint()       # (B, T, d) token embeddings
        self.hook_pos_embed = HookPoint()   # (B, T, d) position embeddings
        self.hook_names = name_hook_points(self)
        self.precision = "fp32"   # of the matrix products, unless a caller asks otherwise (gpt2core.kernels.backend)
        self.tokenizer = None     # GPT-2's BPE; a model with its own vocabulary carries it (gpt2core.text.tokenizer)
        if init_weights:
            self.init_weights()

    def init_weights(self) -> None:
        self.apply(self._init_weights)
        # GPT-2 paper: scale the residual projections by 1/sqrt(2 * n_layer).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer))

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GPT2":
        return cls(get_config(name, **overrides))

    @staticmethod
    def _init_weights(module: nn.Module):
        if isinstance(module, (nn.Linear, Linear)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, kv_cache: KVCache | None = None, last_only: bool = False) -> torch.Tensor:
        """idx (B, T) token ids -> logits (B, T, vocab); with ``last_only`` (B, 1, vocab) for the last
        position alone, which is all decoding needs: the head is the largest matrix, so this saves
        (T - 1) / T of its work on a prompt."""
        B, T = idx.shape
        past = kv_cache.length if kv_cache is not None else 0
        if past + T > self.config.n_ctx:
            raise ValueError(f"sequence of {past + T} tokens exceeds the context of {self.config.n_ctx}")
        pos = torch.arange(past, past + T, device=idx.device)                  # (T,)
        with backend.default_precision(getattr(self, "precision", "fp32")):
            x = self.hook_embed(self.wte(idx)) + self.hook_pos_embed(self.wpe(pos).expand(B, T, -1))  # (B, T, d)
            x = self.drop(x)
            for block in self.blocks:
                x = block(x, kv_cache)                                         # (B, T, d)
            if kv_cache is not None:
                kv_cache.length += T
            x = self.ln_f(x)                                                   # (B, T, d)
            if last_only:
                x = x[:, -1:]                                                  # (B, 1, d)
            return self.lm_head(x)                                             # (B, T or 1, vocab)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy; targets (B, T) are idx shifted by one."""
        logits = self(idx)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))

    def run_with_cache(self, idx, names=None, hooks=None, last_only: bool = False) -> tuple[torch.Tensor, ActivationCache]:
        """Forward pass that also returns the activations named by ``names`` (None: all).

        ``idx`` is a sequence of ids (T,) or a batch (B, T), on any device (it is moved to the model's).
        For a single sequence the batch axis is removed from the logits and every cached tensor,
        e.g. a pattern is (nh, T, S).
        ``hooks`` maps hook names to functions (tensor, name) -> tensor|None that may edit it.
        ``last_only``: logits for the last position only (every hook still sees every position);
        a view that draws no logits skips most of the head's work this way.
        """
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.wte.weight.device)   # ids from anywhere
        single = idx.dim() == 1
        if single:
            idx = idx.unsqueeze(0)
        with torch.no_grad(), capture(names, hooks) as cache:
            logits = self(idx, last_only=last_only)
        if single:
            logits = logits[0]
            for name, tensor in cache.items():
                cache[name] = tensor[0]
        return logits, cache

    # ---- parameter counts -------------------------------------------------------------------
    def num_params(self) -> int:
        """Unique parameters (a tied head is counted once)."""
        return sum(p.numel() for p in self.parameters())

    def param_counts(self) -> dict[str, int]:
        """Parameter counts per component; they add up to num_params()."""
        cfg = self.config
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        counts = {
            "token embedding (wte)": self.wte.weight.numel(),
            "position embedding (wpe)": self.wpe.weight.numel(),
        }
        for i, block in enumerate(self.blocks):
            counts[f"layer {i} attention"] = count(block.attn)
            counts[f"layer {i} feed-forward"] = count(block.mlp)
            counts[f"layer {i} LayerNorms"] = count(block.ln_1) + count(block.ln_2)
        counts["final LayerNorm"] = count(self.ln_f)
        counts["output head" + (" (tied to wte)" if cfg.tie_weights else "")] = (
            0 if cfg.tie_weights else self.lm_head.weight.numel())
        return counts
