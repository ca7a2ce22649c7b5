"""bf16 on a CPU without bf16 units (gpt2core.kernels.backend, GPT2_BF16): each product's operands rounded to
bf16 and multiplied in fp32, what a bf16 unit computes. This CPU may have the units, so GPT2_BF16 forces the
emulation here and _bf16_unit_names is replaced to play a CPU without them."""
import math

import numpy as np
import pytest
import torch

from gpt2core import get_config
from gpt2core.analysis.precision import ErrorReport
from gpt2core.kernels import backend, native
from gpt2core.reference.model import Linear
from tests.conftest import perturbed

IDS = torch.randint(0, 50257, (2, 40), generator=torch.Generator().manual_seed(3))
KERNELS = ["torch", pytest.param("native", marks=pytest.mark.skipif(
    native.library() is None, reason=f"no native library: {native.error()}"))]


@pytest.fixture
def emulated_calls(monkeypatch):
    """How many times the emulated product ran."""
    seen = []
    real = backend._bf16_emulated_linear
    monkeypatch.setattr(backend, "_bf16_emulated_linear", lambda *a: seen.append(1) or real(*a))
    return seen


def run(model, precision, mode=None, monkeypatch=None):
    if mode is not None:
        monkeypatch.setenv("GPT2_BF16", mode)
    with torch.no_grad(), backend.precision(precision):
        logits, cache = model.run_with_cache(IDS)
    patterns = torch.stack([cache[f"blocks.{i}.attn.hook_pattern"] for i in range(model.config.n_layer)])
    return logits, patterns


def bf16_ulp(x: float) -> float:
    """The spacing of bfloat16 numbers (8 significant bits) at |x|."""
    return 2.0 ** (math.floor(math.log2(abs(x))) - 7)


@pytest.mark.parametrize("kernels", KERNELS)
def test_emulated_model_is_within_bf16s_tolerance_of_real_bf16(monkeypatch, kernels):
    """Both runs round the same operands to bf16 and accumulate in fp32; the real path (torch, oneDNN) also
    rounds each output to bf16, the emulation leaves it in fp32 (within half a bf16 step). So the two differ by
    about one bf16 step of the logits at most, and on average by less than bf16 differs from fp32 (measured on
    this model: 1.0 step; 0.81 of bf16's mean error; attention 0.96 of bf16's largest error)."""
    monkeypatch.setenv("GPT2_KERNELS", kernels)
    model = perturbed(get_config("tiny", n_embd=128, n_head=4, n_layer=4))
    ref, ref_pat = run(model, "fp32")
    real, real_pat = run(model, "bf16", "native", monkeypatch)
    emu, emu_pat = run(model, "bf16", "emulate", monkeypatch)
    assert emu.dtype == torch.float32 and emu_pat.dtype == torch.float32
    d_real, d_emu = (real - ref).abs(), (emu - real).abs()
    assert d_real.max() > 0 and not torch.equal(emu, ref)          # both are bf16 runs, not fp32's
    assert d_emu.max() <= 2 * bf16_ulp(real.abs().max().item())
    assert d_emu.mean() < d_real.mean()
    assert (emu - ref).abs().mean() < d_real.mean()                # no further from fp32 than bf16 is
    a_real, a_emu = (real_pat - ref_pat).abs(), (emu_pat - real_pat).abs()
    assert a_real.max() > 0
    assert a_emu.max() <= 1.5 * a_real.max() and a_emu.mean() <= a_real.mean()


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [1, 7])
def test_emulated_product_is_the_rounded_operands_product(monkeypatch, kernels, bias, rows, emulated_calls):
    """y = bf16(x) @ bf16(W)^T + bf16(b) in fp32: equal to that reference up to fp32's rounding of the sums,
    and within half a bf16 step of the real bf16 path (oneDNN), which rounds the output."""
    monkeypatch.setenv("GPT2_KERNELS", kernels)
    monkeypatch.setenv("GPT2_BF16", "emulate")
    torch.manual_seed(1)
    lin = Linear(96, 80, bias=bias).eval()
    with torch.no_grad():
        lin.weight.normal_()
        if bias:
            lin.bias.normal_()
    x = torch.randn(rows, 96) * 3
    with torch.no_grad(), backend.precision("bf16"):
        y = lin(x)
    assert len(emulated_calls) == 1
    assert y.dtype == torch.float32
    xr, wr = x.bfloat16().float(), lin.weight.detach().bfloat16().float()
    br = lin.bias.detach().bfloat16().float() if bias else torch.zeros(80)
    ref = xr @ wr.t() + br                                                          # fp32
    # fp32 sums in another order differ by at most K * 2^-24 * sum|terms|
    sums = 96 * 2.0 ** -24 * (xr.abs() @ wr.abs().t() + br.abs())
    assert ((y - ref).abs() <= sums).all()
    with torch.no_grad():
        fp32 = lin(x)
        real = torch.nn.functional.linear(x.bfloat16(), lin.weight.detach().bfloat16(),
                                          lin.bias.detach().bfloat16() if bias else None).float()
    assert not torch.equal(y, fp32)                                  # the operands were rounded
    # the real path rounds the same sum to bf16: at most half a bf16 step (2^-8 of its size) away
    assert ((y - real).abs() <= 2.0 ** -8 * (y.abs() + sums) + sums).all()


