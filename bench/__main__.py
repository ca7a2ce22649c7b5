"""Benchmarks: python -m bench [all|decode|forward|bf16|prefill|memory|coldstart|why|endpoints|streaming|own_model]
                              [--runs N] [--model bundled|gpt2]

Ours and HF transformers run in the same process on the same random-initialised GPT-2 124M
weights (HF's, saved with save_pretrained and loaded into gpt2core), interleaved, median of N
(times), and for the forward ratios the median of each run's ratio to its neighbour.
Every figure is printed with its reference: HF, or the memory-bandwidth limit measured here.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# As the app does (explorer/__init__.py), before torch starts OpenMP: idle workers sleep rather than
# spin. `OMP_WAIT_POLICY=ACTIVE python -m bench ...` measures the other setting.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gpt2core import GPT2, KVCache, generate, load_hf  # noqa: E402
from gpt2core.kernels import native  # noqa: E402

native.retain_freed_memory()   # as the app does (explorer/memory.py); HF runs under it too


def interleaved(fns: dict, runs: int, warmup: int = 1, raw: bool = False) -> dict:
    """Median seconds of each fn, alternating between them run by run (``raw``: every run's time)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return times if raw else {k: statistics.median(v) for k, v in times.items()}


def paired_ratio(times: dict, a: str, b: str) -> float:
    """Median over runs of a's time / b's time in the same run. On a machine whose speed drifts from
    minute to minute, this compares each run with its neighbour, not with a run made in another state."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


BANDWIDTH_BYTES = 1 << 30


def bandwidth_readers(n_bytes: int = BANDWIDTH_BYTES) -> dict:
    """Functions that each read n_bytes from a buffer far larger than the caches: torch's sum, and
    gpt2core's native matrix-vector product over the buffer seen as a (rows, 8192) matrix (it reads
    each byte once, on every core). The limit is the faster of the two, so a decoder near it is near
    what this machine's memory gives."""
    x = torch.ones(n_bytes // 4, dtype=torch.float32)
    readers = {"bw: torch sum": lambda: x.sum()}
    if native.library() is not None:
        w = x.view(-1, 8192)
        v = torch.ones(w.shape[0])
        readers["bw: native matvec"] = lambda: native.matvec(v, w)
    return readers


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = "unknown CPU (no /proc/cpuinfo)"
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}), Python {platform.python_version()}")


class Pair:
    """HF GPT2LMHeadModel (eager attention) and ours, with identical weights."""

    def __init__(self):
        import transformers
        torch.manual_seed(0)
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config())
        self.tmp = tempfile.TemporaryDirectory()
        hf.save_pretrained(self.tmp.name)
        self.hf = transformers.GPT2LMHeadModel.from_pretrained(self.tmp.name, attn_implementation="eager").eval()
        self.ours = load_hf(self.tmp.name)
        self.weight_bytes = sum(p.numel() * p.element_size() for n, p in self.ours.named_parameters()
                                if n != "wpe.weight")  # per token: every matrix once (wte as the head)


def bench_decode(pair: Pair, runs: int, prompt_len: int = 16, new: int = 64) -> list[str]:
    prompt = list(range(1000, 1000 + prompt_len))
    x = torch.tensor([prompt])

    def hf():
        with torch.no_grad():
            pair.hf.generate(x, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)

    def ours():
        generate(pair.ours, prompt, new, temperature=0.0, stop_at_eot=False)

    # The bandwidth is read between the decodes, so both see the machine in the same state.
    readers = bandwidth_readers()
    t = interleaved({"hf": hf, "ours": ours, **readers}, runs)
    rates = {k.removeprefix("bw: "): BANDWIDTH_BYTES / t[k] for k in readers}
    bw = max(rates.values())
    detail = ", ".join(f"{k} {r / 1e9:.1f}" for k, r in rates.items())
    limit = bw / pair.weight_bytes
    ours_tps, hf_tps = new / t["ours"], new / t["hf"]
    return [
        f"memory bandwidth: {bw / 1e9:.1f} GB/s (best of: {detail} GB/s) -> limit {limit:.1f} tokens/s "
        f"({pair.weight_bytes / 1e6:.0f} MB of weights read per token)",
        f"decode (batch 1, greedy, {prompt_len}-token prompt, {new} new): ours {ours_tps:.1f} tok/s, "
        f"HF {hf_tps:.1f} tok/s -> {ours_tps / hf_tps:.2f}x HF; ours {ours_tps / limit:.0%} and HF "
        f"{hf_tps / limit:.0%} of the bandwidth limit",
    ]


