"""The native kernels: csrc/kernels.c, built on first use with the machine's C compiler.

Decoding one token reads every weight once, so it runs at the speed of memory; csrc/kernels.c does the
step in one call on every core (see its header). It is an accelerator, not a second model: it reads
the PyTorch model's own tensors and KV cache, and ``generate.stream`` falls back to the PyTorch
forward whenever it can't be used (no compiler, hooks active, another dtype or device, dropout on).

Set ``GPT2_NATIVE=0`` to turn it off. The shared library is cached under
``$GPT2_EXPLORER_CACHE`` (default ``~/.cache/gpt2-explorer``), keyed by the source, the compiler and
the CPU, since it is compiled for this CPU (-march=native).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

from ..reference.hooks import capture_active

SOURCE = Path(__file__).with_name("csrc") / "kernels.c"
_FLAGS = ["-O3", "-march=native", "-std=gnu11", "-shared", "-fPIC", "-pthread", "-fopenmp"]

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None   # why the library is unavailable, once a build was tried
_path: Path | None = None    # the loaded build


def enabled() -> bool:
    return os.environ.get("GPT2_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def _cache_dir() -> Path:
    root = os.environ.get("GPT2_EXPLORER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "gpt2-explorer")
    return Path(root)


def cpu_signature() -> str:
    """The CPU's feature flags, which -march=native builds for."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    flags = next((line for line in lines if line.startswith(("flags", "Features"))), None)
    if flags is None:
        import platform
        flags = platform.machine() + platform.processor()
    return flags


def _compiler() -> str | None:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    return None


def _target(cc: str) -> Path:
    """Where the build of this source, compiler, CPU and flags is cached."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), version, cpu_signature(), " ".join(_FLAGS)]).encode())
    return _cache_dir() / f"gpt2kernels-{key.hexdigest()[:16]}.so"


def _build() -> ctypes.CDLL:
    global _path
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    target = _target(cc)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # Build beside the target and rename: another process may be building the same file.
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            proc = subprocess.run([cc, *_FLAGS, str(SOURCE), "-o", tmp, "-lm"],
                                  capture_output=True, text=True, timeout=120)
            if proc.returncode != 0:
                raise RuntimeError(f"{cc} failed: {proc.stderr.strip()[-2000:]}")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(target))
    _path = target
    lib.gpt2_decode_step.restype = ctypes.c_int
    lib.gpt2_decode_step.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float, ctypes.c_void_p,
                                     ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                                     ctypes.c_void_p]
    lib.gpt2_matvec.restype = None
    lib.gpt2_matvec.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
    lib.gpt2_linear_packed.restype = ctypes.c_int
    lib.gpt2_linear_packed.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int]
    lib.gpt2_pack_weight.restype = None
    lib.gpt2_pack_weight.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int]
    lib.gpt2_panel_width.restype = ctypes.c_int64
    lib.gpt2_panel_width.argtypes = []
    lib.gpt2_packed_floats.restype = ctypes.c_int64
    lib.gpt2_packed_floats.argtypes = [ctypes.c_int64] * 2
    lib.gpt2_layer_norm.restype = None
    lib.gpt2_layer_norm.argtypes = ([ctypes.c_void_p] * 4 + [ctypes.c_int64] * 2 + [ctypes.c_float]
                                    + [ctypes.c_void_p] * 5 + [ctypes.c_int])
    lib.gpt2_gelu.restype = None
    lib.gpt2_gelu.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
    lib.gpt2_attention.restype = ctypes.c_int
    lib.gpt2_attention.argtypes = [ctypes.c_void_p] + [ctypes.c_int64] * 4 + [ctypes.c_void_p] * 3 + [ctypes.c_int]
    lib.gpt2_scratch_floats.restype = ctypes.c_int64
    lib.gpt2_scratch_floats.argtypes = [ctypes.c_int64] * 3
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded library, building it the first time; None (see ``error()``) if it can't be."""
    global _lib, _error
    if _lib is not None or _error is not None:
        return _lib
    with _lock:
        if _lib is None and _error is None:
            try:
                _lib = _build()
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                _error = str(exc)
                print(f"gpt2core: native kernels unavailable, using PyTorch: {_error}", file=sys.stderr)
    return _lib


