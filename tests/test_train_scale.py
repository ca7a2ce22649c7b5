"""Training beyond one plain CPU process: device, precision, accumulation, --init, and DDP under torchrun.

No GPU here: the CUDA paths are checked only for the "cuda asked for where none exists" error;
bf16 and fp16 (with its GradScaler) run through CPU autocast, the same code the GPU takes.
"""
import json
import os
import socket
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from gpt2core import get_config, load
from gpt2core.training.data import random_batch
from gpt2core.training.train import (LOG_FILE, LOSS_PNG, OPTIM_FILE, SummedLoss, Trainer, TrainSettings, build_model,
                            main, precision_of, resolve_device)
from gpt2core.reference.weights import WEIGHTS_FILE, save
from tests.test_training import fake_ids, nano

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT / "assets" / "train_demo.txt"


def settings(**kw):
    base = dict(steps=4, batch_size=2, lr=5e-3, min_lr=5e-4, warmup_steps=1, eval_every=100, eval_batches=1,
                sample_prompt="The", sample_tokens=2, seed=3)
    return TrainSettings(**{**base, **kw})


def train(model, s, ids):
    trainer = Trainer.from_ids(model, ids, s)
    losses = [e["loss"] for e in trainer.run()]
    return trainer, losses


def test_summed_loss_is_the_models_loss():
    model = nano().eval()
    x, y = random_batch(fake_ids(200), 16, 3, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert float(SummedLoss(model)(x, y)) / y.numel() == pytest.approx(float(model.loss(x, y)), rel=1e-5)


def test_grad_accum_equals_the_big_batch():
    ids = fake_ids(600)
    big, big_losses = train(nano(seed=1), settings(batch_size=8), ids)
    acc, acc_losses = train(nano(seed=1), settings(batch_size=2, grad_accum=4), ids)
    assert acc.effective_batch == big.effective_batch == 8
    assert acc_losses == pytest.approx(big_losses, rel=1e-5)
    assert acc_losses[-1] < acc_losses[0]
    for p, q in zip(big.model.parameters(), acc.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=2e-5)   # Adam divides by tiny moments
    # Not the same as training on batch 2 alone: the accumulation really adds the other windows.
    _, small_losses = train(nano(seed=1), settings(batch_size=2), ids)
    assert small_losses[1:] != pytest.approx(big_losses[1:], rel=1e-3)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_precisions_train_close_to_fp32(precision, tmp_path):
    ids = fake_ids(600)
    _, ref = train(nano(seed=2), settings(steps=3), ids)
    low, losses = train(nano(seed=2), settings(steps=3, precision=precision), ids)
    assert low.run_info()["precision"] == precision and low.settings.bf16 == (precision == "bf16")
    assert (low.scaler is not None) == (precision == "fp16")   # fp16 scales the loss; bf16 needs no scaler
    assert losses == pytest.approx(ref, abs=0.05) and losses != ref   # rounded matmuls, same training
    if precision == "fp16":
        scale = low.scaler.get_scale()
        assert scale > 1
        folder = low.save(tmp_path / "ck")
        assert json.loads((folder / "config.json").read_text())["grad_scaler"]["scale"] == scale
        again = Trainer.from_ids(nano(seed=9), ids, settings(steps=3, precision="fp16"))
        again.load_state(folder)
        assert again.scaler.get_scale() == scale   # resuming keeps the scaler's state


def test_precision_flags_and_aliases():
    assert TrainSettings(bf16=True).precision == "bf16"
    assert TrainSettings(precision="bf16").bf16 is True
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainSettings(precision="int8")
    with pytest.raises(ValueError, match="contradicts"):
        TrainSettings(bf16=True, precision="fp16")
    with pytest.raises(ValueError, match="grad_accum"):
        TrainSettings(grad_accum=0)
    assert precision_of(Namespace(bf16=True, precision=None)) == "bf16"
    assert precision_of(Namespace(bf16=False, precision=None)) == "fp32"
    assert precision_of(Namespace(bf16=False, precision="fp16")) == "fp16"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_plain_error(capsys, tmp_path):
    assert resolve_device("auto").type == "cpu" and resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="no CUDA device is available"):
        resolve_device("cuda")
    with pytest.raises(SystemExit) as e:
        main(["--text", str(TEXT), "--out", str(tmp_path / "x"), "--device", "cuda"])
    assert e.value.code == 2
    assert "--device cuda: no CUDA device is available here" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_init_from_an_hf_folder_starts_from_its_weights(hf_tiny_dir):
    reference = load(hf_tiny_dir)
    model = build_model(str(hf_tiny_dir), get_config("tiny"), dropout=0.0)
    assert (model.config.n_layer, model.config.n_embd, model.config.n_ctx) == (3, 32, 64)   # its architecture
    sd, ref = model.state_dict(), reference.state_dict()
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in sd)
    ids = fake_ids(400)
    trainer = Trainer.from_ids(model, ids, settings(steps=1, lr=1e-3))
    x, y = random_batch(trainer.train_ids, 64, 2, torch.Generator().manual_seed(3 * 1_000_003))
    with torch.no_grad():
        expected = float(reference.loss(x, y))
    assert trainer.train_step() == pytest.approx(expected, rel=1e-5)   # step 1 saw the HF weights
    assert model.lm_head.weight is model.wte.weight                     # still tied after the copy


