"""The model you trained: checkpoints of the from-scratch courses, recognised from the file itself.

- **LLMs-from-scratch** ``GPTModel`` (rasbt/LLMs-from-scratch, ch04/ch05): ``tok_emb``, ``pos_emb``,
  ``trf_blocks.{i}.att.W_query/W_key/W_value/out_proj``, ``ff.layers.0/2``, ``norm1/norm2/final_norm``
  (``scale``/``shift``), ``out_head``; saved as ``torch.save(model.state_dict(), "model.pth")`` or as
  ``{"model_state_dict": ..., "optimizer_state_dict": ...}``.
- **nanoGPT** ``ckpt.pt`` (karpathy/nanoGPT train.py): ``{"model": ..., "model_args": ..., ...}``, with
  ``_orig_mod.`` before every name when the model was compiled; nn.Linear weights; ``bias=False`` models
  have no biases at all (they load here as zero biases: the same function); nn.GELU() is the exact GELU.
- **minGPT** (karpathy/minGPT): ``torch.save(model.state_dict(), path)``: nanoGPT's names, the causal
  mask as a buffer ``attn.bias``, an untied ``lm_head``, the tanh GELU.
- Hugging Face GPT-2 and our own folders go through ``weights.load``.

Safety: a ``.pt``/``.pth`` is read only by ``torch.load(weights_only=True)``, which rebuilds tensors and
plain containers and refuses every other Python object, so nothing in the file runs. nanoGPT's ``meta.pkl``
goes through ``plain_unpickle``, which admits dicts, lists, tuples, strings and numbers and no class at all.

What the shapes tell (vocabulary, width, context, layers, biases, tied head) is read from them; the
number of heads is not in them: it comes from the checkpoint's own config (nanoGPT), a config file (the
notebooks' ``GPT_CONFIG_124M`` as JSON), or ``n_head``; else a WeightsError says how to give it.
"""
from __future__ import annotations

import io
import json
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..text.tokenizer import CharTokenizer
from .config import GPT2Config
from .model import GPT2
from .weights import WeightsError, build_checked, hf_state_dict_to_ours, read_json

GPT2_VOCAB = 50257
# Beyond these a config is not a GPT-2 anyone trained on a laptop or a GPU box: refuse before allocating.
LIMITS = {"n_layer": 256, "n_embd": 16_384, "n_ctx": 131_072, "vocab_size": 1_048_576, "n_head": 1024}
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
FORMAT_NAMES = {"lfs": "LLMs-from-scratch GPTModel", "nanogpt": "nanoGPT checkpoint", "mingpt": "minGPT state dict",
                "hf": "Hugging Face GPT-2 state dict", "ours": "gpt2core state dict"}
# Other architectures, named by a tensor name they have and GPT-2 lacks: the message says what was found.
OTHER_ARCHITECTURES = [
    (r"(^|\.)layers\.\d+\.self_attn\.q_proj\.weight$", "a Llama-family model (Llama, Mistral, Qwen: q_proj/k_proj/v_proj)"),
    (r"(^|\.)gpt_neox\.", "a GPT-NeoX / Pythia model"),
    (r"(^|\.)encoder\.layer\.\d+\.attention\.", "a BERT-family encoder"),
    (r"(^|\.)decoder\.block\.\d+\.|(^|\.)encoder\.block\.\d+\.", "a T5 model"),
    (r"(^|\.)h\.\d+\.attn\.attention\.", "a GPT-Neo model"),
    (r"(^|\.)h\.\d+\.self_attention\.query_key_value\.", "a BLOOM / Falcon model"),
    (r"(^|\.)conv\d*\.weight$|(^|\.)fc\d*\.weight$", "a small convolutional or MLP network"),
]


@dataclass
class Loaded:
    """A checkpoint loaded into our GPT2, and what was recognised and assumed on the way."""
    model: GPT2
    format: str                                    # a key of FORMAT_NAMES
    notes: list[str] = field(default_factory=list)  # what was inferred, given or dropped, in words

    def summary(self) -> str:
        cfg, tok = self.model.config, self.model.tokenizer
        vocab = tok.describe() if tok is not None else "GPT-2's BPE, 50,257 tokens"
        return (f"{FORMAT_NAMES[self.format]}: {cfg.n_layer} layers, {cfg.n_head} heads, width {cfg.n_embd}, "
                f"context {cfg.n_ctx}, {self.model.num_params():,} parameters, vocabulary: {vocab}")


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"it names the Python object {module}.{name}; only plain data "
                                     f"(dicts, lists, strings, numbers) is read")