def error() -> str | None:
    return _error


def library_path() -> Path | None:
    """The file of the loaded build (None: none loaded); gpt2core.kernels.backend keeps its choices beside it."""
    return _path if library() is not None else None


def _require() -> ctypes.CDLL:
    """The library, or a RuntimeError that says why there is none."""
    lib = library()
    if lib is None:
        raise RuntimeError(f"native kernels unavailable: {_error}")
    return lib


def retain_freed_memory(limit: int = 1 << 30) -> bool:
    """Ask glibc's malloc to keep freed blocks of up to ``limit`` bytes for reuse; True if it agreed.

    By default glibc gives large blocks back to the OS when they are freed (and trims the heap), so a
    forward that keeps its activations, as a full capture does, takes every one of them as fresh
    pages: at 256 tokens on GPT-2 124M that was +28% over the plain forward, and about 0% with this
    (bench/RESULTS.md). The cost: the process keeps its peak heap instead of shrinking after it.
    A process-wide setting, so the app calls it and the library never does on its own.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return mallopt(M_MMAP_THRESHOLD, int(limit)) == 1 and mallopt(M_TRIM_THRESHOLD, 2 * int(limit)) == 1


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def limit_arenas(n: int) -> bool:
    """Cap glibc's malloc arenas at ``n`` (its default is 8 per core: 16 on two cores); True if it agreed.

    Each thread that allocates gets an arena, and an arena keeps the memory its largest request needed,
    so a server whose requests move between many worker threads holds many peaks at once. Call it
    before the threads start."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    M_ARENA_MAX = -8
    return libc.mallopt(M_ARENA_MAX, int(n)) == 1


def trim_freed_memory() -> bool:
    """Give the pages of freed blocks back to the OS, in every arena (glibc's malloc_trim(0)); True if
    any went back. The counterpart of ``retain_freed_memory``: call it now and then, not per request."""
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    return libc.malloc_trim(0) == 1


_CPUS = os.cpu_count() or 1   # os.cpu_count() costs ~18 us a call here, and a forward asks ~100 times


def threads() -> int:
    """Threads the kernels run on: as many as torch's own ops use."""
    return max(1, min(torch.get_num_threads(), _CPUS))


def matvec(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, n_threads: int | None = None) -> torch.Tensor:
    """y = b + x @ w with the native kernel; x (K,), w (K, N) contiguous float32."""
    lib = _require()
    x, w = x.contiguous().float(), w.contiguous().float()
    b = None if b is None else b.contiguous().float()
    if w.dim() != 2 or x.shape != (w.shape[0],) or (b is not None and b.shape != (w.shape[1],)):
        raise ValueError(f"matvec wants x (K,), w (K, N), b (N,); got {tuple(x.shape)}, {tuple(w.shape)}, "
                         f"{None if b is None else tuple(b.shape)}")
    y = torch.empty(w.shape[1])
    lib.gpt2_matvec(x.data_ptr(), w.data_ptr(), None if b is None else b.data_ptr(), y.data_ptr(),
                    w.shape[0], w.shape[1], n_threads or threads())
    return y


def ready(*tensors: torch.Tensor | None) -> bool:
    """Whether the kernels can take these tensors (None: absent): float32 on the CPU, and no autograd
    graph to record (training keeps torch's kernels, which have backward passes)."""
    # Asked ~100 times a forward, so plain loops: generator expressions cost more than the checks.
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is not None and (t.dtype != torch.float32 or not t.is_cpu or (grad and t.requires_grad)):
            return False
    return (_lib is not None or library() is not None) and enabled()


