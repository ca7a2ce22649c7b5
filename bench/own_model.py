"""Opening your own model, each load in a fresh process, alternating: the load's seconds and the process's peak
RSS above what it had before the load.
- a 124M LLMs-from-scratch ``model.pth`` (GPT_CONFIG_124M, the course's untied ``out_head``: 163M parameters),
  loaded here (gpt2core.reference.formats) and the course's way
  (``GPTModel(cfg).load_state_dict(torch.load(path, weights_only=True))``);
- a 124M nanoGPT ``ckpt.pt`` with its AdamW state (the GPT-2 reproduction's model_args, vocabulary 50,304),
  loaded here (memory-mapped: the optimizer's two moments are never read) and as nanoGPT's sample.py does
  (``torch.load`` of the whole file, ``GPT(GPTConfig(**model_args))``, the ``_orig_mod.`` prefix stripped).
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CFG = {"vocab_size": 50257, "context_length": 1024, "emb_dim": 768, "n_heads": 12, "n_layers": 12,
       "drop_rate": 0.1, "qkv_bias": False}
NANO_ARGS = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, bias=False, vocab_size=50304, dropout=0.0)
LOAD = """
import sys, time
sys.path.insert(0, {root!r})
import torch
from tests import upstream_gpt as up
from gpt2core.reference import formats
def peak_kib():   # this process image's peak RSS: VmHWM starts anew at exec (ru_maxrss would keep the parent's)
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
before = peak_kib()
t = time.perf_counter()
if {ours!r}:
    model = formats.load_checkpoint({path!r}, n_head=12).model
elif {kind!r} == "lfs":
    model = up.LFSGPTModel({cfg!r})
    model.load_state_dict(torch.load({path!r}, weights_only=True))
    model.eval()
else:
    checkpoint = torch.load({path!r}, map_location="cpu")
    model = up.NanoGPT(up.NanoGPTConfig(**checkpoint["model_args"]))
    model.load_state_dict({{k.removeprefix("_orig_mod."): v for k, v in checkpoint["model"].items()}})
    model.eval()
seconds = time.perf_counter() - t
print(seconds, peak_kib() - before)
"""


def _measure(kind: str, path: str, runs: int) -> dict:
    results = {True: [], False: []}
    for _ in range(runs):
        for ours in (True, False):
            script = LOAD.format(root=str(ROOT), ours=ours, path=path, cfg=CFG, kind=kind)
            out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                                 cwd=str(ROOT))
            seconds, kib = out.stdout.split()
            results[ours].append((float(seconds), int(kib)))
    return results


def _lines(what: str, size: int, results: dict, theirs: str, runs: int) -> list[str]:
    lines = []
    for ours, label in ((True, "gpt2core.reference.formats.load_checkpoint"), (False, theirs)):
        seconds = statistics.median(r[0] for r in results[ours])
        mib = statistics.median(r[1] for r in results[ours]) / 1024
        lines.append(f"{what} ({size / 1e6:,.0f} MB): {label}: {seconds:.2f} s, peak RSS +{mib:,.0f} MiB "
                     f"(median of {runs})")
    return lines


def bench_own_model(runs: int = 3) -> list[str]:
    import torch

    sys.path.insert(0, str(ROOT))
    from tests import upstream_gpt as up

    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "model.pth")
        torch.manual_seed(0)
        up.save_lfs_state_dict(up.LFSGPTModel(CFG), path)
        lines += _lines("124M LLMs-from-scratch model.pth", Path(path).stat().st_size, _measure("lfs", path, runs),
                        "the course's GPTModel(cfg).load_state_dict(torch.load(weights_only=True))", runs)
        Path(path).unlink()
        path = str(Path(tmp) / "ckpt.pt")
        model = up.NanoGPT(up.NanoGPTConfig(**NANO_ARGS))
        opt = up.train_a_few_steps(model, NANO_ARGS["vocab_size"], 16, steps=1)   # AdamW's two moments exist
        up.save_nanogpt_ckpt(model, opt, NANO_ARGS, path, compiled_prefix=True)
        del model, opt
        lines += _lines("124M nanoGPT ckpt.pt with its optimizer state", Path(path).stat().st_size,
                        _measure("nanogpt", path, runs),
                        "nanoGPT's sample.py (torch.load, GPT(GPTConfig(**model_args)), load_state_dict)", runs)
    return lines