def bench_forward(pair: Pair, runs: int, lengths=(16, 64, 256)) -> list[str]:
    """Every hook captured, against HF eager returning attentions and hidden states. Two ways each:
    logits for every position (the literal comparison), and for the last position alone (what the
    explorer's views ask for, run_with_cache(last_only=True); HF's logits_to_keep=1 is the same)."""
    lines = []
    for n in lengths:
        ids = torch.randint(0, 50257, (1, n), generator=torch.Generator().manual_seed(n))

        def hf(keep=0):
            with torch.no_grad():
                pair.hf(ids, output_attentions=True, output_hidden_states=True, logits_to_keep=keep)

        def plain(last=False):
            with torch.no_grad():
                pair.ours(ids, last_only=last)

        # In each run, every capture sits between its two references.
        raw = interleaved({"hf": hf, "capture": lambda: pair.ours.run_with_cache(ids), "plain": plain,
                           "hf_last": lambda: hf(1), "capture_last": lambda: pair.ours.run_with_cache(ids, last_only=True),
                           "plain_last": lambda: plain(True)}, runs, raw=True)
        t = {k: statistics.median(v) for k, v in raw.items()}
        for label, c, h, p in (("all logits", "capture", "hf", "plain"),
                               ("last-position logits", "capture_last", "hf_last", "plain_last")):
            lines.append(f"full-capture forward, {n} tokens, {label}: ours {t[c] * 1e3:.1f} ms, HF eager with "
                         f"attentions+hidden states {t[h] * 1e3:.1f} ms -> {paired_ratio(raw, c, h):.2f}x HF's time; "
                         f"ours plain {t[p] * 1e3:.1f} ms -> capture overhead {paired_ratio(raw, c, p) - 1:+.1%}")
        lines.append(f"  the app's view (capture, last-position logits) against HF's literal call (all logits): "
                     f"{paired_ratio(raw, 'capture_last', 'hf'):.2f}x HF's time")
    return lines


