"""Where model.py's ops run: the one indirection between the reference GPT-2 and the fast kernels.

model.py writes each op once, in plain PyTorch, and marks it ``@backend.kernel("<op>")``, as Hugging
Face's attention registry puts its kernels behind one name. This module owns everything else:

- **the per-op choice.** For each op ("linear", "attention", "layer_norm", "gelu", "decode") and shape
  class, the native kernel (gpt2core.kernels.native, csrc/kernels.c) and torch's own path are timed once, on
  this machine, the first time that shape is met; the faster is kept (torch on a tie: no op is slower
  than torch's own path) and the choice is saved beside the kernel build, keyed by the CPU, so later
  processes don't measure again. ``GPT2_KERNELS`` overrides it: ``native``, ``torch``, ``auto`` (the
  default), or per op, e.g. ``linear=torch,attention=native``; ``GPT2_NATIVE=0`` means torch throughout.
- **the packed weights**, kept per weight and remade when its version (an in-place edit, a load) or
  the tensor itself (a replacement) changes: the native kernel's 16-column panels and the copies the
  reduced precisions read.
- **the precision** of the matrix products, per request (``with backend.precision("bf16"):``) or per
  model (``model.precision``): fp32 (exact, the default), bf16, fp16 or int8. LayerNorm, softmax,
  GELU and the residual stream stay fp32 in every mode, so every hook sees float32 tensors. On a CPU
  without bf16 matrix units, where torch's bf16 products are emulated several times slower than fp32,
  a bf16 product is computed as such a unit computes it: the operands rounded to bf16, multiplied and
  accumulated in fp32 (``GPT2_BF16=auto``, the default; ``native`` or ``emulate`` force one way).

Only inference goes through the native kernels: with autograd recording (training) every op is the
reference, which has a backward pass.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import math
import os
import threading
import time
import warnings
import weakref
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..reference import hooks
from . import native

OPS = ("linear", "attention", "layer_norm", "gelu", "decode")
IMPLEMENTATIONS = ("native", "torch")
PRECISIONS = ("fp32", "bf16", "fp16", "int8")

# ---- precision -------------------------------------------------------------------------------------

_PRECISION: contextvars.ContextVar[str | None] = contextvars.ContextVar("gpt2core_precision", default=None)


def check_precision(name: str) -> str:
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {name!r}")
    return name


@contextlib.contextmanager
def precision(name: str):
    """Within the block (this thread or task only), the matrix products run in ``name``."""
    token = _PRECISION.set(check_precision(name))
    try:
        yield
    finally:
        _PRECISION.reset(token)


@contextlib.contextmanager
def default_precision(name: str):
    """``name`` unless the caller already chose one with ``precision()``: a model's forward uses this."""
    if _PRECISION.get() is not None or name == "fp32":
        yield
        return
    with precision(name):
        yield


def current_precision() -> str:
    return _PRECISION.get() or "fp32"


BF16_MODES = ("auto", "native", "emulate")


