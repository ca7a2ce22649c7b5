"""gpt2core.analysis.trace: the steps of one forward pass, read off one capture, checked against the model."""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gpt2core import GPT2, encode, get_config, save
from gpt2core.analysis.trace import Step, format_log, trace
from tests.conftest import ROOT

TEXT = "The cat sat on the mat because the cat was tired."


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(3)
    model = GPT2(get_config("tiny", n_layer=3, n_head=4, n_embd=32)).eval()
    with torch.no_grad():   # LayerNorms away from (1, 0), so a wrong γ/β would show
        for name, p in model.named_parameters():
            if "ln_" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.fixture(scope="module")
def ids():
    return encode(TEXT)


@pytest.mark.parametrize("position", [0, 4, -1])
def test_residual_after_each_block_equals_the_captured_resid_post(tiny, ids, position):
    tr = trace(tiny, ids, position)
    _, cache = tiny.run_with_cache(ids, names=["blocks.*.hook_resid_post", "blocks.*.hook_resid_mid"])
    t = tr.position
    for i in range(tiny.config.n_layer):
        torch.testing.assert_close(tr.step(f"blocks.{i}.resid_post").vector, cache[f"blocks.{i}.hook_resid_post"][t])
        torch.testing.assert_close(tr.step(f"blocks.{i}.resid_mid").vector, cache[f"blocks.{i}.hook_resid_mid"][t])
        assert tr.blocks[i].norm_out == pytest.approx(float(cache[f"blocks.{i}.hook_resid_post"][t].norm()), rel=1e-5)


@pytest.mark.parametrize("position", [0, 5, -1])
def test_final_logits_equal_the_models(tiny, ids, position):
    tr = trace(tiny, ids, position)
    with torch.no_grad():
        logits = tiny(torch.tensor([ids]))[0, tr.position]                       # (vocab,)
    torch.testing.assert_close(tr.logits, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tr.step("final.logits").vector, logits, atol=1e-5, rtol=1e-5)
    top = tr.step("final.probs").notes["top"]
    p = torch.softmax(logits.double(), -1)
    want = p.topk(5)
    assert [j for j, _, _ in top] == want.indices.tolist()
    np.testing.assert_allclose([pr for _, _, pr in top], want.values.numpy(), rtol=1e-5)


def test_summarised_blocks_give_the_same_norms_and_no_steps(tiny, ids):
    full, one = trace(tiny, ids, 3), trace(tiny, ids, 3, blocks=[1])
    assert one.expanded == [1] and one.block_steps(0) == [] and one.block_steps(2) == []
    assert len(one.block_steps(1)) == 16
    for a, b in zip(full.blocks, one.blocks):
        assert a.norm_in == pytest.approx(b.norm_in, rel=1e-5) and a.norm_out == pytest.approx(b.norm_out, rel=1e-5)
    torch.testing.assert_close(one.logits, full.logits)


def test_steps_are_in_forward_order_with_the_models_shapes(tiny, ids):
    tr = trace(tiny, ids, 2, blocks=[0])
    T, d, nh, hs, V = len(ids), 32, 4, 8, tiny.config.vocab_size
    got = [(s.key, s.shape, tuple(s.vector.shape)) for s in tr.steps]
    assert got == [
        ("embed.wte", (T, d), (d,)), ("embed.wpe", (T, d), (d,)), ("embed.sum", (T, d), (d,)),
        ("blocks.0.ln_1", (T, d), (d,)), ("blocks.0.attn.q", (nh, T, hs), (nh, hs)),
        ("blocks.0.attn.k", (nh, T, hs), (nh, hs)), ("blocks.0.attn.v", (nh, T, hs), (nh, hs)),
        ("blocks.0.attn.scores", (nh, T, T), (nh, T)), ("blocks.0.attn.masked", (nh, T, T), (nh, T)),
        ("blocks.0.attn.pattern", (nh, T, T), (nh, T)), ("blocks.0.attn.z", (nh, T, hs), (nh, hs)),
        ("blocks.0.attn.heads", (T, d), (d,)), ("blocks.0.attn.c_proj", (T, d), (d,)),
        ("blocks.0.resid_mid", (T, d), (d,)), ("blocks.0.ln_2", (T, d), (d,)),
        ("blocks.0.mlp.c_fc", (T, 4 * d), (4 * d,)), ("blocks.0.mlp.gelu", (T, 4 * d), (4 * d,)),
        ("blocks.0.mlp.c_proj", (T, d), (d,)), ("blocks.0.resid_post", (T, d), (d,)),
        ("final.ln_f", (T, d), (d,)), ("final.logits", (T, V), (V,)), ("final.probs", (T, V), (V,))]