def bench_bf16(pair: Pair, runs: int, lengths=(64, 256)) -> list[str]:
    """The opt-in bf16 mode (gpt2core.kernels.backend.precision): our full capture with bf16 products against HF's
    fp32 eager forward (the issue's reference) and HF cast to bf16, and its error against our fp32 capture; and
    the other way of computing bf16 here (GPT2_BF16: torch's bf16 kernels, or the operands rounded to bf16 and
    multiplied in fp32, what a CPU without bf16 units runs) against our fp32."""
    from gpt2core.kernels import backend

    has_units, why = backend.bf16_units()
    served = "emulated: operands rounded to bf16, multiplied in fp32" if backend.bf16_emulated() else "torch's bf16"
    other = "native" if backend.bf16_emulated() else "emulate"
    lines = [f"bf16: {why}"]
    hf16 = __import__("copy").deepcopy(pair.hf).to(torch.bfloat16)
    for n in lengths:
        ids = torch.randint(0, 50257, (1, n), generator=torch.Generator().manual_seed(n))

        def hf(model):
            with torch.no_grad():
                model(ids, output_attentions=True, output_hidden_states=True)

        def ours_bf16(mode=None):
            before = os.environ.get("GPT2_BF16")
            if mode is not None:
                os.environ["GPT2_BF16"] = mode
            try:
                with backend.precision("bf16"):
                    return pair.ours.run_with_cache(ids)
            finally:
                if before is None:
                    os.environ.pop("GPT2_BF16", None)
                else:
                    os.environ["GPT2_BF16"] = before

        def errors(low, low_cache):
            d_attn = max((low_cache[k] - ref_cache[k]).abs().max().item() for k in ref_cache if k.endswith("hook_pattern"))
            agree = (low.argmax(-1) == ref.argmax(-1)).float().mean().item()
            return (f"error against fp32: max |dlogit| {(low - ref).abs().max().item():.3g}, "
                    f"top-1 agreement {agree:.1%}, max |dattention| {d_attn:.3g}")

        raw = interleaved({"hf": lambda: hf(pair.hf), "bf16": ours_bf16, "hf_bf16": lambda: hf(hf16),
                           "fp32": lambda: pair.ours.run_with_cache(ids), "other": lambda: ours_bf16(other)},
                          runs, raw=True)
        t = {k: statistics.median(v) for k, v in raw.items()}
        ref, ref_cache = pair.ours.run_with_cache(ids)
        lines.append(f"bf16 full capture ({served}), {n} tokens, all logits: ours {t['bf16'] * 1e3:.1f} ms -> "
                     f"{1 / paired_ratio(raw, 'bf16', 'hf'):.2f}x faster than HF fp32 eager ({t['hf'] * 1e3:.1f} ms; "
                     f"target >= 2.5x at 256 where there are bf16 units), {1 / paired_ratio(raw, 'bf16', 'hf_bf16'):.2f}x "
                     f"HF in bf16 ({t['hf_bf16'] * 1e3:.1f} ms), {1 / paired_ratio(raw, 'bf16', 'fp32'):.2f}x our fp32 "
                     f"({t['fp32'] * 1e3:.1f} ms); {errors(*ours_bf16())}")
        lines.append(f"  with GPT2_BF16={other}: {t['other'] * 1e3:.1f} ms, {paired_ratio(raw, 'other', 'fp32'):.2f}x "
                     f"our fp32's time (target <= 1 where it emulates); {errors(*ours_bf16(other))}")
    return lines


def bench_kernels() -> list[str]:
    """Which implementation each op and shape class uses on this CPU (gpt2core.kernels.backend's measured choice)."""
    from gpt2core.kernels import backend

    path = backend._choices_file()
    return [f"kernel choices (native vs torch, timed at first use on this CPU, saved in {path}; "
            f"GPT2_KERNELS={os.environ.get('GPT2_KERNELS', 'auto')}):"] + [f"  {line}" for line in backend.describe_choices()]


def bench_prefill(pair: Pair, runs: int, n: int = 256) -> list[str]:
    """Filling the KV cache with a 256-token prompt, as generation does (logits of the last position only;
    HF's generate does the same with logits_to_keep=1), and with logits for every position."""
    ids = torch.randint(0, 50257, (1, n), generator=torch.Generator().manual_seed(1))

    def hf(keep=0):
        with torch.no_grad():
            pair.hf(ids, use_cache=True, logits_to_keep=keep)

    def ours(last=False):
        with torch.no_grad():
            pair.ours(ids, kv_cache=KVCache(pair.ours.config, 1), last_only=last)

    t = interleaved({"hf": hf, "ours": ours, "hf_last": lambda: hf(1), "ours_last": lambda: ours(True)}, runs)
    return [f"prefill {n} tokens (filling the KV cache), last-position logits as in generation: ours "
            f"{t['ours_last'] * 1e3:.1f} ms, HF {t['hf_last'] * 1e3:.1f} ms -> {t['ours_last'] / t['hf_last']:.2f}x "
            f"HF's time; all logits: ours {t['ours'] * 1e3:.1f} ms, HF {t['hf'] * 1e3:.1f} ms -> "
            f"{t['ours'] / t['hf']:.2f}x"]


