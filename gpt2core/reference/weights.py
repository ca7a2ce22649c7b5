"""Loading and saving weights. Safetensors and JSON only: no pickle, so no code from a file runs.

Two formats on disk, both a folder with ``config.json`` and ``model.safetensors``:
- Hugging Face GPT-2 (``save_pretrained`` and the Hub's ``openai-community/gpt2``): HF config keys,
  tensor names ``[transformer.]h.{i}.attn.c_attn.weight`` ..., Conv1D weights stored (in, out).
- our own: ``{"format": "gpt2core", "config": {...}}`` and our parameter names, stored as they are.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..text.tokenizer import tokenizer_from_dict
from .config import GPT2Config
from .model import GPT2

OWN_FORMAT = "gpt2core"
TOKENIZER_KEY = "gpt2core_tokenizer"   # in config.json: a model's own vocabulary (absent: GPT-2's BPE)
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
PICKLE_SUFFIXES = (".pkl",)          # refused outright: a plain pickle can run code
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")   # read with torch.load(weights_only=True) (formats.py)
# Conv1D layers in HF GPT-2 keep their weight as (in, out); nn.Linear wants (out, in).
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
HF_TANH_GELUS = {"gelu_new", "gelu_pytorch_tanh", "gelu_fast"}


class WeightsError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and what is wrong."""


def read_json(path: Path) -> dict:
    """A JSON object from a file, or a WeightsError naming the file."""
    if not path.is_file():
        raise WeightsError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: expected a JSON object")
    return data


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightsError(f"{path}: corrupt or not a safetensors file ({e})") from None


def hf_config_to_ours(hf: dict, source: str = "config.json") -> GPT2Config:
    """Map a Hugging Face GPT2Config dict to ours, refusing variants this model doesn't implement."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise WeightsError(f"{source}: model_type {hf.get('model_type')!r} is not gpt2")
    problems = []
    n_embd = hf.get("n_embd", 768)
    if hf.get("n_inner") not in (None, 4 * n_embd):
        problems.append(f"n_inner={hf['n_inner']} (only 4*n_embd)")
    act = hf.get("activation_function", "gelu_new")
    if act not in HF_TANH_GELUS and act != "gelu":
        problems.append(f"activation_function={act!r} (only GELU, tanh or exact)")
    for flag, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                     ("add_cross_attention", False)):
        if hf.get(flag, ok) != ok:
            problems.append(f"{flag}={hf[flag]}")
    if problems:
        raise WeightsError(f"{source}: unsupported GPT-2 variant: {', '.join(problems)}")
    dropouts = {hf.get(k, 0.1) for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}
    try:
        return GPT2Config(vocab_size=hf.get("vocab_size", 50257), n_ctx=hf.get("n_positions", 1024),
                          n_embd=n_embd, n_head=hf.get("n_head", 12), n_layer=hf.get("n_layer", 12),
                          dropout=float(max(dropouts)), qkv_bias=True,
                          tie_weights=bool(hf.get("tie_word_embeddings", True)),
                          layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
                          activation="gelu" if act == "gelu" else "gelu_tanh")
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{source}: invalid config ({e})") from None


def hf_state_dict_to_ours(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename HF GPT-2 tensors to ours and transpose the Conv1D weights."""
    out = {}
    for name, t in tensors.items():
        if name.startswith("transformer."):
            name = name[len("transformer."):]
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # the causal-mask buffer of older checkpoints; we build the mask on the fly
        if name.startswith("h."):
            name = "blocks." + name[2:]
        if name.endswith(CONV1D_SUFFIXES):
            t = t.t()
        out[name] = t.contiguous()
    return out


def build_checked(cfg: GPT2Config, state: dict[str, torch.Tensor], source: str) -> GPT2:
    """A GPT2 of ``cfg`` holding ``state``. Names and shapes are checked on a meta-device model first,
    so a config that disagrees with the tensors (say, one asking for a vocabulary of 10**12) is a
    WeightsError naming ``source``, never an attempt to allocate that model."""
    with torch.device("meta"):
        state = check_state(GPT2(cfg, init_weights=False), state, source)
    return _copy_into(GPT2(cfg, init_weights=False), state)   # every tensor is overwritten