def test_derived_steps_match_a_hand_computation_from_the_weights(tiny, ids):
    """Embedding sum, ln_1 (with γ, β), scores, mask, softmax and the head concat of block 0, by hand."""
    t = 4
    tr = trace(tiny, ids, t, blocks=[0])
    w, b0 = tiny, tiny.blocks[0]
    with torch.no_grad():
        x = w.wte.weight[ids] + w.wpe.weight[:len(ids)]                          # (T, d)
        h = F.layer_norm(x, (32,), b0.ln_1.weight, b0.ln_1.bias, b0.ln_1.eps)     # (T, d)
        q, k, v = b0.attn.c_attn(h).split(32, dim=-1)                             # 3 x (T, d)
        q, k, v = (a.view(-1, 4, 8).transpose(0, 1) for a in (q, k, v))            # (nh, T, hs)
        s = q @ k.transpose(-1, -2) / math.sqrt(8)                                 # (nh, T, T)
        p = torch.softmax(s.masked_fill(torch.ones_like(s, dtype=torch.bool).triu(1), -math.inf), -1)
        z = (p @ v).transpose(0, 1).reshape(len(ids), 32)                          # (T, d)
    torch.testing.assert_close(tr.step("embed.wte").vector, w.wte.weight[ids[t]])
    torch.testing.assert_close(tr.step("embed.wpe").vector, w.wpe.weight[t])
    torch.testing.assert_close(tr.step("embed.sum").vector, x[t])
    torch.testing.assert_close(tr.step("blocks.0.ln_1").vector, h[t], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tr.step("blocks.0.attn.scores").vector, s[:, t], atol=1e-5, rtol=1e-5)
    masked = tr.step("blocks.0.attn.masked")
    assert torch.isinf(masked.vector[:, t + 1:]).all() and torch.isfinite(masked.vector[:, :t + 1]).all()
    assert masked.notes == dict(masked_keys=len(ids) - 1 - t, visible_keys=t + 1)
    torch.testing.assert_close(tr.step("blocks.0.attn.pattern").vector, p[:, t], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tr.step("blocks.0.attn.heads").vector, z[t], atol=1e-5, rtol=1e-5)
    notes = tr.step("blocks.0.ln_1").notes
    assert notes["mean_in"] == pytest.approx(float(x[t].mean()), abs=1e-6)
    assert notes["std_in"] == pytest.approx(float(x[t].std(unbiased=False)), rel=1e-4)
    assert notes["std_out"] == pytest.approx(float(h[t].std(unbiased=False)), rel=1e-4)


def test_stats_skip_masked_entries_and_match_numpy():
    v = torch.tensor([[1.0, -2.0, -math.inf], [3.0, 0.5, -math.inf]])
    s = Step("x", "x", "x", (2, 3), v).stats
    finite = np.array([1.0, -2.0, 3.0, 0.5])
    assert s == pytest.approx(dict(mean=finite.mean(), std=finite.std(), min=-2.0, max=3.0,
                                   norm=float(np.linalg.norm(finite))))


def test_bad_positions_and_blocks_are_refused(tiny, ids):
    for bad in (len(ids), -len(ids) - 1):
        with pytest.raises(ValueError, match="outside"):
            trace(tiny, ids, bad)
    with pytest.raises(ValueError, match="blocks must be"):
        trace(tiny, ids, 0, blocks=[3])
    with pytest.raises(ValueError, match="no tokens"):
        trace(tiny, [], 0)


def test_log_lists_every_step_with_its_shape(tiny, ids):
    tr = trace(tiny, ids, -1, blocks=[2])
    log = format_log(tr)
    for s in tr.steps:
        assert s.key in log
    assert "[block 0]" in log and "(not expanded)" in log and "[block 2]" in log
    assert f"shape ({len(ids)}, 4, 8)" not in log and f"shape (4, {len(ids)}, 8)" in log
    assert f"{tr.blocks[0].norm_out:.4f}" in log


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "gpt2core.analysis.trace", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_cli_help_and_a_trace_on_a_saved_model(tiny, tmp_path):
    helped = _cli("--help")
    assert helped.returncode == 0 and "--position" in helped.stdout and "--block" in helped.stdout
    save(tiny, tmp_path / "m")
    run = _cli("To be, or not to be", "--weights", str(tmp_path / "m"), "--position", "2", "--block", "1")
    assert run.returncode == 0, run.stderr
    want = format_log(trace(tiny, encode("To be, or not to be"), 2, blocks=[1]))
    assert run.stdout == want
    bad = _cli("To be", "--weights", str(tmp_path / "m"), "--position", "9")
    assert bad.returncode == 2 and "outside" in bad.stderr


@pytest.mark.skipif(not (ROOT / "checkpoints" / "shakespeare" / "model.safetensors").is_file(),
                    reason="no bundled checkpoint")
def test_cli_defaults_to_the_bundled_model():
    run = _cli("To be, or not to be")
    assert run.returncode == 0, run.stderr
    first = run.stdout.splitlines()[0]
    assert "n_layer 6" in first and "n_embd 128" in first
    assert run.stdout.count("[block ") == 6 and "(not expanded)" not in run.stdout