MEMORY_SCRIPT = """
import resource, sys, torch
sys.path.insert(0, {root!r})
from explorer.session import ModelEntry, ModelRegistry
from explorer.app import build_app
from gpt2core import GPT2
torch.manual_seed(0)
registry = ModelRegistry()
registry.add(ModelEntry("gpt2 (random)", GPT2.from_preset("gpt2"), "random"))
demo = build_app(registry)
logits, cache = registry.get(None).model.run_with_cache(list(range(256)))
# VmHWM, the peak of this process image: ru_maxrss also counts the parent's pages at the fork before
# exec, so under `bench all` (with both models loaded in the parent) it reported 2-3 GiB.
try:
    hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")]
    print(int(hwm[0].split()[1]))
except (OSError, IndexError):
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def bench_memory() -> list[str]:
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT.format(root=str(ROOT))], capture_output=True,
                         text=True, check=True)
    kib = int(out.stdout.strip().splitlines()[-1])
    return [f"peak RSS of the app process with gpt2 124M loaded and one 256-token full capture: "
            f"{kib / 1024:.0f} MiB (weights alone: {124_439_808 * 4 / 2**20:.0f} MiB)"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_coldstart(runs: int = 3) -> list[str]:
    """`python app.py` to the first HTTP 200, median of the runs, and the app's start-up phases (bench/coldstart.py)."""
    from bench.coldstart import bench_coldstart as run
    return run(runs)


def bench_own_model(runs: int = 3) -> list[str]:
    """A 124M model.pth of LLMs-from-scratch opened here and the course's way: seconds and peak RSS (bench/own_model.py)."""
    from bench.own_model import bench_own_model as run
    return run(runs)