def plain_unpickle(data: bytes, source: str = "the pickle") -> object:
    """A pickle of plain data only (nanoGPT's meta.pkl); any class or function in it is refused, never
    imported, so no code runs."""
    try:
        return _PlainUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            UnicodeDecodeError, MemoryError, OverflowError) as e:
        raise WeightsError(f"{source}: not a pickle of plain data ({e})") from None


def _check_size(path: Path, max_bytes: int | None) -> None:
    if not path.is_file():
        raise WeightsError(f"{path}: file not found")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise WeightsError(f"{path}: {size / 1e6:,.1f} MB is over the limit of {max_bytes / 1e6:,.0f} MB")
    if size == 0:
        raise WeightsError(f"{path}: the file is empty")


def read_torch_file(path, max_bytes: int | None = None) -> object:
    """``torch.load(path, weights_only=True)``: tensors and plain containers, nothing that runs code.
    Memory-mapped where the file allows it, so a checkpoint's optimizer state is never read into memory."""
    path = Path(path)
    _check_size(path, max_bytes)
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e) and "zip" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)   # a legacy (not zip) file
    except pickle.UnpicklingError as e:
        if "GLOBAL" not in str(e):     # not a class or function refused: bytes that are no checkpoint
            why = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(\n\n|$)", str(e), re.S)
            raise WeightsError(f"{path}: refused: not a PyTorch checkpoint of tensors (truncated, or another "
                               f"kind of file? the safe reader stopped at: "
                               f"{(why.group(1) if why else str(e))[:120]})") from None
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" (it names the Python object {found.group(1)})" if found else ""
        raise WeightsError(
            f"{path}: refused: this file needs more than tensors and plain containers to load{what}, "
            f"and loading that would run code from the file. Save the weights alone: "
            f"torch.save(model.state_dict(), 'model.pth')") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, AttributeError,
            TypeError, IndexError, MemoryError) as e:
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint (truncated or another kind of "
                           f"file?): {type(e).__name__}: {str(e)[:200]}") from None


def read_vocabulary(path, max_bytes: int = 16_000_000) -> CharTokenizer:
    """A character vocabulary from nanoGPT's ``meta.pkl`` (``itos``/``stoi``), a JSON list of characters
    (or ``{"itos": [...]}``), or the training text itself: its sorted characters, the vocabulary nanoGPT's
    prepare.py and minGPT's chargpt build."""
    path = Path(path)
    _check_size(path, max_bytes)
    data = path.read_bytes()
    if path.suffix == ".pkl":
        meta = plain_unpickle(data, str(path))
        if not isinstance(meta, dict) or not isinstance(meta.get("itos") or meta.get("stoi"), dict):
            raise WeightsError(f"{path}: expected nanoGPT's meta.pkl, a dict with 'itos' or 'stoi'")
        if isinstance(meta.get("itos"), dict):
            itos = meta["itos"]
        else:
            itos = {i: s for s, i in meta["stoi"].items()}
        if sorted(itos) != list(range(len(itos))):
            raise WeightsError(f"{path}: 'itos' must number its characters 0..{len(itos) - 1}")
        chars = [itos[i] for i in range(len(itos))]
    elif path.suffix == ".json":
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise WeightsError(f"{path}: not valid JSON ({e})") from None
        chars = doc.get("itos") if isinstance(doc, dict) else doc
    else:
        try:
            chars = sorted(set(data.decode("utf-8")))
        except UnicodeDecodeError:
            raise WeightsError(f"{path}: a vocabulary is meta.pkl, a JSON list of characters, or the "
                               f"UTF-8 training text") from None
    try:
        return CharTokenizer(chars)
    except ValueError as e:
        raise WeightsError(f"{path}: {e}") from None


def read_config_file(path) -> dict:
    """A config JSON: the notebooks' GPT_CONFIG dict, nanoGPT's model_args, a Hugging Face config, or ours."""
    path = Path(path)
    _check_size(path, 1_000_000)
    doc = read_json(path)
    return doc.get("config", doc) if doc.get("format") == "gpt2core" else doc


# What each config spelling calls our fields.
CONFIG_KEYS = {"n_head": ("n_head", "n_heads", "num_attention_heads"),
               "n_layer": ("n_layer", "n_layers", "num_hidden_layers"),
               "n_embd": ("n_embd", "emb_dim", "hidden_size"),
               "n_ctx": ("n_ctx", "context_length", "block_size", "n_positions"),
               "vocab_size": ("vocab_size",)}


