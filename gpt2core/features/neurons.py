"""MLP neurons: which ones fire on a token, and what each one fires on over a corpus.

A neuron is one of the 4d outputs of a block's GELU, the hook ``blocks.{L}.mlp.hook_post`` (B, T, 4d).

    neuron_activations(model, ids, layer)            (T, 4d) the GELU outputs over a prompt
    top_neurons_at(model, ids, layer, position, k)   [(layer, neuron, activation)], largest first
    default_corpus(model, text=None)                 the corpus ids: the bundled held-out Shakespeare, or text
    build_index(model, ids, cache_dir=..., progress=...) -> NeuronIndex, built once and cached on disk

The corpus index keeps, for every layer and neuron, its k largest activations over the corpus, a few
examples from quantile bands of its positive activations (50-70th, 70-90th, 90-99th percentile), so a
student sees more than the extremes, and a histogram of all its activations in fixed bins. It streams the
corpus through the model in batches of windows and keeps running state only (top-k merged with
torch.topk, a uniform reservoir of positive activations, histogram counts), so memory does not grow with
the corpus. It stores the corpus ids once and, per example, only (position, activation): a context is
cut from the stored ids around the position (``NeuronIndex.context``).

At the defaults (k=16, 3 bands x 3 examples, 48 bins, the 16,384-token held-out corpus in windows of the
model's context) the index of the bundled model (6 x 512 neurons) takes 0.85 MB on disk and builds in 1.2 s;
GPT-2 124M's (12 x 3,072 neurons) takes 9.4 MB and builds in 30 s (random weights, the same shapes), peak
memory 1.7 GB with the model (``index_nbytes`` gives the size for any model; the times were measured with torch
on 2 threads of a 2-core AMD EPYC). Read back from the cache: 0.03 s, and 0.6 s for GPT-2 124M (hashing its
weights to find the entry).

The cache: one folder per (model weights, corpus ids, settings) under ``default_cache_dir()``
($GPT2_EXPLORER_NEURON_CACHE, else $GPT2_EXPLORER_CACHE/neurons, else ~/.cache/gpt2-explorer/neurons),
holding index.npz and meta.json. An index above MAX_INDEX_BYTES is built but not cached; after writing,
the least recently used indexes beyond MAX_CACHE_BYTES in all are deleted.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..analysis.trace import DEFAULT_WEIGHTS
from ..text import tokenizer

FORMAT_VERSION = 1
KIND = "gpt2core-neuron-index"           # meta.json says so: eviction deletes only folders that say it
HOOK = "blocks.{}.mlp.hook_post"         # (B, T, 4d) the GELU output
TOP_K = 16                               # top activations kept per neuron
QUANTILES = (0.50, 0.70, 0.90, 0.99)     # band edges over a neuron's positive activations: 3 bands
SAMPLES_PER_BAND = 3
RESERVOIR = 96                           # uniform sample of positive activations the bands are drawn from:
                                         # ~8.6 land in the 9%-wide top band, so 3 are nearly always there
DEFAULT_CORPUS_TOKENS = 16_384           # the bundled model card's held-out text is exactly this long
BATCH_TOKENS = 1024                      # tokens per forward: the captured activations are this x all neurons x 4 B
MAX_INDEX_BYTES = 200 * 2**20            # an index above this is not cached
MAX_CACHE_BYTES = 2**30                  # all cached indexes together; the least recently used go first
CACHE_ENV = "GPT2_EXPLORER_NEURON_CACHE"
HELDOUT_TEXT = DEFAULT_WEIGHTS / "heldout.txt"
# Histogram bins, the same for every neuron so the streaming needs no first pass: GELU's output is
# >= -0.17, so 7 linear bins cover the negative side; the positive side, where a neuron "fires", spans
# decades (0.001 to 100, 8 bins a decade) with one bin (0, 0.001] below. The edges lie on the bfloat16 grid
# and the counts are of the activations rounded to bfloat16 (3 significant digits): a value's bin is then a
# lookup of its 16 bits, several times faster than a search over the edges. Bin b is (E[b], E[b+1]]; values
# below E[0] or above E[-1] are counted in the first or last bin. 48 bins.
HIST_EDGES = torch.tensor(np.concatenate([np.linspace(-0.175, 0.0, 8), np.geomspace(1e-3, 1e2, 41)]),
                          dtype=torch.float32).bfloat16().float().numpy()
N_BINS = len(HIST_EDGES) - 1
FIRST_POSITIVE_BIN = 7                   # bins from here on hold exactly the activations > 0

Progress = Callable[[float, str], None]


# ---- a prompt's neurons ---------------------------------------------------------------------------

def _check_layer(model, layer: int) -> int:
    n = model.config.n_layer
    if not -n <= layer < n:
        raise ValueError(f"layer {layer} out of range for a model of {n} layers")
    return layer % n


def neuron_activations(model, ids, layer: int) -> torch.Tensor:
    """(T, 4d) float32 on the CPU: layer ``layer``'s GELU outputs at every position of ``ids`` (T,)."""
    layer = _check_layer(model, layer)
    _, cache = model.run_with_cache(ids, names=[HOOK.format(layer)], last_only=True)   # no logits needed
    return cache[HOOK.format(layer)].float().cpu()                                       # (T, 4d)