@pytest.mark.parametrize("kernels", KERNELS)
def test_the_rounded_weight_is_made_once_per_version(monkeypatch, kernels):
    monkeypatch.setenv("GPT2_KERNELS", kernels)
    monkeypatch.setenv("GPT2_BF16", "emulate")
    made = []
    real = backend._bf16_rounded
    monkeypatch.setattr(backend, "_bf16_rounded", lambda t: made.append(tuple(t.shape)) or real(t))
    lin = Linear(64, 48).eval()
    with torch.no_grad():
        lin.weight.normal_()
    x = torch.randn(5, 64)
    with torch.no_grad(), backend.precision("bf16"):
        first = lin(x)
        key = backend.pack_key(lin.weight, "bf16-emulated")
        second = lin(x)
        assert torch.equal(first, second) and backend.pack_key(lin.weight, "bf16-emulated") == key
        # the weight and the bias once, then the input of each call
        assert made.count((64, 48)) == 1 and made.count((48,)) == 1 and made.count((5, 64)) == 2
        lin.weight.mul_(2)                                          # an edit: the copy is remade
        third = lin(x)
    assert made.count((64, 48)) == 2 and backend.pack_key(lin.weight, "bf16-emulated") != key
    assert not torch.equal(third, first)


def test_the_switch_picks_the_path(monkeypatch, emulated_calls):
    monkeypatch.setenv("GPT2_KERNELS", "torch")
    model = perturbed(get_config("tiny"))
    n_linear = sum(isinstance(m, Linear) for m in model.modules())
    # fp32 never emulates, whatever the switch says
    monkeypatch.setenv("GPT2_BF16", "emulate")
    run(model, "fp32")
    assert emulated_calls == []
    run(model, "bf16")
    assert len(emulated_calls) == n_linear
    weights = [m.weight for m in model.modules() if isinstance(m, Linear)]
    assert all(backend.pack_key(w, "bf16") is None for w in weights)   # the real bf16 copies were never made
    # native: torch's bf16 kernels, even on a CPU without units
    emulated_calls.clear()
    monkeypatch.setattr(backend, "_bf16_unit_names", lambda: ())
    run(model, "bf16", "native", monkeypatch)
    assert emulated_calls == [] and all(backend.pack_key(w, "bf16") is not None for w in weights)
    # auto: emulated exactly where the CPU has no bf16 units, and never on a GPU
    monkeypatch.setenv("GPT2_BF16", "auto")
    assert backend.bf16_emulated() and backend.bf16_emulated("cpu") and not backend.bf16_emulated("cuda")
    run(model, "bf16")
    assert len(emulated_calls) == n_linear
    emulated_calls.clear()
    monkeypatch.setattr(backend, "_bf16_unit_names", lambda: ("AVX512-BF16",))
    assert not backend.bf16_emulated()
    run(model, "bf16")
    assert emulated_calls == []
    monkeypatch.delenv("GPT2_BF16")                                     # unset is auto
    assert backend.bf16_setting() == "auto"
    monkeypatch.setenv("GPT2_BF16", "fast")
    with pytest.raises(ValueError, match="GPT2_BF16"):
        backend.bf16_emulated()


def test_bf16_units_and_the_status_line_say_what_is_done(monkeypatch):
    from explorer.compute.precision import status_markdown
    report = ErrorReport("bf16", 12, 0.02, 1.0, 0.001, (0, 0, 1, 0), np.zeros(12), np.ones(12, bool))
    monkeypatch.setattr(backend, "_bf16_unit_names", lambda: ())
    monkeypatch.delenv("GPT2_BF16", raising=False)
    has, why = backend.bf16_units()
    assert not has and "no bf16 matrix units" in why
    assert "rounded to bf16" in why and "multiplied and accumulated in fp32" in why and "fp32's speed" in why
    line = status_markdown(report, "bf16", "this prompt", (has, why))
    assert "No bf16 units: operands rounded to bf16, multiplied in fp32" in line and why in line
    assert "won't be faster" not in line and "slower" not in line

    monkeypatch.setenv("GPT2_BF16", "native")                      # forced: torch emulates the units, slowly
    has, why = backend.bf16_units()
    assert not has and "slower than fp32" in why
    line = status_markdown(report, "bf16", "this prompt", (has, why))
    assert "slower than fp32" in line and "operands rounded" not in line

    monkeypatch.setattr(backend, "_bf16_unit_names", lambda: ("AMX-BF16",))
    monkeypatch.setenv("GPT2_BF16", "auto")
    has, why = backend.bf16_units()
    assert has and "AMX-BF16" in why and "rounded" not in why
    line = status_markdown(report, "bf16", "this prompt", (has, why))
    assert why in line and "multiplied in fp32" not in line
    monkeypatch.setenv("GPT2_BF16", "emulate")
    has, why = backend.bf16_units()
    assert has and "GPT2_BF16=emulate" in why and "rounded to bf16" in why
    assert "GPT2_BF16=emulate: operands rounded to bf16, multiplied in fp32" in status_markdown(
        report, "bf16", "this prompt", (has, why))
    # not bf16, or not on the CPU: no such sentence
    assert "bf16" not in status_markdown(report, "fp16", "this prompt", (has, why)).split("**.")[-1]
    assert "rounded" not in status_markdown(report, "bf16", "this prompt", None)