def config_values(doc: dict) -> dict:
    out = {}
    for ours, names in CONFIG_KEYS.items():
        for name in names:
            if name in doc:
                value = doc[name]
                if isinstance(value, bool) or not isinstance(value, int):
                    raise WeightsError(f"config: {name} must be a whole number, got {value!r}")
                out[ours] = value
                break
    return out


def _unwrap(obj, source: str) -> tuple[dict, dict | None, str | None]:
    """(state dict, nanoGPT's model_args or None, the format the wrapper tells) of a loaded file."""
    if not isinstance(obj, dict):
        raise WeightsError(f"{source}: expected a state dict (name -> tensor), found a {type(obj).__name__}")
    if "model_args" in obj and isinstance(obj.get("model"), dict):
        args = obj["model_args"]
        if not isinstance(args, dict):
            raise WeightsError(f"{source}: nanoGPT's model_args must be a dict")
        return obj["model"], args, "nanogpt"
    for key in ("model_state_dict", "state_dict", "model"):
        if isinstance(obj.get(key), dict):
            return obj[key], None, None
    return obj, None, None


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def detect(state: dict) -> str:
    """Which naming a state dict uses (a FORMAT_NAMES key), or a WeightsError naming what it looks like."""
    names = list(state)
    if any(k.startswith("trf_blocks.") for k in names) or "tok_emb.weight" in state:
        return "lfs"
    if any(k.startswith("blocks.") and ".attn.c_attn." in k for k in names):
        return "ours"
    c_attn = next((k for k in names if re.search(r"(^|\.)h\.0\.attn\.c_attn\.weight$", k)), None)
    if c_attn is not None:
        rows, cols = state[c_attn].shape
        if rows != 3 * cols:
            return "hf"                                      # HF's Conv1D stores (d, 3d); nn.Linear (3d, d)
        # minGPT keeps its causal mask as a buffer, (1, 1, ctx, ctx); nanoGPT (flash attention) has none.
        masks = any(k.endswith(".attn.bias") and state[k].dim() == 4 for k in names)
        return "mingpt" if masks else "nanogpt"
    for pattern, what in OTHER_ARCHITECTURES:
        hit = next((k for k in names if re.search(pattern, k)), None)
        if hit:
            raise WeightsError(f"this is not a GPT-2: it looks like {what} (it has tensors like {hit!r})")
    shown = ", ".join(repr(k) for k in names[:4]) or "no tensors at all"
    raise WeightsError(f"not a GPT-2 checkpoint this app knows (LLMs-from-scratch, nanoGPT, minGPT, Hugging "
                       f"Face, gpt2core): its tensors are named {shown}{'…' if len(names) > 4 else ''}")


