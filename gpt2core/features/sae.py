"""Sparse autoencoders (SAEs) on a GPT-2's activations: the model, its metrics, splicing it into a forward
pass, and SAELens's folder format.

An SAE rewrites an activation x (d_in wide) as a sparse, non-negative code f (d_sae latents, d_sae >> d_in)
and reads it back: f = act((x - b_dec) @ W_enc + b_enc), x_hat = f @ W_dec + b_dec. Each row of W_dec is a
feature's direction. Parameters are named and shaped as SAELens's: W_enc (d_in, d_sae), W_dec (d_sae, d_in),
b_enc (d_sae,), b_dec (d_in,), and threshold (d_sae,) for JumpReLU.

Architectures (``act``):
  "topk"      keep each token's k largest pre-activations, ReLU'd, zero the rest (OpenAI, Gao et al. 2024:
              "Scaling and evaluating sparse autoencoders"); the default, trained with the aux-k loss
  "relu"      ReLU; sparsity comes from an L1 penalty in training (the sparsity trade-off made visible);
              SAELens calls it "standard" and so does the cfg.json we write
  "jumprelu"  ReLU where the pre-activation exceeds a per-latent ``threshold``, else 0: read from files
              (Gemma Scope, BatchTopK SAEs as SAELens saves them) for inference only

    sae = SAE(d_in=128, d_sae=1024, k=16, hook_name="blocks.3.hook_resid_post")
    f = sae.encode(x)                                  # (..., d_sae)
    x_hat = sae.decode(f)                              # (..., d_in)
    hooks = splice_hooks(sae, model=model, edit=clamp([7], 5.0))   # run_with_cache(ids, hooks=hooks)
    save_sae(sae, "out/sae"); sae = load_sae("out/sae")             # SAELens's cfg.json + safetensors

Metrics, one function each (definitions in their docstrings): ``l0``, ``explained_variance``, ``mse``,
``dead_fraction`` (with ``DeadLatentTracker`` counting tokens since each latent last fired, window
``DEAD_WINDOW_TOKENS``) and ``ce_loss_recovered``. Training lives in gpt2core.features.sae_train.

Splicing keeps the error term: the hook replaces x by decode(edit(f)) + (x - decode(f)), f = encode(x),
so the model computes exactly what it did until an edit changes a latent (it is computed as
x + decode(edit(f)) - decode(f) = x + (edit(f) - f) @ W_dec: with no edit that adds an exact zero).

SAELens's GPT-2 small residual SAEs (release gpt2-small-res-jb) read TransformerLens's residual stream,
which is ours minus its mean over d_model: see ``SAE.centred`` and ``load_gpt2_small_res_jb``.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..reference.hooks import capture

ARCHITECTURES = ("topk", "relu", "jumprelu")
TRAINABLE = ("topk", "relu")
# Our names -> SAELens's cfg "architecture", and back (SAELens's "standard" is the ReLU SAE).
SAELENS_ARCHITECTURE = {"topk": "topk", "relu": "standard", "jumprelu": "jumprelu"}
FROM_SAELENS = {v: k for k, v in SAELENS_ARCHITECTURE.items()}

CFG_FILE, WEIGHTS_FILE, SPARSITY_FILE = "cfg.json", "sae_weights.safetensors", "sparsity.safetensors"
# The layout version we write: SAELens >= 6 reads metadata nested under "metadata"; a cfg without a version
# >= 6 is converted as a pre-6 one (which would drop the nested metadata). sae_lens_training_version stays null.
SAELENS_LAYOUT_VERSION = "6.0.0"
# A latent is dead when it has not fired on any of the last DEAD_WINDOW_TOKENS tokens seen in training.
DEAD_WINDOW_TOKENS = 1_000_000
LOG_SPARSITY_EPS = 1e-10   # sparsity.safetensors holds log10(density + eps), as SAELens writes it

GPT2_SMALL_RES_JB = "jbloom/GPT2-Small-SAEs-Reformatted"   # SAELens release gpt2-small-res-jb
# Hooks whose tensor is written into the residual stream (or is it): TransformerLens's centred weights
# shift exactly these by their mean over d_model.
RESIDUAL_HOOKS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
                  "hook_embed", "hook_pos_embed")

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
           "bfloat16": torch.bfloat16}

Edit = Callable[[torch.Tensor], torch.Tensor]   # latents (B, T, d_sae) -> edited latents, same shape


class SAE(nn.Module):
    """A sparse autoencoder: encode(x) -> latents (..., d_sae); decode(f) -> x_hat (..., d_in); forward(x) -> x_hat.

    ``centred``: the SAE was trained on TransformerLens's centred residual stream (GPT-2 loaded with
    ``center_writing_weights=True``, its default in ``HookedTransformer.from_pretrained``), which is ours minus
    its per-token mean over d_model. Then encode reads x - x.mean(-1) and forward adds that mean back, so
    x_hat is in our model's coordinates. Why the two streams differ by exactly the mean (read in
    TransformerLens's ``ProcessWeights.center_writing_weights`` and ``process_weights``):

    - center_writing_weights subtracts the mean over d_model from every weight and bias that writes into the
      residual stream: W_E, W_pos, each attention's W_O and b_O, each MLP's W_out and b_out. The stream is a
      sum of those writes, so each of its vectors loses its mean and nothing else, *provided every writer
      reads the same input*; every reader (ln_1, ln_2, ln_f) is a LayerNorm, which subtracts the mean
      first, so LN(x - mean(x)) = LN(x) exactly and the inputs are the same. Thus TL's hook_resid_pre /
      mid / post, hook_attn_out, hook_mlp_out (and hook_embed, hook_pos_embed) = ours - their mean over
      d_model, to float rounding.
    - fold_ln (LN's gain and bias moved into the next W_Q/W_K/W_V/W_in, then those centred over their
      input axis) changes ln_*.hook_normalized and the weights, not any product they make: the residual
      stream is untouched. center_unembed shifts the logits by a per-token constant (log-probs equal, the
      logits themselves not). fold_value_biases moves b_V into b_O: attn.hook_v and attn.hook_z differ, the
      attention's output does not. So the adapter is right for the residual hooks above only, and
      ``check_fits`` refuses a centred SAE elsewhere.
    - TransformerLens prepends <|endoftext|> to a prompt by default (SAELens's prepend_bos, which it
      assumes true for its older cfgs); our encode() does not: prepend it to match the SAE's training inputs.

    The mean is invisible downstream (every reader is a LayerNorm), which is why TL can drop it; the error
    term carries it through a splice, so a splice stays exact.
    """

    def __init__(self, d_in: int, d_sae: int, architecture: str = "topk", k: int | None = 16,
                 hook_name: str | None = None, model_name: str | None = None, centred: bool = False,
                 apply_b_dec_to_input: bool = True, metadata: dict | None = None, seed: int | None = 0):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}")
        for name, value in (("d_in", d_in), ("d_sae", d_sae)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if architecture == "topk":
            if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d_sae:
                raise ValueError(f"a TopK SAE needs k from 1 to d_sae ({d_sae}), got {k!r}")
        self.d_in, self.d_sae, self.architecture = d_in, d_sae, architecture
        self.k = k if architecture == "topk" else None
        self.hook_name, self.model_name = hook_name, model_name
        self.centred, self.apply_b_dec_to_input = bool(centred), bool(apply_b_dec_to_input)
        self.metadata = dict(metadata or {})   # the rest of SAELens's metadata, kept for the round trip
        self.log_sparsity: torch.Tensor | None = None   # (d_sae,) log10 feature density, when known
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_in))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        if architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(d_sae))
        self.init_weights(seed)

    @torch.no_grad()
    def init_weights(self, seed: int | None = 0) -> None:
        """Decoder rows random unit vectors, the encoder their transpose (OpenAI's and SAELens's tied start),
        biases zero. Training then sets b_dec to the data's geometric median."""
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        w = torch.randn(self.d_sae, self.d_in, generator=g)                            # (d_sae, d_in)
        w /= w.norm(dim=-1, keepdim=True)
        self.W_dec.copy_(w)
        self.W_enc.copy_(w.T)
        self.b_enc.zero_()
        self.b_dec.zero_()

    def extra_repr(self) -> str:
        k = f", k={self.k}" if self.k else ""
        return (f"{self.architecture}, d_in={self.d_in}, d_sae={self.d_sae}{k}, hook={self.hook_name}"
                f"{', centred' if self.centred else ''}")

    # ---- the forward pass -------------------------------------------------------------------------
    def sae_input(self, x: torch.Tensor) -> torch.Tensor:
        """x as the SAE reads it: in its dtype, less its mean over d_in when ``centred``."""
        x = x.to(self.W_enc.dtype)
        return x - x.mean(-1, keepdim=True) if self.centred else x                      # (..., d_in)

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's output before the activation: (x - b_dec) @ W_enc + b_enc. (..., d_sae)"""
        x = self.sae_input(x)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc                                              # (..., d_sae)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        if self.architecture == "topk":
            top = pre.topk(self.k, dim=-1, sorted=False)                                # (..., k)
            return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())   # (..., d_sae)
        if self.architecture == "jumprelu":
            return pre.relu() * (pre > self.threshold)                                  # (..., d_sae)
        return pre.relu()                                                               # (..., d_sae)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., d_in) -> latents (..., d_sae), non-negative, mostly zero."""
        return self.activate(self.pre_activations(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """latents (..., d_sae) -> f @ W_dec + b_dec (..., d_in), in the SAE's coordinates (centred if ``centred``)."""
        return f.to(self.W_dec.dtype) @ self.W_dec + self.b_dec                          # (..., d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x_hat (..., d_in) in x's coordinates: decode(encode(x)), plus x's mean when ``centred``."""
        x_hat = self.decode(self.encode(x))                                             # (..., d_in)
        return x_hat + x.to(x_hat.dtype).mean(-1, keepdim=True) if self.centred else x_hat

    # ---- SAELens's cfg --------------------------------------------------------------------------
    def cfg_dict(self) -> dict:
        """The cfg.json SAELens 6 writes for this architecture (``SAEConfig.to_dict``), metadata nested."""
        meta = {"sae_lens_version": SAELENS_LAYOUT_VERSION, "sae_lens_training_version": None,
                **self.metadata, "model_name": self.model_name, "hook_name": self.hook_name}
        meta.setdefault("hook_head_index", None)
        kwargs = dict(meta.get("model_from_pretrained_kwargs") or {})
        if self.centred:
            kwargs["center_writing_weights"] = True
        else:
            kwargs.pop("center_writing_weights", None)
        meta["model_from_pretrained_kwargs"] = kwargs
        cfg = {"d_in": self.d_in, "d_sae": self.d_sae, "dtype": _dtype_name(self.W_enc.dtype),
               "device": str(self.W_enc.device), "apply_b_dec_to_input": self.apply_b_dec_to_input,
               "normalize_activations": "none", "reshape_activations": "none", "metadata": meta,
               "architecture": SAELENS_ARCHITECTURE[self.architecture]}
        if self.architecture == "topk":
            cfg.update(k=self.k, rescale_acts_by_decoder_norm=False)
        return cfg


def _dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in _DTYPES.items()}[dtype]


# ---- metrics --------------------------------------------------------------------------------------

def l0(latents: torch.Tensor) -> float:
    """L0: the mean, over tokens, of the number of active (nonzero) latents. latents (..., d_sae)."""
    return float((latents.detach() != 0).flatten(0, -2).sum(-1).double().mean())


def mse(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """MSE: the mean of (x - x_hat)^2 over tokens and dimensions (E||x - x_hat||^2 / d_in)."""
    return float(F.mse_loss(x_hat.detach().double(), x.detach().double()))


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Explained variance = 1 - E||x - x_hat||^2 / E||x - mu||^2, over the tokens of x (..., d_in).

    mu is the per-dimension mean of x over the whole set; the numerator and the denominator are each
    averaged over the set before dividing (not a mean of per-token ratios). 1: perfect; 0: no better than
    predicting mu; it can go below 0."""
    x, x_hat = x.detach().flatten(0, -2).double(), x_hat.detach().flatten(0, -2).double()  # (N, d_in)
    error = (x - x_hat).pow(2).sum(-1).mean()
    spread = (x - x.mean(0)).pow(2).sum(-1).mean()
    return float(1 - error / spread)


def dead_fraction(tokens_since_active: torch.Tensor, window: int = DEAD_WINDOW_TOKENS,
                  tokens_seen: int | None = None) -> float:
    """Dead fraction: the share of latents not active on any of the last ``window`` tokens seen in training.

    ``tokens_since_active`` (d_sae,): for each latent, how many tokens have gone by since it last fired
    (0: it fired on the latest token). Before ``window`` tokens have been seen (``tokens_seen``), the window
    is every token seen so far: a latent is dead if it has never fired."""
    if tokens_seen is not None:
        if tokens_seen <= 0:
            return 0.0
        window = min(window, tokens_seen)
    return float((tokens_since_active >= window).double().mean())


class DeadLatentTracker:
    """Counts, token by token, how long ago each latent last fired; gives the dead mask and fraction."""

    def __init__(self, d_sae: int, window: int = DEAD_WINDOW_TOKENS, device=None):
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"the dead-latent window must be a whole number of tokens >= 1, got {window!r}")
        self.window = window
        self.tokens_seen = 0
        self.since = torch.zeros(d_sae, dtype=torch.long, device=device)               # (d_sae,)

    @torch.no_grad()
    def update(self, latents: torch.Tensor) -> None:
        """latents (N, d_sae) for N consecutive tokens (any order within a batch counts as seen together)."""
        fired = latents.reshape(-1, latents.shape[-1]) != 0                             # (N, d_sae)
        n = fired.shape[0]
        # Tokens after each latent's last firing in this batch: the first True counted from the end.
        after_last = fired.flip(0).to(torch.uint8).argmax(0)                            # (d_sae,)
        self.since = torch.where(fired.any(0), after_last.to(self.since), self.since + n)
        self.tokens_seen += n

    def dead_mask(self) -> torch.Tensor:
        """(d_sae,) bool: not fired in the last ``window`` tokens (all tokens so far, before that many)."""
        if self.tokens_seen == 0:
            return torch.zeros_like(self.since, dtype=torch.bool)
        return self.since >= min(self.window, self.tokens_seen)

    def dead_fraction(self) -> float:
        return dead_fraction(self.since, self.window, self.tokens_seen)


# ---- the model's activations, and the SAE spliced in ---------------------------------------------

class _Stop(Exception):
    """Raised by a hook to end a forward pass once it has the activation it came for."""


def hook_width(model, hook_name: str) -> int:
    """The width (last axis) of a (B, T, width) activation of ``model``; a plain ValueError for any other."""
    if hook_name not in model.hook_names:
        raise ValueError(f"{hook_name!r} is not a hook point of this model (e.g. blocks.0.hook_resid_post)")
    d = model.config.n_embd
    leaf = hook_name.rsplit(".", 1)[-1]
    if leaf in RESIDUAL_HOOKS or leaf == "hook_normalized":
        return d
    if hook_name.endswith(("mlp.hook_pre", "mlp.hook_post")):
        return 4 * d
    raise ValueError(f"an SAE reads a (batch, tokens, width) activation; {hook_name} is not one "
                     "(use a residual, attention-out, MLP-out or MLP neuron hook)")


def check_fits(model, sae: SAE, hook_name: str | None = None) -> str:
    """The hook name the SAE attaches to (``hook_name``, else its own), after checking that its d_in is the
    hook's width in this model: a plain ValueError naming the hook and both widths if not."""
    name = hook_name or sae.hook_name
    if not name:
        raise ValueError("this SAE names no hook: pass hook_name (e.g. blocks.3.hook_resid_post)")
    width = hook_width(model, name)
    if sae.d_in != width:
        raise ValueError(f"this SAE reads {sae.d_in}-wide activations, but {name} is {width} wide in this "
                         f"model (n_embd {model.config.n_embd}): it was made for another model or hook")
    if sae.centred and name.rsplit(".", 1)[-1] not in RESIDUAL_HOOKS:
        raise ValueError(f"a centred SAE (TransformerLens's center_writing_weights) fits a residual-stream hook "
                         f"only, not {name}")
    return name


@torch.no_grad()
def hook_activations(model, ids, hook_name: str) -> torch.Tensor:
    """The activation at ``hook_name`` for token ids (B, T): (B, T, width). The forward stops there."""
    ids = torch.as_tensor(ids, dtype=torch.long, device=model.wte.weight.device)
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    got = {}

    def grab(x: torch.Tensor, _name: str):
        got["x"] = x
        raise _Stop

    # The hook raises _Stop once it has the activation: the layers after it never run.
    with contextlib.suppress(_Stop), capture(names=[], hooks={hook_name: grab}):
        model(ids)
    if "x" not in got:
        raise ValueError(f"the forward pass never reached {hook_name!r}")
    return got["x"]                                                                     # (B, T, width)


def _positions_mask(positions, T: int, device) -> torch.Tensor:
    """(T,) bool: the positions of this forward pass an edit applies to (None: all; negative from the end)."""
    if positions is None:
        return torch.ones(T, dtype=torch.bool, device=device)
    if isinstance(positions, int):
        positions = [positions]
    mask = torch.zeros(T, dtype=torch.bool, device=device)
    for p in positions:
        if -T <= p < T:
            mask[p] = True
    return mask


def _set_latents(features, value, positions) -> Edit:
    features = [features] if isinstance(features, int) else list(features)

    def edit(f: torch.Tensor) -> torch.Tensor:                                          # f (B, T, d_sae)
        if any(not 0 <= i < f.shape[-1] for i in features):
            raise ValueError(f"feature indices must be from 0 to {f.shape[-1] - 1}, got {features}")
        where = torch.zeros(f.shape[-2:], dtype=torch.bool, device=f.device)           # (T, d_sae)
        where[:, features] = True
        where &= _positions_mask(positions, f.shape[-2], f.device)[:, None]
        return torch.where(where, torch.as_tensor(value, dtype=f.dtype, device=f.device), f)

    return edit


def ablate(features, positions=None) -> Edit:
    """An edit setting latents ``features`` (an index or a list) to 0 at ``positions`` of the forward pass
    (an index, a list; negative from the end; None: every position)."""
    return _set_latents(features, 0.0, positions)


def clamp(features, value: float, positions=None) -> Edit:
    """An edit setting latents ``features`` to ``value`` at ``positions`` (None: every position)."""
    return _set_latents(features, float(value), positions)


def splice_hook(sae: SAE, edit: Edit | None = None) -> Callable:
    """A hook function (x, name) -> decode(edit(f)) + (x - decode(f)), f = encode(x), x (B, T, d_in).

    The error term x - decode(f) keeps everything the SAE misses, so without an edit (or one that changes
    no latent) the model computes exactly what it would have; an edit moves x by decode(edit(f)) -
    decode(f) = (edit(f) - f) @ W_dec (the bias cancels), which is how it is computed."""
    def hook(x: torch.Tensor, _name: str) -> torch.Tensor:
        f = sae.encode(x.to(sae.W_enc.device))                                          # (B, T, d_sae)
        edited = edit(f) if edit is not None else f                                     # (B, T, d_sae)
        delta = (edited - f) @ sae.W_dec                                                # (B, T, d_in)
        return x + delta.to(x.device, x.dtype)

    return hook


def splice_hooks(sae: SAE, hook_name: str | None = None, edit: Edit | None = None, model=None) -> dict:
    """{hook name: splice_hook(sae, edit)} for ``model.run_with_cache(ids, hooks=...)``; with ``model``,
    checked to fit first (check_fits)."""
    name = check_fits(model, sae, hook_name) if model is not None else (hook_name or sae.hook_name)
    if not name:
        raise ValueError("this SAE names no hook: pass hook_name")
    return {name: splice_hook(sae, edit)}


def replace_hook(sae: SAE) -> Callable:
    """A hook function replacing x by the SAE's reconstruction alone (no error term): sae(x)."""
    return lambda x, _name: sae(x.to(sae.W_enc.device)).to(x.device, x.dtype)


def _zero_hook(x: torch.Tensor, _name: str) -> torch.Tensor:
    return torch.zeros_like(x)


@torch.no_grad()
def feature_activations(model, sae: SAE, ids, hook_name: str | None = None) -> torch.Tensor:
    """The SAE's latents over a prompt: ids (T,) -> (T, d_sae) (or (B, T) -> (B, T, d_sae))."""
    name = check_fits(model, sae, hook_name)
    single = torch.as_tensor(ids).dim() == 1
    f = sae.encode(hook_activations(model, ids, name).to(sae.W_enc.device))             # (B, T, d_sae)
    return f[0] if single else f


def _next_token_ce(model, ids: torch.Tensor, hooks: dict | None) -> tuple[float, int]:
    """Summed next-token cross-entropy over every position of ids (B, T), and how many targets."""
    with capture(names=[], hooks=hooks):
        logits = model(ids[:, :-1])                                                     # (B, T-1, V)
    targets = ids[:, 1:]                                                                # (B, T-1)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
    return float(loss), targets.numel()


@torch.no_grad()
def ce_loss_recovered(model, sae: SAE, token_batches: Iterable, hook_name: str | None = None) -> dict:
    """CE loss recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean).

    CE is the model's mean next-token cross-entropy over every position of the token batches (B, T):
    CE_clean with nothing changed, CE_sae with the activation at the hook replaced by the SAE's
    reconstruction sae(x) (no error term), CE_zero with it replaced by zeros. 1: the reconstruction loses
    nothing the model uses; 0: no better than deleting the activation. Returns all four numbers."""
    name = check_fits(model, sae, hook_name)
    was_training = model.training
    model.eval()
    totals = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    n = 0
    device = model.wte.weight.device
    try:
        for ids in token_batches:
            ids = torch.as_tensor(ids, dtype=torch.long, device=device)
            ids = ids.unsqueeze(0) if ids.dim() == 1 else ids                           # (B, T)
            for key, hooks in (("clean", None), ("sae", {name: replace_hook(sae)}), ("zero", {name: _zero_hook})):
                loss, count = _next_token_ce(model, ids, hooks)
                totals[key] += loss
            n += count
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("ce_loss_recovered needs token batches of at least 2 tokens")
    ce = {key: value / n for key, value in totals.items()}
    gap = ce["zero"] - ce["clean"]
    return {"ce_clean": ce["clean"], "ce_sae": ce["sae"], "ce_zero": ce["zero"],
            "ce_loss_recovered": (ce["zero"] - ce["sae"]) / gap if gap != 0 else float("nan")}


# ---- SAELens's folder format ------------------------------------------------------------------------

def save_sae(sae: SAE, folder, log_sparsity: torch.Tensor | None = None) -> Path:
    """Write SAELens's folder: cfg.json (SAELens 6's layout), sae_weights.safetensors (W_enc, W_dec, b_enc,
    b_dec[, threshold]) and, when known, sparsity.safetensors ({"sparsity": log10 feature density})."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: p.detach().cpu().contiguous() for name, p in sae.named_parameters()}
    save_file(tensors, str(folder / WEIGHTS_FILE))
    (folder / CFG_FILE).write_text(json.dumps(sae.cfg_dict(), indent=2))
    log_sparsity = sae.log_sparsity if log_sparsity is None else log_sparsity
    if log_sparsity is not None:
        save_file({"sparsity": log_sparsity.detach().float().cpu().contiguous()}, str(folder / SPARSITY_FILE))
    return folder


# SAELens's LLM_METADATA_KEYS (sae_lens/loading/pretrained_sae_loaders.py): what 6 nests under "metadata".
_SAELENS_METADATA_KEYS = {"model_name", "hook_name", "model_class_name", "hook_head_index",
                          "model_from_pretrained_kwargs", "prepend_bos", "exclude_special_tokens", "neuronpedia_id",
                          "context_size", "seqpos_slice", "dataset_path", "sae_lens_version",
                          "sae_lens_training_version", "hook_name_out", "hook_head_index_out"}
_OLD_NAMES = {"hook_point": "hook_name", "hook_point_layer": "hook_layer", "hook_point_head_index": "hook_head_index",
              "activation_fn_str": "activation_fn"}


def read_cfg(cfg: dict) -> dict:
    """A SAELens cfg.json, any version, as our settings: architecture, d_in, d_sae, k, hook_name, model_name,
    centred, apply_b_dec_to_input, dtype, rescale (fold decoder norms in), metadata. Unsupported settings are
    a ValueError that says which.

    Read: SAELens 6 (hook_name, model_name, ... nested under "metadata"); SAELens 5's flat keys (hook_name,
    hook_layer, activation_fn_str / activation_fn_kwargs {"k": ...}); and older ones (hook_point,
    hook_point_layer, hook_point_head_index, d_sae missing but expansion_factor, normalize_activations as a
    bool, dtype "torch.float32")."""
    if not isinstance(cfg, dict):
        raise ValueError("cfg.json must hold a JSON object")
    meta = cfg.get("metadata") or {}
    if not isinstance(meta, dict):
        raise ValueError("cfg.json's metadata must be an object")
    flat = {_OLD_NAMES.get(k, k): v for k, v in cfg.items() if k != "metadata"}
    flat.update({_OLD_NAMES.get(k, k): v for k, v in meta.items()})

    activation = flat.get("activation_fn") or "relu"
    fn_kwargs = flat.get("activation_fn_kwargs") or {}
    k = flat.get("k", fn_kwargs.get("k"))
    arch = flat.get("architecture") or "standard"
    if activation == "topk" and k is not None:
        arch = "topk"   # SAELens < 6: a "standard" SAE with a topk activation_fn is a TopK SAE
    if arch not in FROM_SAELENS:
        raise ValueError(f"unsupported SAE architecture {arch!r}: this reader knows "
                         f"{', '.join(sorted(FROM_SAELENS))} (SAELens's names)")
    if arch == "standard" and activation != "relu":
        raise ValueError(f"unsupported activation_fn {activation!r} for a standard SAE: only relu")
    if arch == "topk" and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError(f"a TopK SAE's cfg needs k (a positive integer), got {k!r}")

    d_in = flat.get("d_in")
    d_sae = flat.get("d_sae")
    if d_sae is None and flat.get("expansion_factor") is not None and isinstance(d_in, int):
        d_sae = d_in * flat["expansion_factor"]
    for name, value in (("d_in", d_in), ("d_sae", d_sae)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"cfg.json needs {name} as a positive integer (or d_sae as d_in x expansion_factor), "
                             f"got {value!r}")

    norm = flat.get("normalize_activations")
    norm = "none" if norm in (None, False) else ("expected_average_only_in" if norm is True else norm)
    if norm != "none":
        raise ValueError(f"unsupported normalize_activations {norm!r}: only 'none' (fold the scaling factor into "
                         "the weights first, as SAELens's fold_activation_norm_scaling_factor does)")
    if flat.get("reshape_activations") not in (None, "none"):
        raise ValueError(f"unsupported reshape_activations {flat['reshape_activations']!r} (hook_z SAEs): only 'none'")
    if flat.get("hook_head_index") is not None:
        raise ValueError(f"unsupported hook_head_index {flat['hook_head_index']!r}: SAEs on one head are not read")
    if flat.get("hook_name_out") not in (None, flat.get("hook_name")):
        raise ValueError(f"unsupported: a transcoder (reads {flat.get('hook_name')}, writes {flat['hook_name_out']})")
    if flat.get("finetuning_scaling_factor"):
        raise ValueError("unsupported finetuning_scaling_factor: true")
    dtype = str(flat.get("dtype") or "float32").removeprefix("torch.")
    if dtype not in _DTYPES:
        raise ValueError(f"unsupported dtype {flat.get('dtype')!r}: one of {', '.join(_DTYPES)}")
    kwargs = flat.get("model_from_pretrained_kwargs") or {}
    # Kept for the round trip: SAELens's metadata (nested in 6, flat before), less what the SAE holds itself.
    # sae_lens_version is ours to write: an old one carried over would make SAELens read our file as pre-6.
    held = {"hook_name", "model_name", "hook_head_index", "sae_lens_version"}
    metadata = {key: v for key, v in flat.items() if key in _SAELENS_METADATA_KEYS and key not in held}
    metadata.update({key: v for key, v in meta.items() if key not in held})
    return {"architecture": FROM_SAELENS[arch], "d_in": d_in, "d_sae": d_sae,
            "k": k if arch == "topk" else None, "hook_name": flat.get("hook_name"),
            "model_name": flat.get("model_name"), "centred": bool(kwargs.get("center_writing_weights", False)),
            "apply_b_dec_to_input": bool(flat.get("apply_b_dec_to_input", True)), "dtype": dtype,
            "rescale": bool(flat.get("rescale_acts_by_decoder_norm", False)) and arch == "topk",
            "metadata": metadata}


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt", device="cpu") as f:
        return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118


def load_sae(folder, device="cpu", centred: bool | None = None) -> SAE:
    """An SAE from SAELens's folder (cfg.json + sae_weights.safetensors [+ sparsity.safetensors]), as float32
    on ``device``. ``centred``: None takes it from the cfg (SAELens's metadata.model_from_pretrained_kwargs
    center_writing_weights); True/False overrides it. A TopK SAE saved with rescale_acts_by_decoder_norm has
    its decoder norms folded into the encoder (the same function, SAELens's fold_W_dec_norm)."""
    folder = Path(folder)
    for name in (CFG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} is not an SAE folder: {name} is missing (SAELens's layout: "
                                    f"{CFG_FILE} and {WEIGHTS_FILE})")
    try:
        cfg = read_cfg(json.loads((folder / CFG_FILE).read_text(encoding="utf-8")))
    except json.JSONDecodeError as e:
        raise ValueError(f"{folder / CFG_FILE} is not valid JSON: {e}") from None
    weights = _read_weights(folder / WEIGHTS_FILE)
    scale = weights.pop("scaling_factor", None)   # SAELens once stored ones here; other values are unsupported
    if scale is not None and not torch.all(scale == 1):
        raise ValueError("unsupported finetuning scaling_factor in the weights (not all ones)")
    sae = SAE(cfg["d_in"], cfg["d_sae"], cfg["architecture"], k=cfg["k"], hook_name=cfg["hook_name"],
              model_name=cfg["model_name"], centred=cfg["centred"] if centred is None else centred,
              apply_b_dec_to_input=cfg["apply_b_dec_to_input"], metadata=cfg["metadata"], seed=None)
    expected = {name: tuple(p.shape) for name, p in sae.named_parameters()}
    if set(weights) != set(expected):
        raise ValueError(f"{WEIGHTS_FILE} holds {sorted(weights)}; a {cfg['architecture']} SAE needs "
                         f"{sorted(expected)}")
    with torch.no_grad():
        for name, shape in expected.items():
            if tuple(weights[name].shape) != shape:
                raise ValueError(f"{WEIGHTS_FILE}: {name} is {tuple(weights[name].shape)}, cfg.json's sizes "
                                 f"(d_in {cfg['d_in']}, d_sae {cfg['d_sae']}) make it {shape}")
            getattr(sae, name).copy_(weights[name].float())
        if cfg["rescale"]:
            norms = sae.W_dec.norm(dim=-1)                                              # (d_sae,)
            sae.W_enc.mul_(norms)
            sae.b_enc.mul_(norms)
            sae.W_dec.div_(norms[:, None])
    if (folder / SPARSITY_FILE).is_file():
        sparsity = _read_weights(folder / SPARSITY_FILE).get("sparsity")
        if sparsity is not None and tuple(sparsity.shape) == (cfg["d_sae"],):
            sae.log_sparsity = sparsity.float()
    return sae.to(device)


def load_cached_sae(repo_id: str, folder: str, centred: bool | None = None, cache_dir=None,
                    device="cpu") -> SAE | None:
    """An SAE folder of a Hugging Face repo from the local HF cache only (huggingface_hub's
    try_to_load_from_cache: never a download), or None when its cfg.json or weights are not cached."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = [try_to_load_from_cache(repo_id, f"{folder}/{name}", cache_dir=cache_dir)
             for name in (CFG_FILE, WEIGHTS_FILE)]
    if not all(isinstance(p, str) and Path(p).is_file() for p in found):
        return None
    if Path(found[0]).parent != Path(found[1]).parent:
        return None   # two revisions' files: not one SAE
    return load_sae(Path(found[0]).parent, device=device, centred=centred)


def load_gpt2_small_res_jb(layer: int, cache_dir=None, device="cpu", required: bool = False) -> SAE | None:
    """Joseph Bloom's GPT-2 small residual SAE entering block ``layer`` (0-11: blocks.{layer}.hook_resid_pre,
    24,576 ReLU latents (32 x 768); SAELens release gpt2-small-res-jb, repo jbloom/GPT2-Small-SAEs-Reformatted) from the
    local Hugging Face cache, marked ``centred`` as SAELens's release entry says (center_writing_weights).
    None when not cached; ``required``: a FileNotFoundError saying how to fetch it instead."""
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= 11:
        raise ValueError(f"layer must be 0 to 11 (GPT-2 small's blocks), got {layer!r}")
    folder = f"blocks.{layer}.hook_resid_pre"
    sae = load_cached_sae(GPT2_SMALL_RES_JB, folder, centred=True, cache_dir=cache_dir, device=device)
    if sae is None and required:
        raise FileNotFoundError(f"{GPT2_SMALL_RES_JB}/{folder} is not in the local Hugging Face cache; fetch it with "
                                f"`huggingface-cli download {GPT2_SMALL_RES_JB} --include '{folder}/*'`")
    return sae


__all__ = ["SAE", "ARCHITECTURES", "TRAINABLE", "DEAD_WINDOW_TOKENS", "GPT2_SMALL_RES_JB", "Edit",
           "l0", "mse", "explained_variance", "dead_fraction", "DeadLatentTracker", "ce_loss_recovered",
           "hook_width", "check_fits", "hook_activations", "feature_activations",
           "ablate", "clamp", "splice_hook", "splice_hooks", "replace_hook",
           "save_sae", "load_sae", "read_cfg", "load_cached_sae", "load_gpt2_small_res_jb"]