@functools.lru_cache(maxsize=1)
def _bf16_unit_names() -> tuple[str, ...]:
    """The bf16 matrix units this CPU's flags name (read once: /proc/cpuinfo does not change)."""
    flags = set(native.cpu_signature().split())
    return tuple(name for flag, name in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16")) if flag in flags)


def bf16_setting() -> str:
    """What GPT2_BF16 asks for the bf16 products: "auto" (the default: emulated where the CPU has no bf16
    units), "native" (torch's bf16 kernels) or "emulate" (operands rounded to bf16, multiplied in fp32)."""
    raw = os.environ.get("GPT2_BF16", "auto").strip().lower() or "auto"
    if raw not in BF16_MODES:
        raise ValueError(f"GPT2_BF16: {raw!r} is not one of {', '.join(BF16_MODES)}")
    return raw


def bf16_emulated_with(has_units: bool) -> bool:
    """Whether bf16 products on a CPU with (``has_units``) or without bf16 units are emulated, as GPT2_BF16 says."""
    mode = bf16_setting()
    return mode == "emulate" or (mode == "auto" and not has_units)


def bf16_emulated(device: torch.device | str | None = None) -> bool:
    """Whether bf16 products on ``device`` (the CPU when None) are emulated: operands rounded to bf16 and
    multiplied in fp32. In auto mode only a CPU without bf16 units emulates (a GPU multiplies bf16 itself)."""
    if bf16_setting() == "auto" and device is not None and torch.device(device).type != "cpu":
        return False
    return bf16_emulated_with(bool(_bf16_unit_names()))


_EMULATED = ("each bf16 product has its operands rounded to bf16 (round to nearest even) and is multiplied and "
             "accumulated in fp32, as a bf16 unit computes it, so the results are bf16's, not fp32's, at about "
             "fp32's speed")


def bf16_units() -> tuple[bool, str]:
    """Whether this CPU has bf16 matrix units, and a sentence saying so and how the bf16 mode computes here
    (GPT2_BF16: on a CPU without them, the products are emulated in fp32 unless it says "native")."""
    units = _bf16_unit_names()
    if units:
        if bf16_emulated_with(True):
            return True, (f"this CPU has bf16 matrix units ({', '.join(units)}), but GPT2_BF16=emulate: "
                          f"{_EMULATED}")
        return True, (f"this CPU has bf16 matrix units ({', '.join(units)}): on matrices the size of GPT-2 124M's, "
                      f"bf16 products run faster than fp32 ones (python -m bench bf16 measures it); on a small "
                      f"model, converting to bf16 and back costs more than it saves")
    if bf16_emulated_with(False):
        return False, ("this CPU has no bf16 matrix units (neither AMX-BF16 nor AVX512-BF16): "
                       f"{_EMULATED}; the bf16 mode is not faster here, only less exact")
    return False, ("this CPU has no bf16 matrix units (neither AMX-BF16 nor AVX512-BF16), and GPT2_BF16=native "
                   "has torch multiply in bf16 anyway, emulating the units in software several times slower "
                   "than fp32 (GPT2_BF16=auto rounds the operands to bf16 and multiplies in fp32 instead)")


# ---- the per-op choice -----------------------------------------------------------------------------

_choices: dict[str, dict] = {}   # "op:shape class" -> {"use": "native"|"torch", "native_ms": .., "torch_ms": ..}
_choices_loaded = False
_used: set[str] = set()          # the keys this process has asked for
_choice_lock = threading.RLock()   # reentrant: timing the decode step meets the linear op's first use
_setting_cache: tuple[str, dict] = ("", {})


def setting(op: str) -> str:
    """What GPT2_KERNELS (and GPT2_NATIVE) ask for this op: "native", "torch" or "auto"."""
    global _setting_cache
    if not native.enabled():
        return "torch"
    raw = os.environ.get("GPT2_KERNELS", "auto").strip().lower()
    if raw != _setting_cache[0]:
        parsed = {}
        for part in filter(None, (p.strip() for p in raw.split(","))):
            name, _, value = part.rpartition("=")
            if value not in ("native", "torch", "auto") or (name and name not in OPS):
                raise ValueError(f"GPT2_KERNELS: {part!r} is not 'native', 'torch', 'auto' or <op>=<one of "
                                 f"those> with op one of {', '.join(OPS)}")
            parsed[name or "*"] = value
        _setting_cache = (raw, parsed)
    parsed = _setting_cache[1]
    return parsed.get(op, parsed.get("*", "auto"))


def size_class(n: int) -> str:
    """The shape class of a row count: 1, then powers of two (2, 4, ..., 1024), then more."""
    if n <= 1:
        return "1"
    return f"<={1 << math.ceil(math.log2(n))}" if n <= 1024 else ">1024"


def _choices_file() -> Path | None:
    path = native.library_path()
    return None if path is None else path.with_suffix(".choices.json")


def _load_choices() -> None:
    global _choices_loaded
    _choices_loaded = True
    path = _choices_file()
    try:
        saved = json.loads(path.read_text()) if path is not None and path.exists() else {}
    except (OSError, ValueError):
        saved = {}
    if saved.get("cpu") == native.cpu_signature():
        for key, entry in saved.get("choices", {}).items():
            _choices.setdefault(key, entry)


def _save_choices() -> None:
    path = _choices_file()
    if path is None:
        return
    try:   # merge with what another process may have written meanwhile; write beside and rename
        saved = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        saved = {}
    merged = saved.get("choices", {}) if saved.get("cpu") == native.cpu_signature() else {}
    merged.update(_choices)
    tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(json.dumps({"cpu": native.cpu_signature(), "choices": merged}, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:   # a read-only cache: the choice holds for this process and is timed again next time
        return
    finally:
        if tmp.exists():
            tmp.unlink()


def _time(candidates: dict[str, Callable[[], object]], budget_s: float = 0.25) -> dict[str, float]:
    """Best time of each candidate, run in turns after one warm-up each (at least 3 turns, more while
    the whole measurement stays within ``budget_s``)."""
    best = {}
    for name, fn in candidates.items():
        start = time.perf_counter()
        fn()
        best[name] = time.perf_counter() - start
    turns, spent = 0, sum(best.values())
    while turns < 3 or (turns < 9 and spent < budget_s):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            took = time.perf_counter() - start
            best[name] = min(best[name], took)
            spent += took
        turns += 1
    return best


def choose(op: str, shape: str, native_fn: Callable[[], object], torch_fn: Callable[[], object]) -> str:
    """"native" or "torch" for this op and shape class: forced by GPT2_KERNELS, else measured once."""
    wanted = setting(op)
    if wanted != "auto":
        return wanted
    key = f"{op}:{shape}"
    _used.add(key)
    entry = _choices.get(key)
    if entry is None:
        with _choice_lock:
            if not _choices_loaded:
                _load_choices()
            entry = _choices.get(key)
            if entry is None:
                with hooks.suspended():   # timing runs record nothing and call no editing hook
                    times = _time({"native": native_fn, "torch": torch_fn})
                use = "native" if times["native"] < times["torch"] else "torch"
                entry = _choices[key] = {"use": use, "native_ms": times["native"] * 1e3, "torch_ms": times["torch"] * 1e3}
                _save_choices()
    return entry["use"]


def choices(used_only: bool = False) -> dict[str, dict]:
    """Every choice made or loaded so far: "op:shape class" -> {"use", "native_ms", "torch_ms"}; with
    ``used_only``, those this process has used."""
    with _choice_lock:
        if not _choices_loaded:
            _load_choices()
        return {k: v for k, v in sorted(_choices.items()) if not used_only or k in _used}


def describe_choices(used_only: bool = True) -> list[str]:
    """One line per op and shape: each row class's implementation, with both timings (ms)."""
    grouped: dict[str, list[str]] = {}
    for key, entry in choices(used_only).items():
        op, *parts = key.split(":")
        rows = next((p for p in parts if p.startswith(("rows", "T", "n"))), "step")
        head = ":".join(p for p in parts if p != rows)
        grouped.setdefault(f"{op} {head}".strip(), []).append(
            f"{rows} {entry['use']} ({entry['native_ms']:.3g} vs {entry['torch_ms']:.3g} ms)")
    return [f"{name}: {', '.join(parts)}" for name, parts in grouped.items()]


def forget_choices(on_disk: bool = False) -> None:
    """Measure again from the next use (tests), and with ``on_disk`` for later processes too."""
    global _choices_loaded
    with _choice_lock:
        _choices.clear()
        _choices_loaded = True   # not reloaded from the file
        path = _choices_file()
        if on_disk and path is not None and path.exists():
            path.unlink()


# ---- packed weights --------------------------------------------------------------------------------

_packs: dict[int, dict[str, tuple[tuple, object]]] = {}   # id(weight) -> {format: (version key, packed)}
_pack_lock = threading.Lock()


def _version_key(weight: torch.Tensor) -> tuple:
    return weight.data_ptr(), weight._version, tuple(weight.shape), weight.dtype


def packed(weight: torch.Tensor, fmt: str, make: Callable[[], object], also=()) -> object:
    """``make()`` for this weight and format, made once per version of the weight (and of the tensors in
    ``also`` that it is made from too) and kept while the weight lives (a copy of the model makes its
    own: nothing is pickled with it)."""
    key = (_version_key(weight), *(_version_key(t) for t in also if t is not None))
    entry = _packs.get(id(weight), {}).get(fmt)
    if entry is None or entry[0] != key:
        with _pack_lock:   # concurrent first requests pack once, not once each (~0.5 GB for gpt2)
            per_weight = _packs.get(id(weight))
            if per_weight is None:
                per_weight = _packs[id(weight)] = {}
                weakref.finalize(weight, _packs.pop, id(weight), None)
            entry = per_weight.get(fmt)
            if entry is None or entry[0] != key:
                entry = per_weight[fmt] = (key, make())
    return entry[1]


def pack_key(weight: torch.Tensor, fmt: str) -> tuple | None:
    """The version key of the packed copy kept for this weight and format (None: none kept)."""
    entry = _packs.get(id(weight), {}).get(fmt)
    return None if entry is None else entry[0]


# ---- the ops ---------------------------------------------------------------------------------------

def kernel(op: str):
    """Decorator for a module's forward written in plain PyTorch: the backend may run it with another
    implementation of the same computation (the same numbers to float rounding, the same hook points)."""
    if op not in _DISPATCH:
        raise ValueError(f"no op {op!r}: one of {', '.join(_DISPATCH)}")

    def wrap(reference):
        dispatch = _DISPATCH[op]

        @functools.wraps(reference)
        def forward(module, *args, **kwargs):
            return dispatch(module, reference, *args, **kwargs)
        forward.reference = reference
        return forward
    return wrap


def _linear(module, reference, x: torch.Tensor) -> torch.Tensor:
    prec = _PRECISION.get()
    if prec is not None and prec != "fp32" and not (torch.is_grad_enabled() and module.weight.requires_grad):
        return _LOW_PRECISION[prec](module, x)
    w = module.weight.t()                                                         # (in, out), as stored
    bias = module.bias
    if not (w.is_contiguous() and native.ready(x, w, bias)):
        return reference(module, x)
    x2 = x.reshape(-1, module.in_features)                                       # (N, in)
    rows = x2.shape[0]
    if rows == 1:   # one row reads w in place: no pack
        run_native = lambda: native.matvec(x2[0], w, bias).unsqueeze(0)          # noqa: E731
    else:           # packed when first timed or used: a weight only torch multiplies is never packed
        run_native = lambda: native.linear(x2, w, bias, packed=packed(module.weight, "native",  # noqa: E731
                                                                      lambda: native.pack(w)))
    shape = f"{module.in_features}x{module.out_features}:rows{size_class(rows)}"
    if choose("linear", shape, run_native, lambda: reference(module, x2)) == "torch":
        return reference(module, x)
    return run_native().view(*x.shape[:-1], module.out_features)                 # (..., out)


def _bf16_weight(module) -> tuple[str, torch.Tensor]:
    """The layer's weight in bfloat16, reordered once into oneDNN's blocked layout where torch offers it
    (the layout its bf16 kernels read; 5-30% faster here than the plain (out, in) tensor), else plain."""
    w = module.weight.detach().to(torch.bfloat16).contiguous()                    # (out, in)
    if w.is_cpu and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        try:
            return "onednn", torch.ops.mkldnn._reorder_linear_weight(w, 256)
        except RuntimeError:   # a oneDNN build without bf16 reorders: the plain tensor works everywhere
            return "plain", w
    return "plain", w


def _bf16_linear(module, x: torch.Tensor) -> torch.Tensor:
    """Input and weight rounded to bfloat16, multiplied by torch (oneDNN, accumulating in fp32), the bias
    (rounded to bfloat16) added in fp32, the output rounded to bfloat16 and returned as fp32. Where
    bf16_emulated() says so (a CPU without bf16 units), _bf16_emulated_linear computes the same in fp32."""
    if bf16_emulated(x.device):
        return _bf16_emulated_linear(module, x)
    layout, w = packed(module.weight, "bf16", lambda: _bf16_weight(module))
    b = None if module.bias is None else packed(module.bias, "bf16", lambda: module.bias.detach().to(torch.bfloat16))
    x2 = x.reshape(-1, module.in_features).to(torch.bfloat16)                     # (N, in)
    if layout == "onednn":
        y = torch.ops.mkldnn._linear_pointwise(x2, w, b, "none", [], "")          # (N, out)
    else:
        y = F.linear(x2, w, b)                                                     # (N, out)
    return y.float().view(*x.shape[:-1], module.out_features)


def _bf16_rounded(t: torch.Tensor) -> torch.Tensor:
    """t rounded to bfloat16 (round to nearest even) and held as float32: every value a bf16 one."""
    return t.detach().to(torch.bfloat16).float()


def _bf16_emulated_linear(module, x: torch.Tensor) -> torch.Tensor:
    """What a bf16 unit computes, on a CPU without one: input, weight and bias rounded to bfloat16, the
    products accumulated in fp32 by the fp32 product (the C kernel or torch, as the backend chose for this
    shape in fp32), the bias added in fp32; the output is left in fp32 (within half a bf16 step of
    _bf16_linear's, which rounds it). The rounded weight (fp32, (in, out)) is made once per version of the
    weight; this costs an fp32 product plus the rounding of the input."""
    w = packed(module.weight, "bf16-emulated", lambda: _bf16_rounded(module.weight.t()).contiguous())   # (in, out)
    b = None if module.bias is None else packed(module.bias, "bf16-emulated", lambda: _bf16_rounded(module.bias))
    x2 = _bf16_rounded(x.reshape(-1, module.in_features))                         # (N, in)
    run_torch = lambda: x2 @ w if b is None else torch.addmm(b, x2, w)             # noqa: E731
    if native.ready(x2, w, b):
        rows = x2.shape[0]
        if rows == 1:   # one row reads w in place: no pack
            run_native = lambda: native.matvec(x2[0], w, b).unsqueeze(0)          # noqa: E731
        else:
            run_native = lambda: native.linear(x2, w, b, packed=packed(           # noqa: E731
                module.weight, "bf16-emulated-native", lambda: native.pack(w)))
        shape = f"{module.in_features}x{module.out_features}:rows{size_class(rows)}"   # fp32's shape class
        y = run_native() if choose("linear", shape, run_native, run_torch) == "native" else run_torch()
    else:
        y = run_torch()                                                           # (N, out)
    # The output stays fp32, as a bf16 unit's fp32 accumulator leaves it (torch's bf16 path also rounds it to
    # bf16, within half a bf16 step of this): rounding it would cost a pass over it, 16 of the 35 ms this
    # mode spent over fp32 on a 256-token GPT-2 124M forward, mostly the logits.
    return y.view(*x.shape[:-1], module.out_features)


def _fp16_linear(module, x: torch.Tensor) -> torch.Tensor:
    """Input, weight and output rounded to float16, the products accumulated in fp32, as fp16 hardware
    does (this CPU multiplies fp16 some 100x slower than fp32, so the rounded values are multiplied in fp32)."""
    def rounded(t):
        return t.detach().to(torch.float16).float()
    w = packed(module.weight, "fp16", lambda: rounded(module.weight.t()).contiguous())   # (in, out)
    b = None if module.bias is None else packed(module.bias, "fp16", lambda: rounded(module.bias))
    x2 = rounded(x.reshape(-1, module.in_features))                               # (N, in)
    y = x2 @ w if b is None else torch.addmm(b, x2, w)                            # (N, out)
    return rounded(y).view(*x.shape[:-1], module.out_features)


def _int8_module(module) -> torch.nn.Module:
    """This layer as PyTorch's dynamic quantisation makes it: torch.ao.quantization.quantize_dynamic of the
    nn.Linear with the same weight (int8 weights per tensor; activations quantised per call)."""
    ref = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
    with torch.no_grad():
        ref.weight.copy_(module.weight)
        if module.bias is not None:
            ref.bias.copy_(module.bias)
    with warnings.catch_warnings():   # torch 2.13 marks its quantised tensor types deprecated
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        quantized = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(ref), {torch.nn.Linear},
                                                           dtype=torch.qint8)
    return quantized[0]


def _int8_linear(module, x: torch.Tensor) -> torch.Tensor:
    qlinear = packed(module.weight, "int8", lambda: _int8_module(module), also=(module.bias,))
    return qlinear(x.float().contiguous())


_LOW_PRECISION = {"bf16": _bf16_linear, "fp16": _fp16_linear, "int8": _int8_linear}


def weight_bytes(model, prec: str = "fp32") -> int:
    """Bytes of the model's weights stored for ``prec``: fp32 4 bytes a parameter; bf16 and fp16 2
    bytes; int8 the linear layers' weights at 1 byte (plus their scales), everything else (embeddings,
    LayerNorms, biases) in fp32, as PyTorch's dynamic quantisation leaves it."""
    check_precision(prec)
    params = {id(p): p for p in model.parameters()}.values()
    if prec in ("bf16", "fp16"):
        return sum(2 * p.numel() for p in params)
    if prec == "fp32":
        return sum(p.numel() * p.element_size() for p in params)
    from ..reference.model import Linear
    linear_weights = {id(m.weight): m.weight for m in model.modules() if isinstance(m, Linear)}
    # An embedding keeps its fp32 table even when a tied head is quantised as a layer of its own.
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    kept = sum(4 * p.numel() for p in params if id(p) not in linear_weights or id(p) in embeddings)
    return kept + sum(w.numel() + 8 for w in linear_weights.values())   # int8 values, a scale and zero point


def _layer_norm(module, reference, x: torch.Tensor) -> torch.Tensor:
    if not native.ready(x, module.weight, module.bias):
        return reference(module, x)
    wanted = hooks.recorded(module._stat_hooks)
    if wanted is None:   # a hook edits a statistic: it must pass through its hook point
        return reference(module, x)
    names = [n for n, w in zip(native.LAYER_NORM_STATS, wanted) if w]
    shape = f"d{x.shape[-1]}:rows{size_class(x.numel() // x.shape[-1])}:{'stats' if names else 'plain'}"
    run_native = lambda: native.layer_norm(x, module.weight, module.bias, module.eps, names)  # noqa: E731
    if choose("layer_norm", shape, run_native, lambda: reference(module, x)) == "torch":
        return reference(module, x)
    out, stats = run_native()
    for name, hook, w in zip(native.LAYER_NORM_STATS, module._stat_hooks, wanted):
        if w:
            hook(stats[name])
    return out


def _gelu(module, reference, x: torch.Tensor) -> torch.Tensor:
    if module.approximate != "tanh" or not native.ready(x):     # the C kernel is the tanh form
        return reference(module, x)
    if choose("gelu", f"n{size_class(x.numel() // 256)}x256", lambda: native.gelu(x),
              lambda: reference(module, x)) == "torch":
        return reference(module, x)
    return native.gelu(x)


def _attention(module, reference, qkv: torch.Tensor, kv_cache=None) -> torch.Tensor:
    """A whole prompt in one native call (without a cache, or filling an empty one), with the same hook
    points; scores and pattern are made only when a capture records them."""
    B, T, three_d = qkv.shape
    fills_cache = kv_cache is not None and kv_cache.length == 0   # a prompt's prefill: no earlier keys
    if (kv_cache is not None and not fills_cache) or T == 1 or (module.training and module.attn_dropout.p > 0) \
            or not native.ready(qkv) or (fills_cache and not native.ready(kv_cache.k)):
        return reference(module, qkv, kv_cache)
    wanted = hooks.recorded(module._hook_points)
    if wanted is None:   # a hook edits q, k, v, the scores or the pattern
        return reference(module, qkv, kv_cache)
    want_q, want_k, want_v, want_scores, want_pattern, want_z = wanted
    nh, hs = module.n_head, module.head_dim
    run_native = lambda: native.attention(qkv, nh, scores=want_scores, pattern=want_pattern)  # noqa: E731
    shape = f"hs{hs}:T{size_class(T)}:{'pattern' if want_scores or want_pattern else 'z'}"
    if choose("attention", shape, run_native, lambda: reference(module, qkv, None)) == "torch":
        return reference(module, qkv, kv_cache)
    if want_q or want_k or want_v or fills_cache:
        q, k, v = qkv.view(B, T, 3, nh, hs).permute(2, 0, 3, 1, 4).unbind(0)     # (B, nh, T, hs)
        if fills_cache:
            kv_cache.k[module.layer_idx, :, :, :T] = k
            kv_cache.v[module.layer_idx, :, :, :T] = v
        module.hook_q(q)
        module.hook_k(k)
        module.hook_v(v)
    z, scores, pattern = run_native()                                            # (B, T, d)
    if scores is not None:
        module.hook_attn_scores(scores)                                          # (B, nh, T, T)
    if pattern is not None:
        module.hook_pattern(pattern)                                             # (B, nh, T, T)
    if want_z:
        module.hook_z(z.view(B, T, nh, hs))                                      # (B, T, nh, hs)
    return z


_DISPATCH = {"linear": _linear, "layer_norm": _layer_norm, "gelu": _gelu, "attention": _attention}


# ---- the decode step -------------------------------------------------------------------------------

def decoder(model, cache, token: int):
    """A native.Decoder for this generation when the C step serves it and is faster here than the
    PyTorch forward (timed once per model shape at this token's position, the cache left as it was);
    else None. Only fp32 decodes natively."""
    if current_precision() != "fp32" or getattr(model, "precision", "fp32") != "fp32":
        return None
    if not native.Decoder.supports(model, cache) or not native.Decoder.active():
        return None
    step = native.Decoder(model, cache)
    pos = cache.length
    ids = torch.tensor([[int(token)]], device=cache.k.device)

    def run(fn):
        def once():
            fn()
            cache.length = pos
        return once
    cfg = model.config
    shape = f"L{cfg.n_layer}xd{cfg.n_embd}xV{cfg.vocab_size}"
    with torch.no_grad():
        use = choose("decode", shape, run(lambda: step.step(token)),
                     run(lambda: model(ids, kv_cache=cache, last_only=True)))
    cache.length = pos
    return step if use == "native" else None