def _lfs_to_ours(state: dict) -> dict:
    """LLMs-from-scratch names -> ours; W_query/W_key/W_value become one c_attn (q, k, v stacked)."""
    renames = [(r"^tok_emb\.", "wte."), (r"^pos_emb\.", "wpe."), (r"^final_norm\.scale$", "ln_f.weight"),
               (r"^final_norm\.shift$", "ln_f.bias"), (r"^out_head\.", "lm_head."),
               (r"^trf_blocks\.(\d+)\.norm1\.scale$", r"blocks.\1.ln_1.weight"),
               (r"^trf_blocks\.(\d+)\.norm1\.shift$", r"blocks.\1.ln_1.bias"),
               (r"^trf_blocks\.(\d+)\.norm2\.scale$", r"blocks.\1.ln_2.weight"),
               (r"^trf_blocks\.(\d+)\.norm2\.shift$", r"blocks.\1.ln_2.bias"),
               (r"^trf_blocks\.(\d+)\.att\.out_proj\.", r"blocks.\1.attn.c_proj."),
               (r"^trf_blocks\.(\d+)\.ff\.layers\.0\.", r"blocks.\1.mlp.c_fc."),
               (r"^trf_blocks\.(\d+)\.ff\.layers\.2\.", r"blocks.\1.mlp.c_proj.")]
    out, qkv = {}, {}
    for name, t in state.items():
        m = re.match(r"^trf_blocks\.(\d+)\.att\.W_(query|key|value)\.(weight|bias)$", name)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = t
            continue
        if re.match(r"^trf_blocks\.\d+\.att\.mask$", name):
            continue                                   # the causal mask buffer: we build the mask on the fly
        for pattern, repl in renames:
            if re.match(pattern, name):
                out[re.sub(pattern, repl, name)] = t
                break
        else:
            out[name] = t                              # unknown: check_state names it
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise WeightsError(f"block {layer}: W_query, W_key and W_value must all have a {kind}")
        out[f"blocks.{layer}.attn.c_attn.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
    return out


def _nanogpt_to_ours(state: dict) -> dict:
    """nanoGPT / minGPT names -> ours (their nn.Linear weights are already (out, in))."""
    out = {}
    for name, t in _strip(_strip(state, "_orig_mod."), "transformer.").items():
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue                                   # minGPT's causal mask buffer
        out[("blocks." + name[2:]) if name.startswith("h.") else name] = t
    return out


def _tensors(state: dict, source: str) -> dict:
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{source}: expected a state dict of tensors; {bad[0]!r} is not a named tensor")
    return state


def _shape_config(state: dict, source: str) -> dict:
    """Sizes read off the tensors (our names)."""
    for name in ("wte.weight", "wpe.weight"):
        if name not in state or state[name].dim() != 2:
            raise WeightsError(f"{source}: no {name} matrix: the embeddings are missing (truncated state dict?)")
    layers = {int(m.group(1)) for k in state for m in [re.match(r"^blocks\.(\d+)\.", k)] if m}
    if not layers:
        raise WeightsError(f"{source}: no transformer blocks found")
    if layers != set(range(len(layers))):
        raise WeightsError(f"{source}: the blocks are numbered {sorted(layers)[:8]}…, not 0..{len(layers) - 1} "
                           f"(a truncated or mixed-up checkpoint)")
    vocab, d = state["wte.weight"].shape
    if state["wpe.weight"].shape[1] != d:
        raise WeightsError(f"{source}: the token embedding is {d} wide but the position embedding "
                           f"{state['wpe.weight'].shape[1]}")
    return {"vocab_size": vocab, "n_embd": d, "n_ctx": state["wpe.weight"].shape[0], "n_layer": len(layers)}


def load_checkpoint(path, config: dict | str | Path | None = None, n_head: int | None = None,
                    vocab=None, max_bytes: int | None = None) -> Loaded:
    """Load a ``.pt``/``.pth`` of any format above into our GPT2, with its tokenizer on ``model.tokenizer``.

    ``config``: a dict or JSON file (GPT_CONFIG_124M, model_args, a HF config); else a ``config.json`` or
    ``<name>.json`` beside the file is read. ``n_head`` wins over both. ``vocab``: a CharTokenizer, a list
    of characters, or a file for ``read_vocabulary`` (meta.pkl, JSON, the training text); else a
    ``meta.pkl`` beside the file. Without one the vocabulary is GPT-2's BPE (a larger one is taken as
    GPT-2's padded to a round size; its extra rows are dropped)."""
    path = Path(path)
    source = str(path)
    notes: list[str] = []
    raw, model_args, wrapper = _unwrap(read_torch_file(path, max_bytes), source)
    state = _tensors(raw, source)
    kind = wrapper or detect(state)
    if kind == "lfs":
        state = _lfs_to_ours(state)
    elif kind in ("nanogpt", "mingpt"):
        state = _nanogpt_to_ours(state)
    elif kind == "hf":
        state = hf_state_dict_to_ours(state)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    sizes = _shape_config(state, source)

    # The config: the checkpoint's own, a file given or found beside it, then n_head.
    given: dict = {}
    if model_args is not None:
        given = config_values(model_args)
        notes.append("sizes and heads from the checkpoint's model_args")
    if config is None:
        for candidate in (path.with_suffix(".json"), path.parent / "config.json"):
            if candidate.is_file():
                config = candidate
                notes.append(f"config from {candidate.name} beside the checkpoint")
                break
    elif not isinstance(config, dict):
        notes.append(f"config from {Path(config).name}")
    if config is not None:
        given = {**given, **config_values(config if isinstance(config, dict) else read_config_file(config))}
    if n_head is not None:
        if isinstance(n_head, bool) or not isinstance(n_head, int) or n_head < 1:
            raise WeightsError(f"the number of heads must be a positive whole number, got {n_head!r}")
        given["n_head"] = n_head
        notes.append(f"{n_head} heads, as given")
    for key in ("n_layer", "n_embd", "n_ctx"):
        if key in given and given[key] != sizes[key]:
            raise WeightsError(f"{source}: the config says {key}={given[key]} but the tensors have {sizes[key]}")
    if "n_head" not in given:
        raise WeightsError(f"{source}: the number of attention heads is not in the file (its tensors are "
                           f"{sizes['n_embd']} wide, which many head counts divide). Give it: the config the "
                           f"model was built with (e.g. GPT_CONFIG_124M saved as JSON, with n_heads), or "
                           f"--n-head N (in Python: n_head=N)")
    heads = given["n_head"]
    for key, value in {**sizes, "n_head": heads}.items():
        if value > LIMITS[key]:
            raise WeightsError(f"{source}: {key}={value:,} is beyond what this app loads ({LIMITS[key]:,})")
    if sizes["n_embd"] % heads:
        raise WeightsError(f"{source}: {heads} heads do not divide the width {sizes['n_embd']}")

    # The vocabulary: the model's own characters, else GPT-2's BPE (padded or not).
    tok = _vocabulary(vocab, path, notes)
    n_real = tok.n_vocab if tok is not None else GPT2_VOCAB
    if sizes["vocab_size"] < n_real:
        if tok is None:
            raise WeightsError(f"{source}: a vocabulary of {sizes['vocab_size']:,} tokens is not GPT-2's "
                               f"({GPT2_VOCAB:,}). Give the model's own: nanoGPT's meta.pkl, or the training "
                               f"text whose characters it was built from")
        raise WeightsError(f"{source}: the vocabulary file has {tok.n_vocab} characters but the model only "
                           f"{sizes['vocab_size']} rows")
    if sizes["vocab_size"] > n_real:
        # nanoGPT pads GPT-2's 50,257 to 50,304 (a multiple of 64) for speed; those rows are never a token.
        dropped = sizes["vocab_size"] - n_real
        for name in ("wte.weight", "lm_head.weight"):
            if name in state:
                state[name] = state[name][:n_real]
        notes.append(f"vocabulary padded to {sizes['vocab_size']:,}: the {dropped} unused rows are dropped, "
                     f"so they are never sampled or shown")

    tied = "lm_head.weight" not in state or torch.equal(state["lm_head.weight"], state["wte.weight"])
    qkv_bias = any(k.endswith("attn.c_attn.bias") for k in state)
    activation = "gelu" if kind == "nanogpt" else "gelu_tanh"
    cfg = GPT2Config(vocab_size=n_real, n_ctx=sizes["n_ctx"], n_embd=sizes["n_embd"], n_head=heads,
                     n_layer=sizes["n_layer"], dropout=0.0, qkv_bias=qkv_bias, tie_weights=tied,
                     activation=activation)
    if kind in ("nanogpt", "mingpt", "lfs"):
        added = _zero_biases(state, cfg)
        if added:
            notes.append(f"no biases in the checkpoint (bias=False): {added} zero biases added, the same function")
    notes.append("exact GELU (nn.GELU, as nanoGPT)" if activation == "gelu" else "tanh GELU (as GPT-2)")
    if not tied:
        notes.append("untied output head")
    model = build_checked(cfg, state, source).eval()
    model.tokenizer = tok
    return Loaded(model, kind, notes)


def _zero_biases(state: dict, cfg: GPT2Config) -> int:
    """Biases a bias=False model lacks, as zeros (LayerNorm and Linear layers: y + 0 is y)."""
    d = cfg.n_embd
    wanted = {"ln_f.bias": d}
    for i in range(cfg.n_layer):
        wanted.update({f"blocks.{i}.ln_1.bias": d, f"blocks.{i}.ln_2.bias": d, f"blocks.{i}.attn.c_proj.bias": d,
                       f"blocks.{i}.mlp.c_fc.bias": 4 * d, f"blocks.{i}.mlp.c_proj.bias": d})
    missing = [k for k in wanted if k not in state and k.rsplit(".", 1)[0] + ".weight" in state]
    for k in missing:
        state[k] = torch.zeros(wanted[k])
    return len(missing)


def _vocabulary(vocab, path: Path, notes: list[str]) -> CharTokenizer | None:
    if vocab is None:
        beside = path.parent / "meta.pkl"
        if not beside.is_file():
            return None
        vocab = beside
        notes.append("characters from meta.pkl beside the checkpoint")
    if isinstance(vocab, CharTokenizer):
        return vocab
    if isinstance(vocab, (list, tuple)):
        try:
            return CharTokenizer(vocab)
        except ValueError as e:
            raise WeightsError(str(e)) from None
    tok = read_vocabulary(vocab)
    notes.append(f"vocabulary of {tok.n_vocab} characters from {Path(vocab).name}")
    return tok
