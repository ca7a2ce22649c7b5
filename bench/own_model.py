"""Opening your own model: a 124M LLMs-from-scratch ``model.pth`` (GPT_CONFIG_124M, the course's untied
``out_head``: 163M parameters, 652 MB), loaded here (gpt2core.reference.formats) and the course's own way
(``GPTModel(cfg).load_state_dict(torch.load(path, weights_only=True))``), each in a fresh process, alternating:
the load's seconds and the process's peak RSS above what it had before the load."""
from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CFG = {"vocab_size": 50257, "context_length": 1024, "emb_dim": 768, "n_heads": 12, "n_layers": 12,
       "drop_rate": 0.1, "qkv_bias": False}
LOAD = """
import resource, sys, time
sys.path.insert(0, {root!r})
import torch
from tests import upstream_gpt as up
from gpt2core.reference import formats
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if {ours!r}:
    model = formats.load_checkpoint({path!r}, n_head=12).model
else:
    model = up.LFSGPTModel({cfg!r})
    model.load_state_dict(torch.load({path!r}, weights_only=True))
    model.eval()
seconds = time.perf_counter() - t
print(seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def bench_own_model(runs: int = 3) -> list[str]:
    import torch

    sys.path.insert(0, str(ROOT))
    from tests import upstream_gpt as up

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "model.pth")
        torch.manual_seed(0)
        up.save_lfs_state_dict(up.LFSGPTModel(CFG), path)
        size = Path(path).stat().st_size
        results = {True: [], False: []}
        for _ in range(runs):
            for ours in (True, False):
                out = subprocess.run([sys.executable, "-c", LOAD.format(root=str(ROOT), ours=ours, path=path,
                                                                         cfg=CFG)],
                                     capture_output=True, text=True, check=True, cwd=str(ROOT))
                seconds, kib = out.stdout.split()
                results[ours].append((float(seconds), int(kib)))
    lines = []
    for ours, label in ((True, "gpt2core.reference.formats.load_checkpoint"),
                        (False, "the course's GPTModel(cfg).load_state_dict(torch.load(weights_only=True))")):
        s = statistics.median(r[0] for r in results[ours])
        mib = statistics.median(r[1] for r in results[ours]) / 1024
        lines.append(f"124M LLMs-from-scratch model.pth ({size / 1e6:,.0f} MB): {label}: {s:.2f} s, "
                     f"peak RSS +{mib:,.0f} MiB (median of {runs})")
    return lines