def bench_why(pair: Pair, runs: int, lens_len: int = 64, scan_len: int = 16) -> list[str]:
    """The Why tab's computations on GPT-2 124M: the logit lens and the attribution at 64 tokens against HF's
    forward with every hidden state, and the per-head ablation scan at 16 tokens (batched) against the same
    144 ablations run one pass each."""
    from gpt2core.analysis.lens import attribute, logit_lens, run_ablated, scan_heads

    model = pair.ours.eval().requires_grad_(False)
    cfg = model.config
    ids = torch.randint(0, cfg.vocab_size, (lens_len,), generator=torch.Generator().manual_seed(0))

    def hf():
        with torch.no_grad():
            pair.hf(ids[None], output_hidden_states=True)

    t = interleaved({"hf": hf, "lens": lambda: logit_lens(model, ids), "attribution": lambda: attribute(model, ids)},
                    runs)
    lines = [f"why, GPT-2 124M, {lens_len} tokens: logit lens {t['lens'] * 1e3:.0f} ms ({t['lens'] / t['hf']:.2f}x HF's "
             f"forward with hidden states, {t['hf'] * 1e3:.0f} ms; the lens unembeds {2 * cfg.n_layer} stages and reads "
             f"the last from the forward), "
             f"attribution {t['attribution'] * 1e3:.0f} ms ({t['attribution'] / t['hf']:.2f}x)"]
    short = ids[:scan_len]
    target = int(short[-1])

    def one_by_one():
        for layer in range(cfg.n_layer):
            for head in range(cfg.n_head):
                run_ablated(model, short, heads=[(layer, head)])

    s = interleaved({"batched": lambda: scan_heads(model, short, target), "one pass each": one_by_one},
                    max(1, runs // 2), warmup=0)
    lines.append(f"why, GPT-2 124M, {scan_len} tokens: head scan ({cfg.n_layer * cfg.n_head} ablations, batched) "
                 f"{s['batched']:.2f} s (target <= 10 s), {s['batched'] / s['one pass each']:.2f}x the time of one "
                 f"pass per ablation ({s['one pass each']:.2f} s)")
    return lines


def bench_circuits(pair: Pair, runs: int, sweep_len: int = 16, detect_len: int = 64) -> list[str]:
    """The Circuits tab on GPT-2 124M: the full patching sweep (residual stream, attention and MLP outputs per
    layer x position, every head) at 16 tokens, batched from each layer on, against the same patches run one
    ordinary forward pass each; and the head detector at 64 tokens against HF's forward with attentions."""
    from gpt2core.analysis import circuits

    model = pair.ours.eval().requires_grad_(False)
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, cfg.vocab_size, (sweep_len,), generator=g)
    corrupt = clean.clone()
    corrupt[sweep_len // 2] = (corrupt[sweep_len // 2] + 1) % cfg.vocab_size
    answer, wrong = 11, 13       # any two tokens: random weights make the clean and corrupted tops agree
    _, cache = model.run_with_cache(clean, names=circuits.patch_names(cfg.n_layer), last_only=True)
    patches = [circuits.Patch(k, l, p) for l in range(cfg.n_layer) for k in ("resid_pre", "attn_out", "mlp_out")
               for p in range(sweep_len)] + [circuits.Patch("heads", l, None, h) for l in range(cfg.n_layer)
                                             for h in range(cfg.n_head)]

    def one_by_one():
        for patch in patches:
            circuits.run_patched(model, corrupt, cache, [patch])

    s = interleaved({"sweep": lambda: circuits.patching_sweep(model, clean, corrupt, answer, wrong),
                     "one pass each": one_by_one}, max(1, runs // 2), warmup=0)
    ids = torch.randint(0, cfg.vocab_size, (detect_len,), generator=g)

    def hf():
        with torch.no_grad():
            pair.hf(ids[None], output_attentions=True)

    t = interleaved({"hf": hf, "detect": lambda: circuits.detect_heads(model, ids)}, runs)
    return [f"circuits, GPT-2 124M, {sweep_len} tokens: patching sweep ({len(patches)} patched runs: 3 kinds x "
            f"{cfg.n_layer} layers x {sweep_len} positions + {cfg.n_layer * cfg.n_head} heads) {s['sweep']:.2f} s "
            f"(target <= 10 s), {s['sweep'] / s['one pass each']:.2f}x the time of one pass per patch "
            f"({s['one pass each']:.2f} s)",
            f"circuits, GPT-2 124M, {detect_len} tokens: head detector {t['detect'] * 1e3:.0f} ms "
            f"({t['detect'] / t['hf']:.2f}x HF's forward with attentions, {t['hf'] * 1e3:.0f} ms)"]


ENDPOINT_TOKENS = 128   # explorer.inputs.MAX_VIEW_TOKENS, the analysis views' cap: the target holds there
ENDPOINT_TARGET = 1.5   # a view's server time is at most this many times its passes' worth of the reference forward
# Long-running by design (bounded elsewhere), so reported per unit, not held to the per-pass target.
STREAMING = {"/generate": "n_new", "/train": "n_steps", "/train_instruct": "n_steps", "/classify_train": "n_steps"}
STREAM_UNITS = {"/generate": 20, "/train": 10, "/train_instruct": 10, "/classify_train": 10}
# Long by design, with a progress bar, and held to a target of their own elsewhere.
LONG = {"/why_scan": "144 ablations for GPT-2 124M; its target, 10 s at 16 tokens, is `bench why`'s",
        "/generate_beam": "beam search: width x new tokens rows of decoding, in generation's queue",
        "/generate_compare": "greedy, sampling and beam search of one prompt, in generation's queue",
        "/circuits_patch": "a patching sweep, hundreds of patched runs; its target, 10 s at 16 tokens, is "
                           "`bench circuits`'s"}
# Forward passes a view makes by design where that is not one (a batch of k rows counts k): it is held to
# ENDPOINT_TARGET x k reference forwards. A view with none is held to the target of one (ENDPOINT_TARGET).
PASSES = {"/why_ablate": (2, "clean + ablated, one batch of two rows"),
          "/compare_view": (2, "prompt A and prompt B (B here: the tab's default, 6 tokens)"),
          "/precision_view": (4, "one full forward per precision: fp32, bf16, fp16, int8"),
          "/precision_status": (2, "fp32 and the served precision"),
          "/sampling_distribution": (1, "last position only; the session reuses its logits for a prompt it "
                                        "has seen, as every call after the warm-up does here"),
          "/sampling_draws": (0, "the session's cached logits"),
          **{name: (0, "no forward pass") for name in
             ("/embeddings_neighbours", "/embeddings_positions", "/embeddings_projection", "/gelu_curves",
              "/model_info", "/select_model", "/tokenizer_breakdown", "/tokenizer_merges", "/tokenizer_windows",
              "/train_use")}}
# The reference forward captures every hook point, with the last position's logits, as the views ask
# (run_with_cache(..., last_only=True)); a view that needs every position's logits by design is timed against
# a reference with every position's logits.
ALL_LOGITS = {"/score_text": "it scores every token", "/precision_view": "it compares every position's logits",
              "/precision_status": "it compares every position's logits"}


# Values an endpoint needs where its control's default would be refused (an empty ablation set).
ENDPOINT_VALUES = {"/why_ablate": {"heads_v": "0.0, 1.1"},
                   # a sweep's prompts are at most 64 tokens: 16, as `bench circuits` times it, the first changed
                   "/circuits_patch": {"clean_v": "the" + " the" * 15, "corrupt_v": "a" + " the" * 15,
                                       "answer_v": "", "wrong_v": ""}}


def endpoint_args(spec: dict, prompt: str, model_name: str) -> list:
    """Arguments for one endpoint: the 128-token prompt in its first text box, the served model, and each other
    control's default (or its value in ENDPOINT_VALUES)."""
    args, prompt_given = [], False
    values = ENDPOINT_VALUES.get(spec.get("api_name", ""), {})
    for p in spec["parameters"]:
        name = p["parameter_name"]
        if name in values:
            args.append(values[name])
        elif p["component"] == "Textbox" and spec.get("api_name") == "/train":
            args.append(p["parameter_default"])          # the demo text: 64 tokens is too short to train on
        elif p["component"] == "Textbox" and not prompt_given:
            args.append(prompt)
            prompt_given = True
        elif p["component"] == "Dropdown" and "model" in name:
            args.append(model_name)
        elif name == STREAMING.get(spec.get("api_name", "")):
            args.append(STREAM_UNITS[spec["api_name"]])
        elif p.get("parameter_has_default"):
            args.append(p["parameter_default"])
        else:
            args.append(None)
    return args


def time_process_api(demo) -> dict:
    """Wrap the app's process_api (gradio's preprocess + handler + postprocess of one event, or of one chunk
    of a stream) to record each call's wall time: api_name -> [seconds, ...]. gradio's own ``duration``
    (BlockFunction.total_runtime) covers the handler alone; a figure's conversion to JSON (gr.Plot's
    postprocess) and a State output's hashing happen outside it."""
    import functools

    records: dict[str, list[float]] = {}
    inner = demo.process_api

    @functools.wraps(inner)
    async def timed(block_fn, *args, **kwargs):
        t = time.perf_counter()
        try:
            return await inner(block_fn, *args, **kwargs)
        finally:
            fn = demo.fns[block_fn] if isinstance(block_fn, int) else block_fn
            records.setdefault(fn.api_name or "", []).append(time.perf_counter() - t)

    demo.process_api = timed
    return records


def bench_endpoints(runs: int, model: str = "bundled", only: str = "") -> list[str]:
    """Every explorer endpoint with a 128-token prompt, on the bundled model or (``model="gpt2"``) on GPT-2 124M
    with random weights (the size a Space serves), against one captured forward of the same prompt on the same
    model, timed before and after each call so the machine's drift between minutes cancels in their ratio.

    The reference forward is ``model.run_with_cache(ids, last_only=True)``: every hook point captured and the
    last position's logits, what a view that draws every activation asks for (views that need every position's
    logits, ALL_LOGITS, are timed against ``run_with_cache(ids)``, logits for every position). Server time = the
    app's process_api for the event (preprocess, handler, postprocess; summed over a stream's chunks); handler =
    gradio's own duration of the handler alone; round trip = gradio_client's request to answer. Each is the
    median of ``runs`` after a warm-up call, and the ratio is the median over runs of server time / the mean of
    the forwards timed just before and just after it. Start-up's objects are frozen out of the garbage collector
    once the server is up, as the command line does. ``only``: comma-separated prefixes of the api_names to time
    (say "circuits_,classify_"), every endpoint when empty."""
    from gradio_client import Client

    from explorer.app import build_app
    from explorer.session import ModelEntry, build_registry
    from gpt2core import encode

    registry = build_registry()
    if model == "gpt2":
        torch.manual_seed(0)
        registry.add(ModelEntry("gpt2 124M (random weights)", GPT2.from_preset("gpt2", dropout=0.0),
                                "random initialisation", trained=False), default=True)
    demo = build_app(registry)
    server = time_process_api(demo)
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    # As the command line does once the server is up (explorer.startup.release_gc): what start-up made is frozen
    # out of later collections. Without it each full collection during a request walked the ~390,000 objects
    # of the imports and the page (about 30 ms, when one fell in a request), which the served app never does.
    import gc
    gc.collect()
    gc.freeze()
    try:
        client = Client(demo.local_url, verbose=False, ssl_verify=False)
        named = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        prompt = "the" + " the" * (ENDPOINT_TOKENS - 1)
        ids = encode(prompt)
        assert len(ids) == ENDPOINT_TOKENS
        served = registry.get(None).model

        def forward(last_only: bool = True) -> float:
            t = time.perf_counter()
            served.run_with_cache(ids, last_only=last_only)
            return time.perf_counter() - t

        fns = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name}
        lines = [f"endpoints on model '{registry.default}', {ENDPOINT_TOKENS}-token prompt, median of {runs} after a "
                 f"warm-up call. forward = run_with_cache(ids, last_only=True) of the same prompt on the same model "
                 f"(every hook point, the last position's logits; every position's for {', '.join(ALL_LOGITS)}), "
                 f"timed before and after each call; server = process_api (preprocess + "
                 f"handler + postprocess, summed over a stream's chunks); handler = gradio's duration of the handler; "
                 f"trip = the client's request to answer; ratio = median of server / the mean of the forwards either side; target: at most "
                 f"{ENDPOINT_TARGET}x the forward per pass by design (a view with none: {ENDPOINT_TARGET}x one); "
                 f"payload = JSON of the result:"]
        prefixes = tuple("/" + p.strip().lstrip("/") for p in only.split(",") if p.strip())
        verdicts = {"ok": 0, "over target": 0}
        refs = interleaved({"last": forward, "all": lambda: forward(False)}, runs, raw=True)   # and warms up
        lines.append(f"  reference forwards: every hook point and the last position's logits "
                     f"{statistics.median(refs['last']) * 1e3:.0f} ms, every position's logits "
                     f"{statistics.median(refs['all']) * 1e3:.0f} ms (median of {runs}, interleaved)")
        for name in sorted(named, key=lambda n: (n == "/train_use", n)):   # /train_use needs /train first
            if prefixes and not name.startswith(prefixes):
                continue
            spec = {**named[name], "api_name": name}
            args = endpoint_args(spec, prompt, registry.default)
            fn = fns[name.lstrip("/")]
            records = server.setdefault(name.lstrip("/"), [])
            fwd, srv, handler, trip = [], [], [], []
            last_only = name not in ALL_LOGITS
            try:
                result = client.predict(*args, api_name=name)            # warm-up, and the payload
                for _ in range(runs):
                    fwd.append(forward(last_only))
                    n_records, runtime = len(records), fn.total_runtime
                    t = time.perf_counter()
                    client.predict(*args, api_name=name)
                    trip.append(time.perf_counter() - t)
                    srv.append(sum(records[n_records:]))
                    handler.append(fn.total_runtime - runtime)
                fwd.append(forward(last_only))
            except Exception as e:  # noqa: BLE001 - report, don't stop the benchmark
                lines.append(f"  {name}: failed ({type(e).__name__}: {str(e)[:120]})")
                continue
            # each call between two forwards: its reference is their mean (the machine's speed drifts)
            pairs = [(a + b) / 2 for a, b in zip(fwd, fwd[1:])]
            med = {k: statistics.median(v) * 1e3 for k, v in
                   (("server", srv), ("handler", handler), ("trip", trip), ("forward", fwd))}
            ratio = statistics.median(s / f for s, f in zip(srv, pairs))
            size = len(json.dumps(result, default=str).encode())
            times = (f"server {med['server']:.0f} ms (handler {med['handler']:.0f}, trip {med['trip']:.0f}), "
                     f"forward {med['forward']:.0f} ms -> {ratio:.2f}x")
            if name in STREAMING:
                unit = "token" if name == "/generate" else "step"
                lines.append(f"  {name}: {times} ({med['server'] / STREAM_UNITS[name]:.0f} ms per {unit}, "
                             f"{STREAM_UNITS[name]} {unit}s; streamed, not held to the per-pass target), "
                             f"payload {size / 1024:.1f} KiB")
                continue
            if name in LONG:
                lines.append(f"  {name}: {times} ({LONG[name]}; not held to the per-pass target), "
                             f"payload {size / 1024:.1f} KiB")
                continue
            k, why = PASSES.get(name, (1, ""))
            if name in ALL_LOGITS:
                why = f"{why}; " if why else ""
                why += f"against the forward with every position's logits: {ALL_LOGITS[name]}"
            target = ENDPOINT_TARGET * max(k, 1)
            verdict = "ok" if ratio <= target else "over target"
            verdicts[verdict] += 1
            lines.append(f"  {name}: {times}; {k} pass{'es' if k != 1 else ''} by design{f' ({why})' if why else ''}, "
                         f"target <= {target:.1f}x  [{verdict}], payload {size / 1024:.1f} KiB")
        lines.append(f"  verdicts: {verdicts['ok']} ok, {verdicts['over target']} over target")
        return lines
    finally:
        demo.close()


def bench_streaming(args) -> list[str]:
    from bench.streaming import bench_streaming as run   # the app's stream against the raw decode
    return run(args.runs, "gpt2" if args.model == "gpt2" else "bundled")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("what", nargs="*", default=["all"],
                    choices=["all", "decode", "forward", "bf16", "prefill", "memory", "coldstart", "why", "circuits",
                             "endpoints", "streaming", "own_model"])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--model", choices=["bundled", "gpt2"], default="bundled",
                    help="the model the endpoints run on: the bundled one, or GPT-2 124M with random weights")
    ap.add_argument("--only", default="", help="endpoints: time only the api_names with these comma-separated "
                                               "prefixes (say circuits_,classify_)")
    ap.add_argument("--out", help="also append the results to this markdown file")
    ap.add_argument("--remeasure", action="store_true",
                    help="forget the saved kernel choices first, so each op is timed again on this machine")
    args = ap.parse_args(argv)
    what = {"decode", "forward", "bf16", "prefill", "memory", "coldstart", "why", "circuits", "endpoints", "streaming"} \
        if "all" in args.what else set(args.what)
    if args.remeasure:
        from gpt2core.kernels import backend
        backend.forget_choices(on_disk=True)
    lines = [f"machine: {machine()}"]
    print(lines[0], flush=True)
    pair = Pair() if what & {"decode", "forward", "bf16", "prefill", "why", "circuits"} else None
    steps = [("decode", lambda: bench_decode(pair, args.runs)), ("forward", lambda: bench_forward(pair, args.runs)),
             ("bf16", lambda: bench_bf16(pair, args.runs)),
             ("prefill", lambda: bench_prefill(pair, args.runs)), ("memory", bench_memory),
             ("coldstart", bench_coldstart), ("why", lambda: bench_why(pair, args.runs)),
             ("circuits", lambda: bench_circuits(pair, args.runs)),
             ("endpoints", lambda: bench_endpoints(args.runs, args.model, args.only)), ("streaming", lambda: bench_streaming(args)),
             ("own_model", lambda: bench_own_model(args.runs))]
    if pair is not None:
        steps.append(("kernels", bench_kernels))
        what.add("kernels")
    for name, fn in steps:
        if name in what:
            for line in fn():
                print(line, flush=True)
                lines.append(line)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write("\n".join(f"- {line}" for line in lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