def linear_ready(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> bool:
    """Whether x (M, K) @ w (K, N) + b can run natively: ready(), and w stored (K, N)."""
    return w.is_contiguous() and ready(x, w, b)


LAYER_NORM_STATS = ("in_mean", "in_var", "normalized", "out_mean", "out_var")


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float, stats=()) -> tuple[torch.Tensor, dict]:
    """LayerNorm over the last axis of x, and those of its statistics named in ``stats``:
    "in_mean", "in_var" (biased), "normalized" (x_hat), "out_mean", "out_var"."""
    lib = _require()
    d = x.shape[-1]
    if w.shape != (d,) or b.shape != (d,):
        raise ValueError(f"layer_norm wants w and b of shape ({d},); got {tuple(w.shape)}, {tuple(b.shape)}")
    x, w, b = x.contiguous(), w.contiguous(), b.contiguous()
    out = torch.empty_like(x)
    lead = x.shape[:-1]
    made = {name: torch.empty(x.shape if name == "normalized" else lead) for name in stats}
    ptrs = [made[name].data_ptr() if name in made else None for name in LAYER_NORM_STATS]
    lib.gpt2_layer_norm(x.data_ptr(), w.data_ptr(), b.data_ptr(), out.data_ptr(), x.numel() // d, d, eps, *ptrs,
                        threads())
    return out, made


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation, with a vectorised exp (csrc/kernels.c); equal to torch's to ~1e-7."""
    lib = _require()
    x = x.contiguous()
    y = torch.empty_like(x)
    lib.gpt2_gelu(x.data_ptr(), y.data_ptr(), x.numel(), threads())
    return y


def attention(qkv: torch.Tensor, n_head: int, scores: bool = False, pattern: bool = False):
    """Causal self-attention of a whole prompt from c_attn's output qkv (B, T, 3d), no cache.

    Returns z (B, T, d) with the heads side by side, and, when asked, the scaled scores (B, nh, T, T)
    with -inf above the diagonal and the softmax pattern (B, nh, T, T); None otherwise.
    """
    lib = _require()
    B, T, three_d = qkv.shape
    if three_d % (3 * n_head):
        raise ValueError(f"attention wants qkv (B, T, 3d) with d divisible by {n_head} heads; got {tuple(qkv.shape)}")
    d = three_d // 3
    qkv = qkv.contiguous()
    z = torch.empty(B, T, d)
    sc = torch.empty(B, n_head, T, T) if scores else None
    pt = torch.empty(B, n_head, T, T) if pattern else None
    if lib.gpt2_attention(qkv.data_ptr(), B, T, n_head, d // n_head, z.data_ptr(),
                          None if sc is None else sc.data_ptr(), None if pt is None else pt.data_ptr(),
                          threads()) != 0:
        raise MemoryError("native attention: out of memory for its score rows")
    return z, sc, pt


def panel_width() -> int:
    """Columns per panel of a packed weight: 32 where the build has AVX-512, else 16 (csrc/kernels.c)."""
    return int(_require().gpt2_panel_width())