def test_init_from_our_checkpoint_via_the_cli(tmp_path):
    base = nano(seed=5)
    with torch.no_grad():
        base.ln_f.bias.add_(0.25)   # something a fresh model could not have
    save(base, tmp_path / "base")
    out = tmp_path / "tuned"
    assert main(["--text", str(TEXT), "--out", str(out), "--init", str(tmp_path / "base"), "--steps", "2",
                 "--batch-size", "2", "--eval-every", "2", "--eval-batches", "1", "--warmup", "1",
                 "--lr", "1e-9", "--min-lr", "0", "--device", "cpu", "--threads", "1", "--n-embd", "64"]) == 0
    doc = json.loads((out / "config.json").read_text())
    assert doc["config"]["n_embd"] == 16 and doc["init"] == str(tmp_path / "base")   # --n-embd ignored
    assert doc["run"] == {"device": "cpu", "precision": "fp32", "compile": False, "world_size": 1,
                          "batch_size": 2, "grad_accum": 1, "effective_batch": 2, "backend": None}
    tuned = load(out)
    torch.testing.assert_close(tuned.ln_f.bias, base.ln_f.bias, atol=1e-6, rtol=0)   # lr 1e-9: barely moved


# ---- DDP: two CPU processes with gloo -----------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TINY = ["--text", str(TEXT), "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--n-ctx", "16",
        "--dropout", "0", "--steps", "6", "--eval-every", "3", "--eval-batches", "1", "--warmup", "2",
        "--lr", "5e-3", "--min-lr", "5e-4", "--seed", "11", "--device", "cpu", "--threads", "1"]


def torchrun(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "gpt2core.training.train", *TINY, *args]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process_and_resume(tmp_path):
    single = tmp_path / "single"
    assert main([*TINY, "--out", str(single), "--batch-size", "4"]) == 0
    ddp = tmp_path / "ddp"
    # Global batch 4 = 1 window x 2 micro-batches x 2 processes: accumulation and DDP at once.
    first = torchrun("--out", str(ddp), "--batch-size", "1", "--grad-accum", "2", "--until", "3")
    assert "effective batch 4 = 1 x 2 accumulation x 2 processes (gloo)" in first
    assert first.count("wrote ") == 1                    # rank 0 alone reports and writes
    assert sorted(p.name for p in ddp.iterdir()) == sorted(["config.json", WEIGHTS_FILE, OPTIM_FILE, LOG_FILE,
                                                            LOSS_PNG])
    assert json.loads((ddp / "config.json").read_text())["step"] == 3
    assert len(json.loads((ddp / LOG_FILE).read_text())["train"]) == 3   # one writer: no doubled entries
    second = torchrun("--out", str(ddp), "--batch-size", "1", "--grad-accum", "2", "--resume")
    assert "resumed at step 3" in second

    a, b = json.loads((single / LOG_FILE).read_text()), json.loads((ddp / LOG_FILE).read_text())
    assert [e["step"] for e in b["train"]] == list(range(1, 7))
    assert [e["loss"] for e in b["train"]] == pytest.approx([e["loss"] for e in a["train"]], rel=1e-5, abs=1e-6)
    assert [e["grad_norm"] for e in b["train"]] == pytest.approx([e["grad_norm"] for e in a["train"]], rel=1e-4)
    assert [e["val_loss"] for e in b["eval"]] == pytest.approx([e["val_loss"] for e in a["eval"]], rel=1e-5)
    assert b["run"]["world_size"] == 2 and b["run"]["effective_batch"] == 4 and b["run"]["backend"] == "gloo"
    ma, mb = load(single).state_dict(), load(ddp).state_dict()
    for k in ma:
        torch.testing.assert_close(mb[k], ma[k], rtol=1e-4, atol=5e-5)