def top_neurons_at(model, ids, layer: int | None, position: int, k: int = 10) -> list[tuple[int, int, float]]:
    """The k neurons that fire most on token ``position`` of ``ids`` (negative counts from the end), in one
    layer or (``layer=None``) in all: [(layer, neuron, activation)], largest activation first."""
    layers = list(range(model.config.n_layer)) if layer is None else [_check_layer(model, layer)]
    T = len(ids)
    if not -T <= position < T:
        raise ValueError(f"position {position} out of range for {T} tokens")
    _, cache = model.run_with_cache(ids, names=[HOOK.format(L) for L in layers], last_only=True)
    acts = torch.stack([cache[HOOK.format(L)][position] for L in layers]).float().cpu()  # (n_layers, 4d)
    n = acts.shape[1]
    vals, flat = acts.flatten().topk(min(k, acts.numel()))                              # (k,)
    rows = [(layers[i // n], i % n, v) for i, v in zip(flat.tolist(), vals.tolist())]
    return sorted(rows, key=lambda r: (-r[2], r[0], r[1]))   # ties in a fixed order


# ---- the corpus ------------------------------------------------------------------------------------

def encode_for(model, text: str) -> np.ndarray:
    """``text`` as the model's token ids (int32), with the model's own vocabulary if it has one;
    characters a character vocabulary lacks are left out (as the app does with a prompt)."""
    own = getattr(model, "tokenizer", None)
    with tokenizer.using(own):
        if own is not None:
            text = "".join(c for c in tokenizer.clean_text(text) if c in own.stoi)
        return np.asarray(tokenizer.encode(text), dtype=np.int32)


def default_corpus(model, text: str | None = None, max_tokens: int | None = DEFAULT_CORPUS_TOKENS) -> np.ndarray:
    """The corpus ids (int32) an index is built over: ``text`` if given, else the held-out Shakespeare of
    the bundled model's card (checkpoints/shakespeare/heldout.txt: the first 16,384 tokens of its
    validation split, never trained on). A GPT-2 BPE model gets exactly the card's ids; a model with
    its own character vocabulary gets the same text in its characters. At most ``max_tokens`` (None: all)."""
    ids = encode_for(model, HELDOUT_TEXT.read_text(encoding="utf-8") if text is None else text)
    return ids if max_tokens is None else ids[:max_tokens]


# ---- fingerprints and the cache ---------------------------------------------------------------------

def model_fingerprint(model) -> str:
    """sha256 of what sets the activations: the config, the matrix-product precision and every weight
    (hashed in place, as fp32, once per tensor even when tied)."""
    h = hashlib.sha256(json.dumps([model.config.to_dict(), getattr(model, "precision", "fp32")],
                                  sort_keys=True).encode())
    seen = set()
    with torch.no_grad():
        for name, t in sorted(model.state_dict(keep_vars=False).items()):
            key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()))
            if key in seen:
                continue
            seen.add(key)
            h.update(name.encode())
            h.update(t.detach().float().cpu().contiguous().numpy())   # the buffer itself, no bytes copy
    return h.hexdigest()


def corpus_fingerprint(ids) -> str:
    return hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int32)).hexdigest()