def pack(w: torch.Tensor) -> torch.Tensor:
    """w (K, N) as the product kernel reads it: ceil(N / P) panels of (K, P), each contiguous, the
    columns past N zero. A copy (as large as w), worth keeping while w is unchanged: model.Linear does."""
    lib = _require()
    if w.dim() != 2:
        raise ValueError(f"pack wants w (K, N); got {tuple(w.shape)}")
    w = w.contiguous().float()
    K, N = w.shape
    P = panel_width()
    packed = torch.empty(lib.gpt2_packed_floats(K, N)).view(-1, K, P)       # (panels, K, P)
    lib.gpt2_pack_weight(w.data_ptr(), K, N, packed.data_ptr(), threads())
    return packed


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, n_threads: int | None = None,
           packed: torch.Tensor | None = None) -> torch.Tensor:
    """y = b + x @ w with the native kernels; x (M, K), w (K, N), b (N,), contiguous float32.
    ``packed``: ``pack(w)``, made earlier and still current; without it w is packed for this call."""
    lib = _require()
    if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[0] or (b is not None and b.shape != (w.shape[1],)):
        raise ValueError(f"linear wants x (M, K), w (K, N), b (N,); got {tuple(x.shape)}, {tuple(w.shape)}, "
                         f"{None if b is None else tuple(b.shape)}")
    x = x.contiguous().float()
    b = None if b is None else b.contiguous().float()
    K, N = w.shape
    if x.shape[0] == 1:   # one row: the memory-bound product, split by columns, reads w in place
        return matvec(x[0], w, b, n_threads).unsqueeze(0)
    if packed is None:
        packed = pack(w)
    elif packed.shape != ((N + panel_width() - 1) // panel_width(), K, panel_width()) or not packed.is_contiguous():
        raise ValueError(f"packed has shape {tuple(packed.shape)}, not that of pack(w) for w {tuple(w.shape)}")
    y = torch.empty(x.shape[0], N)
    if lib.gpt2_linear_packed(x.data_ptr(), packed.data_ptr(), None if b is None else b.data_ptr(), y.data_ptr(),
                              x.shape[0], K, N, n_threads or threads()) != 0:
        raise MemoryError("native linear: out of memory for packing x")
    return y


class Decoder:
    """Runs decode steps of one model against one KV cache (batch 1) in C.

    Holds the pointer table of the model's tensors, so build it per generation, not per process:
    weights replaced after it was built are not seen.
    """

    def __init__(self, model, cache, n_threads: int | None = None):
        self.lib = library()
        n_threads = n_threads or threads()
        cfg = model.config
        tensors = [model.wte.weight, model.wpe.weight, model.ln_f.weight, model.ln_f.bias,
                   model.lm_head.weight.t()]
        for blk in model.blocks:
            tensors += [blk.ln_1.weight, blk.ln_1.bias, blk.attn.c_attn.weight.t(), blk.attn.c_attn.bias,
                        blk.attn.c_proj.weight.t(), blk.attn.c_proj.bias, blk.ln_2.weight, blk.ln_2.bias,
                        blk.mlp.c_fc.weight.t(), blk.mlp.c_fc.bias, blk.mlp.c_proj.weight.t(), blk.mlp.c_proj.bias]
        self._tensors = [t.detach() if t is not None else None for t in tensors]   # kept alive
        self.ptrs = torch.tensor([t.data_ptr() if t is not None else 0 for t in self._tensors], dtype=torch.int64)
        s0, s1 = model.wte.weight.stride()
        self.dims = torch.tensor([cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.vocab_size, cache.max_len, n_threads,
                                  s0, s1], dtype=torch.int64)
        self.eps = float(cfg.layer_norm_eps)
        self.cache = cache
        self.scratch = torch.empty(self.lib.gpt2_scratch_floats(cfg.n_embd, cache.max_len, n_threads))
        self.vocab = cfg.vocab_size

    @staticmethod
    def supports(model, cache) -> bool:
        """Whether the step computes what ``model(token, kv_cache=cache)`` would (checked once per
        generation; ``active()`` is checked every step)."""
        if cache is None or cache.k.shape[1] != 1 or not enabled():
            return False
        if model.config.activation != "gelu_tanh":   # the step computes GPT-2's tanh GELU, not the exact one
            return False
        if model.training and model.config.dropout > 0:
            return False
        if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in model.parameters()):
            return False
        if any(t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous()
               for t in (cache.k, cache.v)):
            return False
        linears = [model.lm_head] + [m for blk in model.blocks
                                     for m in (blk.attn.c_attn, blk.attn.c_proj, blk.mlp.c_fc, blk.mlp.c_proj)]
        if any(not lin.weight.t().is_contiguous() for lin in linears) or not model.wpe.weight.is_contiguous():
            return False
        return library() is not None

    @staticmethod
    def active() -> bool:
        """False while hooks capture or edit activations: the C step has no hook points."""
        return enabled() and not capture_active()

    def step(self, token: int) -> torch.Tensor:
        """Logits (vocab,) for ``token`` at the cache's next position; appends its keys and values."""
        pos = self.cache.length
        logits = torch.empty(self.vocab)
        rc = self.lib.gpt2_decode_step(self.ptrs.data_ptr(), self.dims.data_ptr(), self.eps,
                                       self.cache.k.data_ptr(), self.cache.v.data_ptr(), pos, int(token),
                                       logits.data_ptr(), self.scratch.data_ptr())
        if rc != 0:
            raise ValueError(f"position {pos} or token {token} is outside the model's range")
        self.cache.length += 1
        return logits