def check_state(model: GPT2, state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The tensors of ``state`` that ``model`` takes, after checking names, shapes and values."""
    expected = _expected(model)
    if model.config.tie_weights and "lm_head.weight" in state and "wte.weight" in state \
            and torch.equal(state["lm_head.weight"], state["wte.weight"]):
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise WeightsError(f"{source}: tensor names do not match the config: "
                           f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                           f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if state[k].shape != v.shape]
    if wrong:
        raise WeightsError(f"{source}: wrong shapes for the config: {'; '.join(wrong[:5])}")
    bad = [k for k, t in state.items() if not t.is_floating_point() or not torch.isfinite(t).all()]
    if bad:
        raise WeightsError(f"{source}: non-finite or non-float values in {bad[:5]}")
    return state


def _expected(model: GPT2) -> dict[str, torch.Tensor]:
    """The model's tensors by name; a tied head is the token embedding, so it is not asked for."""
    expected = dict(model.state_dict())
    if model.config.tie_weights:
        expected.pop("lm_head.weight")
    return expected


def _copy_into(model: GPT2, state: dict[str, torch.Tensor]) -> GPT2:
    with torch.no_grad():
        for k, v in _expected(model).items():
            v.copy_(state[k].to(v.dtype))
    return model


def load_hf(folder) -> GPT2:
    """Load a Hugging Face GPT-2 folder (config.json + model.safetensors)."""
    folder = Path(folder)
    _refuse_pickle(folder)
    doc = read_json(folder / CONFIG_FILE)
    cfg = hf_config_to_ours(doc, str(folder / CONFIG_FILE))
    state = hf_state_dict_to_ours(_read_tensors(folder / WEIGHTS_FILE))
    return _with_tokenizer(build_checked(cfg, state, str(folder / WEIGHTS_FILE)).eval(), doc, folder)


def save(model: GPT2, folder, dtype: torch.dtype | None = None, metadata: dict | None = None) -> Path:
    """Write our own format. ``dtype=torch.float16`` halves the file; loading casts back to fp32."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(dtype or v.dtype).contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_weights:
        state.pop("lm_head.weight")  # the same tensor as wte.weight
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": OWN_FORMAT})
    doc = {"format": OWN_FORMAT, "config": model.config.to_dict(), **(metadata or {})}
    if getattr(model, "tokenizer", None) is not None:
        doc[TOKENIZER_KEY] = model.tokenizer.to_dict()
    (folder / CONFIG_FILE).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return folder


def _refuse_pickle(path: Path) -> None:
    if path.is_file() and path.suffix in PICKLE_SUFFIXES:
        raise WeightsError(f"{path}: pickle checkpoints are refused (they can run code); "
                           f"use a folder with {CONFIG_FILE} and {WEIGHTS_FILE}")


def load(path, config=None, n_head: int | None = None, vocab=None, max_bytes: int | None = None) -> GPT2:
    """Load a checkpoint folder of either format (or its config.json / model.safetensors), or the ``.pth`` /
    ``.pt`` of a from-scratch course (LLMs-from-scratch, nanoGPT, minGPT: gpt2core.reference.formats, which
    takes ``config``, ``n_head``, ``vocab`` and ``max_bytes``). The model's vocabulary is ``model.tokenizer``."""
    path = Path(path)
    if path.is_file() and path.suffix in TORCH_SUFFIXES:
        from .formats import load_checkpoint
        return load_checkpoint(path, config, n_head, vocab, max_bytes).model
    _refuse_pickle(path)
    if path.is_file() and path.name not in (CONFIG_FILE, WEIGHTS_FILE):
        # Never fall back to the folder's other files: that would load a model the user didn't name.
        raise WeightsError(f"{path}: not a checkpoint file; give the checkpoint folder, "
                           f"or its {CONFIG_FILE} or {WEIGHTS_FILE}")
    folder = path.parent if path.is_file() else path
    if not folder.is_dir():
        raise WeightsError(f"{path}: no such checkpoint folder")
    doc = read_json(folder / CONFIG_FILE)
    if doc.get("format") != OWN_FORMAT:
        return load_hf(folder)
    try:
        cfg = GPT2Config.from_dict(doc["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{folder / CONFIG_FILE}: invalid config ({e})") from None
    state = {k: v.float() for k, v in _read_tensors(folder / WEIGHTS_FILE).items()}
    return _with_tokenizer(build_checked(cfg, state, str(folder / WEIGHTS_FILE)).eval(), doc, folder)


def _with_tokenizer(model: GPT2, doc: dict, folder: Path) -> GPT2:
    """A model's own vocabulary, kept in config.json under TOKENIZER_KEY (a character-level model's)."""
    try:
        model.tokenizer = tokenizer_from_dict(doc.get(TOKENIZER_KEY))
    except ValueError as e:
        raise WeightsError(f"{folder / CONFIG_FILE}: {e}") from None
    if model.tokenizer is not None and model.tokenizer.n_vocab != model.config.vocab_size:
        raise WeightsError(f"{folder / CONFIG_FILE}: {model.tokenizer.n_vocab} characters for a vocabulary of "
                           f"{model.config.vocab_size}")
    return model


def read_metadata(folder) -> dict:
    """config.json of our format, without loading tensors (for the model card and the UI)."""
    return read_json(Path(folder) / CONFIG_FILE)


HUB_FILES = (CONFIG_FILE, WEIGHTS_FILE)


def cached_hf(repo_id: str = "openai-community/gpt2") -> Path | None:
    """The snapshot folder of ``repo_id`` in the local Hugging Face cache when both files are there, else None.

    Reads the cache only (``HF_HUB_CACHE``, else ``HF_HOME``/hub): no network, so it answers offline."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = [try_to_load_from_cache(repo_id, name) for name in HUB_FILES]
    if not all(isinstance(f, str) and Path(f).is_file() for f in found):
        return None
    folders = {Path(f).parent for f in found}
    return folders.pop() if len(folders) == 1 else None   # both files of one revision


def _byte_progress(progress, start: float, span: float, label: str):
    """A tqdm class for hf_hub_download that prints its bar as usual and reports the bytes to ``progress``,
    mapped onto [start, start + span] of the whole download."""
    from tqdm.auto import tqdm

    class Reporting(tqdm):
        received = 0   # counted here: a disabled bar (HF_HUB_DISABLE_PROGRESS_BARS) leaves self.n at 0

        def update(self, n=1):
            shown = super().update(n)
            self.received += n or 0
            if self.total:
                progress(start + span * min(self.received / self.total, 1.0),
                         f"downloading {label}: {self.received / 1e6:,.1f} of {self.total / 1e6:,.1f} MB")
            return shown

    return Reporting


def download_hf(repo_id: str = "openai-community/gpt2", progress=None) -> Path:
    """The folder of config.json and model.safetensors: from the local cache when they are there (no
    network at all), else fetched from the Hub into that cache; only ever called on request.

    ``progress(fraction, message)`` is called before each file and as its bytes arrive. Raises
    WeightsError with a plain message when the Hub can't be reached.
    """
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise WeightsError("huggingface_hub is not installed: pip install huggingface_hub") from None
    cached = cached_hf(repo_id)
    if cached is not None:
        if progress:
            progress(1.0, f"{repo_id} found in the local Hugging Face cache ({cached})")
        return cached
    _check_hub_reachable()
    paths = []
    # config.json is a few hundred bytes; the weights are the whole wait, so they get 98% of the bar.
    for name, start, span in ((CONFIG_FILE, 0.0, 0.02), (WEIGHTS_FILE, 0.02, 0.98)):
        if progress:
            progress(start, f"downloading {repo_id}/{name}")
        try:
            tqdm_class = _byte_progress(progress, start, span, f"{repo_id}/{name}") if progress else None
            paths.append(Path(hf_hub_download(repo_id, name, tqdm_class=tqdm_class)))
        except Exception as e:  # network, auth, missing repo: all mean "can't get it from here"
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            raise WeightsError(f"could not download {repo_id}/{name} from the Hugging Face Hub"
                               f"{' (HF_HUB_OFFLINE=1 is set)' if offline else ''}: {type(e).__name__}: {e}"
                               ) from None
    if progress:
        progress(1.0, f"downloaded {repo_id}")
    return paths[0].parent


def _check_hub_reachable(timeout: float = 3.0) -> None:
    """Fail in seconds, not after the Hub client's long retries, when the Hub can't be reached."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return  # the client itself answers from its cache or fails at once
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
    except OSError as e:
        raise WeightsError(f"the Hugging Face Hub ({url.hostname}) can't be reached from this machine: {e}") from None


def load_from_hub(repo_id: str = "openai-community/gpt2", progress=None) -> GPT2:
    return load_hf(download_hf(repo_id, progress))