def default_cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    root = os.environ.get("GPT2_EXPLORER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "gpt2-explorer")
    return Path(root) / "neurons"


def _count_dtype(n_tokens: int):
    # A bin never counts more than the corpus has tokens: uint16 halves the histograms of a short corpus.
    return np.uint16 if n_tokens <= np.iinfo(np.uint16).max else np.uint32


def _array_shapes(n_layer: int, n_neurons: int, n_tokens: int, k: int, n_bands: int, per_band: int) -> dict:
    """name -> (shape, dtype) of every array in index.npz."""
    L, N = n_layer, n_neurons
    return {"corpus": ((n_tokens,), np.int32),
            "top_pos": ((L, N, k), np.int32), "top_act": ((L, N, k), np.float16),
            "band_pos": ((L, N, n_bands, per_band), np.int32), "band_act": ((L, N, n_bands, per_band), np.float16),
            "band_edges": ((L, N, n_bands + 1), np.float16),
            "hist": ((L, N, N_BINS), _count_dtype(n_tokens)), "hist_edges": ((N_BINS + 1,), np.float32)}


_NPY_OVERHEAD = 512      # per array: zip local and central headers and the .npy header, both bounded
_META_BOUND = 16 * 1024  # meta.json


def index_nbytes(n_layer: int, n_neurons: int, n_tokens: int, k: int = TOP_K,
                 n_bands: int = len(QUANTILES) - 1, per_band: int = SAMPLES_PER_BAND) -> int:
    """An upper bound on the bytes an index takes on disk (index.npz, uncompressed, + meta.json), known
    before anything is computed: activations float16, positions int32, counts uint16 or uint32."""
    shapes = _array_shapes(n_layer, n_neurons, n_tokens, k, n_bands, per_band)
    data = sum(int(np.prod(s)) * np.dtype(d).itemsize for s, d in shapes.values())
    return data + _NPY_OVERHEAD * len(shapes) + _META_BOUND


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def cached_indexes(cache_dir) -> list[Path]:
    """The index folders in ``cache_dir``, least recently used first (meta.json's mtime, touched on reuse)."""
    cache_dir = Path(cache_dir)
    found = []
    for meta in cache_dir.glob("*/meta.json") if cache_dir.is_dir() else ():
        if meta.parent.name.startswith("."):
            continue   # one being written
        try:
            if json.loads(meta.read_text(encoding="utf-8")).get("kind") == KIND:
                found.append((meta.stat().st_mtime, meta.parent))
        except (OSError, ValueError):
            continue   # half-written or foreign: never ours to delete
    return [p for _, p in sorted(found)]


def evict(cache_dir, max_total_bytes: int = MAX_CACHE_BYTES, keep: Path | None = None) -> list[Path]:
    """Delete the least recently used indexes until all of them take at most ``max_total_bytes``
    (``keep`` is never deleted). Returns the folders deleted."""
    folders = cached_indexes(cache_dir)
    sizes = {p: _folder_bytes(p) for p in folders}
    total, gone = sum(sizes.values()), []
    for p in folders:
        if total <= max_total_bytes:
            break
        if keep is not None and p.resolve() == Path(keep).resolve():
            continue
        shutil.rmtree(p, ignore_errors=True)
        total -= sizes[p]
        gone.append(p)
    return gone


# ---- the index ---------------------------------------------------------------------------------------

@dataclass
class NeuronIndex:
    """Per layer L and neuron n: top_pos/top_act[L, n] (k,) largest first; band_pos/band_act[L, n, b]
    (per_band,) examples whose activation lies in band b, band_edges[L, n, b:b+2] (that band's estimated
    quantiles of the positive activations); hist[L, n] (N_BINS,) counts over hist_edges. Positions index
    ``corpus``; -1 pads where there are fewer examples (a neuron that is never positive has no examples and NaN
    band edges)."""
    corpus: np.ndarray           # (n_tokens,) int32
    window: int                  # the corpus was run in windows [i*window, (i+1)*window)
    top_pos: np.ndarray          # (L, N, k) int32
    top_act: np.ndarray          # (L, N, k) float16
    band_pos: np.ndarray         # (L, N, n_bands, per_band) int32
    band_act: np.ndarray         # (L, N, n_bands, per_band) float16
    band_edges: np.ndarray       # (L, N, n_bands + 1) float16
    hist: np.ndarray             # (L, N, N_BINS) uint16/uint32
    hist_edges: np.ndarray       # (N_BINS + 1,) float32
    quantiles: tuple = QUANTILES
    meta: dict = field(default_factory=dict)
    path: Path | None = None     # the cache folder it was read from or written to, None if not cached
    from_cache: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        return self.top_pos.shape[:2]

    def top(self, layer: int, neuron: int) -> list[tuple[int, float]]:
        """[(position, activation)], largest first."""
        return [(int(p), float(a)) for p, a in zip(self.top_pos[layer, neuron], self.top_act[layer, neuron]) if p >= 0]

    def bands(self, layer: int, neuron: int) -> list[dict]:
        """Per band: its quantiles (lo, hi), their estimated activations and the examples [(position, activation)]."""
        out, e = [], self.band_edges[layer, neuron]
        for b in range(len(self.quantiles) - 1):
            ex = [(int(p), float(a)) for p, a in zip(self.band_pos[layer, neuron, b], self.band_act[layer, neuron, b])
                  if p >= 0]
            out.append({"quantiles": (self.quantiles[b], self.quantiles[b + 1]),
                        "activations": (float(e[b]), float(e[b + 1])), "examples": ex})
        return out

    def histogram(self, layer: int, neuron: int) -> tuple[np.ndarray, np.ndarray]:
        """(counts (N_BINS,), edges (N_BINS + 1,)): bin b is (edges[b], edges[b+1]]."""
        return self.hist[layer, neuron].astype(np.int64), self.hist_edges

    def n_positive(self, layer: int, neuron: int) -> int:
        return int(self.hist[layer, neuron, FIRST_POSITIVE_BIN:].astype(np.int64).sum())

    def context(self, position: int, before: int = 12, after: int = 4) -> tuple[list[int], int]:
        """The ids around ``position`` that the model saw with it (never across its window's start: the
        model did not see those) and the position's index in them."""
        start = max(position // self.window * self.window, position - before)
        end = min((position // self.window + 1) * self.window, position + after + 1, len(self.corpus))
        return self.corpus[start:end].tolist(), position - start

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.corpus, self.top_pos, self.top_act, self.band_pos, self.band_act,
                                      self.band_edges, self.hist, self.hist_edges))

    # -- on disk
    def save(self, folder) -> Path:
        """index.npz + meta.json, written beside and renamed into place, so a reader never sees half."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
        try:
            np.savez(tmp / "index.npz", corpus=self.corpus, top_pos=self.top_pos, top_act=self.top_act,
                     band_pos=self.band_pos, band_act=self.band_act, band_edges=self.band_edges, hist=self.hist,
                     hist_edges=self.hist_edges)
            meta = {**self.meta, "kind": KIND, "format": FORMAT_VERSION, "window": self.window,
                    "quantiles": list(self.quantiles)}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
            try:
                os.replace(tmp, folder)
            except OSError:
                if not (folder / "meta.json").is_file():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)   # another process wrote the same index first: theirs stands
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.path = folder
        return folder

    @classmethod
    def load(cls, folder) -> "NeuronIndex":
        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        if meta.get("kind") != KIND or meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{folder}: not a neuron index of format {FORMAT_VERSION}")
        with np.load(folder / "index.npz", allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
        return cls(window=int(meta["window"]), quantiles=tuple(meta["quantiles"]), meta=meta, path=folder,
                   from_cache=True, **arrays)


def index_key(model_fp: str, corpus_fp: str, settings: dict) -> str:
    blob = json.dumps({"format": FORMAT_VERSION, "model": model_fp, "corpus": corpus_fp, **settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def build_index(model, ids=None, *, k: int = TOP_K, window: int | None = None, cache_dir=None,
                use_cache: bool = True, progress: Progress | None = None, batch_tokens: int = BATCH_TOKENS,
                per_band: int = SAMPLES_PER_BAND, seed: int = 0, max_index_bytes: int = MAX_INDEX_BYTES,
                max_cache_bytes: int = MAX_CACHE_BYTES) -> NeuronIndex:
    """The neuron index of ``model`` over the corpus ``ids`` (default: ``default_corpus(model)``), read from
    ``cache_dir`` (default ``default_cache_dir()``) when that model and corpus were indexed with these
    settings before, else built and written there (unless above ``max_index_bytes``: ``.path`` is then None).
    The corpus runs in non-overlapping windows of ``window`` tokens (default the model's context, as the model
    card's held-out loss does), ``batch_tokens`` tokens a forward. ``progress(fraction, message)`` is told
    along the way. The reservoir's random draws are seeded: the same inputs give the same index."""
    say = progress or (lambda f, m: None)
    ids = default_corpus(model) if ids is None else np.ascontiguousarray(ids, dtype=np.int32)
    if ids.ndim != 1 or len(ids) == 0:
        raise ValueError("the corpus must be a non-empty sequence of token ids")
    if ids.min() < 0 or ids.max() >= model.config.vocab_size:
        raise ValueError(f"corpus ids out of range [0, {model.config.vocab_size})")
    window = min(window or model.config.n_ctx, model.config.n_ctx)
    settings = {"k": k, "window": window, "quantiles": list(QUANTILES), "per_band": per_band, "reservoir": RESERVOIR,
                "seed": seed, "hist_edges": HIST_EDGES.tolist()}
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    say(0.0, "fingerprinting the model and corpus")
    model_fp, corpus_fp = model_fingerprint(model), corpus_fingerprint(ids)
    folder = cache_dir / index_key(model_fp, corpus_fp, settings)
    if use_cache and (folder / "meta.json").is_file():
        try:
            index = NeuronIndex.load(folder)
            os.utime(folder / "meta.json")   # recently used: evicted last
            say(1.0, "read from the cache")
            return index
        except (OSError, ValueError, KeyError):
            shutil.rmtree(folder, ignore_errors=True)   # unreadable: build it again

    L, N = model.config.n_layer, 4 * model.config.n_embd
    size = index_nbytes(L, N, len(ids), k, len(QUANTILES) - 1, per_band)   # known before anything runs
    t0 = time.perf_counter()
    index = _build(model, ids, k, window, per_band, batch_tokens, seed, say)
    index.meta = {"model_sha256": model_fp, "corpus_sha256": corpus_fp, "n_tokens": int(len(ids)),
                  "settings": settings, "build_seconds": round(time.perf_counter() - t0, 3), "nbytes_bound": size,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if use_cache and size > max_index_bytes:
        index.meta["not_cached"] = f"{size / 2**20:.1f} MB is above the cache's bound of {max_index_bytes / 2**20:.0f} MB"
    elif use_cache:
        try:
            index.save(folder)
            evict(cache_dir, max_cache_bytes, keep=folder)
        except OSError as e:   # a read-only or full disk costs the cache, not the index
            index.path, index.meta["not_cached"] = None, f"could not write {folder}: {e}"
    say(1.0, "built" + (f" and cached in {folder}" if index.path else ""))
    return index


def _positive_quantiles(hist: torch.Tensor, max_act: torch.Tensor, qs) -> torch.Tensor:
    """(M, len(qs)) the quantiles of each row's positive activations, from its histogram (M, N_BINS):
    linear within the bin where the cumulative count crosses q * n_pos, so within that bin's width of the
    exact order statistic; NaN where a neuron is never positive."""
    counts = hist[:, FIRST_POSITIVE_BIN:].double()                                 # (M, P)
    cum = counts.cumsum(1)                                                        # (M, P)
    n_pos = cum[:, -1:]                                                           # (M, 1)
    edges = torch.as_tensor(HIST_EDGES[FIRST_POSITIVE_BIN:], dtype=torch.float64, device=hist.device)  # (P + 1,)
    out = []
    for q in qs:
        r = q * n_pos                                                             # (M, 1)
        j = torch.searchsorted(cum, r).clamp(max=counts.shape[1] - 1)             # (M, 1) first bin with cum >= r
        prev = torch.where(j > 0, cum.gather(1, (j - 1).clamp(min=0)), torch.zeros_like(r))
        frac = ((r - prev) / counts.gather(1, j).clamp(min=1)).clamp(0, 1)
        lo, hi = edges[j], edges[j + 1]
        hi = torch.where(j == counts.shape[1] - 1, torch.maximum(hi, max_act[:, None].double()), hi)  # the open top bin
        v = torch.minimum(lo + frac * (hi - lo), max_act[:, None].double())
        out.append(torch.where(n_pos > 0, v, torch.full_like(v, float("nan"))))
    return torch.cat(out, 1)                                                      # (M, len(qs))


_BIN_TABLE: dict = {}


def _bins(a: torch.Tensor) -> torch.Tensor:
    """The histogram bin (int64, same shape) of each value of ``a`` rounded to bfloat16: every one of the
    65,536 bfloat16 bit patterns has its bin in a table, bucketized once per device."""
    table = _BIN_TABLE.get(a.device)
    if table is None:
        grid = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()   # (65536,)
        table = torch.bucketize(grid, torch.as_tensor(HIST_EDGES[1:-1])).to(a.device)
        _BIN_TABLE[a.device] = table
    return table[a.bfloat16().view(torch.int16).long() & 0xFFFF]


def _merge(run_key, run_val, run_pos, mask, key, a, pos, largest: bool):
    """Merge a batch's candidates (``mask`` (N, M): their ``key``, value ``a`` and position ``pos[col]``) into
    each neuron's running (N, R) entries, keeping the R largest (or smallest) keys, sorted. Candidates are
    gathered sparsely: after the first batches a neuron has only a few, and a topk over all M costs more."""
    N, R = run_key.shape
    M = mask.shape[1]
    fill = float("-inf") if largest else float("inf")
    rows, cols = mask.nonzero(as_tuple=True)                                  # row-major: each row's in order
    if rows.numel() == 0:
        return run_key, run_val, run_pos
    if rows.numel() > N * M // 4:   # dense (a first batch): take every column
        ck, cv, cp = key.masked_fill(~mask, fill), a, pos.expand(N, M)       # (N, M) each
    else:
        counts = torch.bincount(rows, minlength=N)                            # (N,)
        rank = torch.arange(rows.numel(), device=rows.device) - (counts.cumsum(0) - counts)[rows]
        C = int(counts.max())
        ck = run_key.new_full((N, C), fill)                                   # (N, C) candidates, padded
        cv, cp = run_val.new_zeros((N, C)), run_pos.new_full((N, C), -1)
        ck[rows, rank], cv[rows, rank], cp[rows, rank] = key[rows, cols], a[rows, cols], pos[cols]
    kk, i = torch.cat([run_key, ck], 1).topk(R, dim=1, largest=largest)       # (N, R)
    return kk, torch.cat([run_val, cv], 1).gather(1, i), torch.cat([run_pos, cp], 1).gather(1, i)


def _build(model, ids: np.ndarray, k: int, window: int, per_band: int, batch_tokens: int, seed: int,
           say: Progress) -> NeuronIndex:
    cfg = model.config
    L, N, n_tok = cfg.n_layer, 4 * cfg.n_embd, len(ids)
    n_bands = len(QUANTILES) - 1
    dev = model.wte.weight.device
    corpus = torch.as_tensor(ids, dtype=torch.long)
    # Running state per layer, neurons first: (N, k) top values and positions, the reservoir (N, R) of
    # positive activations with their random keys, the histogram counts (N, N_BINS).
    top_v = [torch.full((N, k), float("-inf"), device=dev) for _ in range(L)]
    top_p = [torch.full((N, k), -1, dtype=torch.int32, device=dev) for _ in range(L)]
    res_key = [torch.full((N, RESERVOIR), float("inf"), device=dev) for _ in range(L)]
    res_v = [torch.zeros(N, RESERVOIR, device=dev) for _ in range(L)]
    res_p = [torch.full((N, RESERVOIR), -1, dtype=torch.int32, device=dev) for _ in range(L)]
    hist = [torch.zeros(N * N_BINS, dtype=torch.long, device=dev) for _ in range(L)]
    row = torch.arange(N, device=dev)[:, None] * N_BINS                           # (N, 1)
    gen = torch.Generator(device=dev).manual_seed(seed)
    names = [HOOK.format(layer) for layer in range(L)]

    # Full windows in batches, then the short last window alone.
    n_full = n_tok // window
    per_batch = max(1, batch_tokens // window)
    chunks = [(s, min(n_full, s + per_batch)) for s in range(0, n_full, per_batch)]
    spans = [(a * window, b * window, b - a, window) for a, b in chunks]
    if n_full * window < n_tok:
        spans.append((n_full * window, n_tok, 1, n_tok - n_full * window))
    done = 0
    for start, end, B, T in spans:
        x = corpus[start:end].view(B, T)                                           # (B, T)
        _, cache = model.run_with_cache(x, names=names, last_only=True)           # logits unused: skip the head
        pos = torch.arange(start, end, dtype=torch.int32, device=dev)             # (M,) corpus positions, M = B*T
        M = end - start
        for layer in range(L):
            a = cache.pop(names[layer]).float().reshape(M, N).T.contiguous()      # (N, M) this layer's neurons
            # Top-k: only values above a neuron's k-th largest so far can enter it.
            top_v[layer], _, top_p[layer] = _merge(top_v[layer], top_v[layer], top_p[layer],
                                                   a > top_v[layer][:, -1:], a, a, pos, largest=True)
            # Reservoir: every positive activation draws a uniform key; the R smallest keys seen so far are a
            # uniform sample (without replacement) of all the positive activations seen so far. Only keys
            # below a neuron's R-th smallest so far can enter (few, once the reservoir is full).
            key = torch.rand(N, M, generator=gen, device=dev)                      # (N, M)
            res_key[layer], res_v[layer], res_p[layer] = _merge(
                res_key[layer], res_v[layer], res_p[layer], (a > 0) & (key < res_key[layer][:, -1:]), key, a, pos,
                largest=False)
            # Histogram: one bincount over (neuron, bin) pairs.
            b = _bins(a)                                                           # (N, M) bin of each value
            hist[layer] += torch.bincount((b + row).view(-1), minlength=N * N_BINS)
            del a, b, key
        done += M
        say(done / n_tok, f"{done:,} of {n_tok:,} tokens")

    # Bands: the quantile edges from the histogram, then the first per_band reservoir members (random order:
    # keys are independent of values) that fall in each band.
    top_pos, top_act, band_pos, band_act, band_edges, counts = [], [], [], [], [], []
    for layer in range(L):
        h = hist[layer].view(N, N_BINS)
        edges = _positive_quantiles(h, top_v[layer][:, 0], QUANTILES).to(dev).float()  # (N, n_bands + 1)
        edges16 = edges.half().float()   # compare as stored, so a stored example lies in its stored band
        valid = torch.isfinite(res_key[layer])                                       # (N, R)
        v16 = res_v[layer].half().float()
        bp = torch.full((N, n_bands, per_band), -1, dtype=torch.int32, device=dev)
        bv = torch.zeros(N, n_bands, per_band, device=dev)
        for band in range(n_bands):
            inside = valid & (v16 >= edges16[:, band:band + 1]) & (v16 <= edges16[:, band + 1:band + 2])
            if band < n_bands - 1:   # a value on a shared edge goes to the upper band only
                inside &= v16 < edges16[:, band + 1:band + 2]
            order = torch.sort(inside.int(), dim=1, descending=True, stable=True).indices[:, :per_band]  # (N, s)
            ok = inside.gather(1, order)
            s = order.shape[1]
            bp[:, band, :s] = torch.where(ok, res_p[layer].gather(1, order), -1)
            bv[:, band, :s] = torch.where(ok, res_v[layer].gather(1, order), 0.0)
        top_pos.append(torch.where(torch.isfinite(top_v[layer]), top_p[layer], -1))
        top_act.append(torch.nan_to_num(top_v[layer], neginf=0.0))
        band_pos.append(bp), band_act.append(bv), band_edges.append(edges), counts.append(h)
    np_ = lambda ts, dt: torch.stack(ts).cpu().numpy().astype(dt)                # noqa: E731
    return NeuronIndex(corpus=ids.astype(np.int32), window=window, top_pos=np_(top_pos, np.int32),
                       top_act=np_(top_act, np.float16), band_pos=np_(band_pos, np.int32),
                       band_act=np_(band_act, np.float16), band_edges=np_(band_edges, np.float16),
                       hist=np_(counts, _count_dtype(n_tok)), hist_edges=HIST_EDGES.copy())
