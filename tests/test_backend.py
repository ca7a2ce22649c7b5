"""gpt2core.kernels.backend: the per-op choice (forced either way, or measured), the packed weights, the precisions."""
import copy
import json
import threading
import time

import pytest
import torch

from gpt2core import GPT2, get_config
from gpt2core.kernels import backend, native
from gpt2core.reference.model import Linear
from tests.conftest import perturbed

pytestmark = pytest.mark.skipif(native.library() is None, reason=f"no native library: {native.error()}")

NATIVE_FUNCS = ("linear", "matvec", "layer_norm", "gelu", "attention")


@pytest.fixture
def calls(monkeypatch):
    """The native kernels each call ran, by name."""
    seen = []
    for name in NATIVE_FUNCS:
        real = getattr(native, name)
        monkeypatch.setattr(native, name, lambda *a, _real=real, _name=name, **k: seen.append(_name) or _real(*a, **k))
    return seen


@pytest.fixture
def fresh_choices(monkeypatch, tmp_path):
    """Choices measured anew and saved to a file of this test's own."""
    path = tmp_path / "choices.json"
    monkeypatch.setattr(backend, "_choices_file", lambda: path)
    monkeypatch.setattr(backend, "_choices", {})
    monkeypatch.setattr(backend, "_choices_loaded", False)
    return path


IDS = torch.randint(0, 50257, (2, 13), generator=torch.Generator().manual_seed(3))


def test_dispatch_forced_either_way_gives_the_same_numbers(monkeypatch, calls):
    model = perturbed(get_config("tiny", n_embd=48, n_head=4, n_layer=2))
    monkeypatch.setenv("GPT2_KERNELS", "native")
    fast_logits, fast = model.run_with_cache(IDS)
    ran_native = set(calls)
    calls.clear()
    monkeypatch.setenv("GPT2_KERNELS", "torch")
    slow_logits, slow = model.run_with_cache(IDS)
    assert ran_native == {"linear", "layer_norm", "gelu", "attention"} and calls == []
    assert set(fast) == set(slow)
    for name in slow:   # the backend keeps every hook tensor equal, to float rounding
        torch.testing.assert_close(fast[name], slow[name], rtol=1e-5, atol=2e-5, msg=name)
    torch.testing.assert_close(fast_logits, slow_logits, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("kernels", ["native", "torch"])
def test_capture_is_bit_equal_to_the_plain_forward_under_each_choice(monkeypatch, kernels):
    monkeypatch.setenv("GPT2_KERNELS", kernels)
    model = perturbed(get_config("tiny"))
    with torch.no_grad():
        plain = model(IDS)
    logits, cache = model.run_with_cache(IDS)
    assert torch.equal(logits, plain)
    _, some = model.run_with_cache(IDS, names=["blocks.0.attn.hook_pattern", "blocks.1.ln_1.hook_in_var"])
    assert torch.equal(some["blocks.0.attn.hook_pattern"], cache["blocks.0.attn.hook_pattern"])
    assert torch.equal(some["blocks.1.ln_1.hook_in_var"], cache["blocks.1.ln_1.hook_in_var"])


def test_one_op_forced_the_others_left(monkeypatch, calls):
    monkeypatch.setenv("GPT2_KERNELS", "linear=torch,gelu=torch,attention=native,layer_norm=native")
    model = perturbed(get_config("tiny"))
    model.run_with_cache(IDS)
    assert set(calls) == {"attention", "layer_norm"}


def test_a_bad_setting_is_refused(monkeypatch):
    monkeypatch.setenv("GPT2_KERNELS", "linear=fast")
    with pytest.raises(ValueError, match="GPT2_KERNELS"):
        backend.setting("linear")
    monkeypatch.setenv("GPT2_KERNELS", "softmax=torch")
    with pytest.raises(ValueError, match="op one of"):
        backend.setting("linear")
    monkeypatch.setenv("GPT2_NATIVE", "0")
    monkeypatch.setenv("GPT2_KERNELS", "native")
    assert backend.setting("linear") == "torch"   # GPT2_NATIVE=0 turns the native kernels off altogether


def test_auto_measures_each_shape_once_and_keeps_the_faster(monkeypatch, fresh_choices, calls):
    monkeypatch.setenv("GPT2_KERNELS", "auto")
    model = perturbed(get_config("tiny"))
    timed = []
    real_time = backend._time
    monkeypatch.setattr(backend, "_time", lambda c, **k: timed.append(1) or real_time(c, **k))
    model.run_with_cache(IDS)
    first = len(timed)
    made = backend.choices()
    assert first == len(made) > 0
    assert {key.split(":")[0] for key in made} == {"linear", "layer_norm", "gelu", "attention"}
    for key, entry in made.items():
        faster = "native" if entry["native_ms"] < entry["torch_ms"] else "torch"
        assert entry["use"] == faster, key
    model.run_with_cache(IDS)
    assert len(timed) == first                      # the same shapes: no new measurement
    saved = json.loads(fresh_choices.read_text())
    assert saved["cpu"] == native.cpu_signature() and saved["choices"] == made
    # A new process reads the file instead of measuring.
    monkeypatch.setattr(backend, "_choices", {})
    monkeypatch.setattr(backend, "_choices_loaded", False)
    monkeypatch.setattr(backend, "_time", lambda c, **k: pytest.fail("measured again"))
    model.run_with_cache(IDS)
    assert backend.choices() == made


def test_a_slower_native_kernel_is_not_used(monkeypatch, fresh_choices, calls):
    monkeypatch.setenv("GPT2_KERNELS", "auto")
    model = perturbed(get_config("tiny"))
    for native_s, torch_s, use in ((2.0, 1.0, "torch"), (1.0, 1.0, "torch"), (1.0, 2.0, "native")):
        monkeypatch.setattr(backend, "_choices", {})
        monkeypatch.setattr(backend, "_time", lambda c, **k: {"native": native_s, "torch": torch_s})
        calls.clear()
        with torch.no_grad():
            model(IDS)
        assert {e["use"] for e in backend._choices.values()} == {use}
        assert (calls == []) == (use == "torch")


def test_choices_from_another_cpu_are_not_read(monkeypatch, fresh_choices):
    fresh_choices.write_text(json.dumps({"cpu": "some other cpu", "choices": {"gelu:n1x256": {
        "use": "native", "native_ms": 1, "torch_ms": 2}}}))
    assert "gelu:n1x256" not in backend.choices()


def test_size_classes():
    assert [backend.size_class(n) for n in (1, 2, 3, 16, 17, 256, 1024, 1025)] == [
        "1", "<=2", "<=4", "<=16", "<=32", "<=256", "<=1024", ">1024"]


def test_linear_repacks_when_its_weight_changes(monkeypatch):
    """The packed copy the backend keeps follows the weight: edited in place, loaded, replaced."""
    monkeypatch.setenv("GPT2_KERNELS", "native")
    torch.manual_seed(0)
    lin = Linear(40, 24).eval()
    with torch.no_grad():
        lin.weight.normal_()   # a bare Linear is left empty: GPT2 initialises its weights
    x = torch.randn(5, 40)
    expect = lambda: (x.double() @ lin.weight.double().t() + lin.bias.double()).float()  # noqa: E731
    with torch.no_grad():
        torch.testing.assert_close(lin(x), expect(), rtol=1e-5, atol=1e-5)
        key = backend.pack_key(lin.weight, "native")
        lin(x)
        assert key is not None and backend.pack_key(lin.weight, "native") == key   # kept while unchanged
        for change in (lambda: lin.weight.__setitem__((3, 7), lin.weight[3, 7] + 10.0),            # in place
                       lambda: lin.load_state_dict({"weight": torch.randn(24, 40), "bias": torch.randn(24)}),
                       lambda: setattr(lin, "weight", torch.nn.Parameter(torch.randn(40, 24).t()))):  # replaced
            key = backend.pack_key(lin.weight, "native")
            change()
            torch.testing.assert_close(lin(x), expect(), rtol=1e-5, atol=1e-5)
            assert backend.pack_key(lin.weight, "native") not in (None, key)   # ran natively, on a new pack
        twin = copy.deepcopy(lin)
        assert backend.pack_key(twin.weight, "native") is None   # a copy doesn't carry the packed weight
        torch.testing.assert_close(twin(x), lin(x), rtol=0, atol=0)


def test_concurrent_first_uses_pack_a_weight_once(monkeypatch):
    """Two requests meeting an unpacked weight share one packed copy (for gpt2 each is ~0.5 GB)."""
    lin = Linear(32, 48).eval()
    with torch.no_grad():
        lin.weight.normal_()
    made = []

    def slow_pack():
        made.append(1)
        time.sleep(0.2)            # long enough for the other thread to arrive while packing
        return native.pack(lin.weight.t())

    barrier, got = threading.Barrier(2), []

    def first_use():
        barrier.wait(timeout=10)
        got.append(backend.packed(lin.weight, "native", slow_pack))

    threads = [threading.Thread(target=first_use) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(made) == 1 and len(got) == 2 and got[0] is got[1]


def test_decode_step_follows_the_choice(monkeypatch):
    from gpt2core import KVCache
    model = perturbed(get_config("tiny"))
    cache = KVCache(model.config, 1)
    with torch.no_grad():
        model(torch.tensor([[5, 6, 7]]), kv_cache=cache)
    monkeypatch.setenv("GPT2_KERNELS", "decode=torch")
    assert backend.decoder(model, cache, 8) is None
    monkeypatch.setenv("GPT2_KERNELS", "decode=native")
    assert isinstance(backend.decoder(model, cache, 8), native.Decoder)
    monkeypatch.setenv("GPT2_KERNELS", "auto")
    monkeypatch.setattr(backend, "_choices", {})
    monkeypatch.setattr(backend, "_choices_file", lambda: None)
    backend.decoder(model, cache, 8)              # timed both ways at position 3 ...
    assert cache.length == 3                       # ... and the cache left as it was
    with backend.precision("bf16"):
        assert backend.decoder(model, cache, 8) is None   # the C step is fp32 only


# ---- precisions -----------------------------------------------------------------------------------

def test_precisions_change_the_numbers_a_little_and_keep_fp32_tensors():
    model = perturbed(get_config("tiny", n_embd=64, n_head=4, n_layer=2))
    ref, ref_cache = model.run_with_cache(IDS)
    for prec, tol in (("bf16", 0.5), ("fp16", 0.05), ("int8", 1.0)):
        with backend.precision(prec):
            logits, cache = model.run_with_cache(IDS)
        assert all(t.dtype == torch.float32 for t in cache.values()) and logits.dtype == torch.float32
        err = (logits - ref).abs().max().item()
        assert 0 < err < tol * ref.abs().max().item(), (prec, err)
    assert backend.current_precision() == "fp32"
    logits, _ = model.run_with_cache(IDS)
    assert torch.equal(logits, ref)                 # fp32 is left exact


def test_fp16_rounds_each_product_to_half_precision():
    lin = Linear(24, 20).eval()
    with torch.no_grad():
        lin.weight.normal_()
        lin.bias.normal_()
    x = torch.randn(3, 24)
    with torch.no_grad(), backend.precision("fp16"):
        y = lin(x)
    assert torch.equal(y, y.half().float())
    x16, w16, b16 = x.half().float(), lin.weight.detach().half().float(), lin.bias.detach().half().float()
    torch.testing.assert_close(y, (x16 @ w16.t() + b16).half().float(), rtol=1e-3, atol=1e-3)


def test_int8_is_pytorchs_dynamic_quantisation():
    lin = Linear(40, 30).eval()
    ref = torch.nn.Linear(40, 30)
    with torch.no_grad():
        lin.weight.normal_()
        lin.bias.normal_()
        ref.weight.copy_(lin.weight)
        ref.bias.copy_(lin.bias)
    q = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(ref), {torch.nn.Linear}, dtype=torch.qint8)
    x = torch.randn(2, 7, 40)
    with torch.no_grad(), backend.precision("int8"):
        y = lin(x)
        assert torch.equal(y, q(x))
        lin.bias.add_(1.0)                          # the quantised layer is remade for a new bias
        torch.testing.assert_close(lin(x), q(x) + 1.0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_bf16_products_are_bfloat16_products(bias, monkeypatch):
    """torch's bf16 products (GPT2_BF16=native; the emulation of a CPU without bf16 units, which leaves the
    output in fp32: tests/test_bf16_emulation.py)."""
    monkeypatch.setenv("GPT2_BF16", "native")
    lin = Linear(64, 48, bias=bias).eval()
    with torch.no_grad():
        lin.weight.normal_()
        if bias:
            lin.bias.normal_()
    x = torch.randn(2, 5, 64)
    with torch.no_grad(), backend.precision("bf16"):
        y = lin(x)
    assert y.dtype == torch.float32 and torch.equal(y, y.bfloat16().float())   # a bf16 result
    exact = x.bfloat16().double() @ lin.weight.detach().bfloat16().double().t()
    if bias:
        exact = exact + lin.bias.detach().bfloat16().double()
    # The product of the bf16-rounded inputs, accumulated in fp32 and rounded once to bf16 (8 bits).
    torch.testing.assert_close(y.double(), exact, rtol=2 ** -7, atol=1e-3)
    assert not torch.equal(y, lin(x))           # and not the fp32 product


def test_a_models_precision_and_the_callers(monkeypatch):
    model = perturbed(get_config("tiny"))
    with torch.no_grad():
        ref = model(IDS)
        model.precision = "bf16"
        as_bf16 = model(IDS)
        with backend.precision("fp32"):            # the caller's choice wins over the model's
            assert torch.equal(model(IDS), ref)
        with backend.precision("bf16"):
            assert torch.equal(model(IDS), as_bf16)
    assert not torch.equal(as_bf16, ref)
    with pytest.raises(ValueError, match="precision must be one of"):
        with backend.precision("fp8"):
            pass


def test_precision_is_per_thread():
    seen = {}
    inside, done = threading.Event(), threading.Event()

    def other():
        inside.wait(5)
        seen["other"] = backend.current_precision()
        done.set()

    t = threading.Thread(target=other)
    t.start()
    with backend.precision("int8"):
        inside.set()
        done.wait(5)
        seen["here"] = backend.current_precision()
    t.join(5)
    assert seen == {"other": "fp32", "here": "int8"}


def test_weight_bytes():
    model = GPT2(get_config("tiny"))
    n = model.num_params()
    assert backend.weight_bytes(model, "fp32") == 4 * n
    assert backend.weight_bytes(model, "bf16") == backend.weight_bytes(model, "fp16") == 2 * n
    lin = [m for m in model.modules() if isinstance(m, Linear)]
    linear_w = {id(m.weight): m.weight.numel() for m in lin}
    tied = model.wte.weight.numel()                 # the embedding keeps fp32 beside the int8 head
    other = n - sum(linear_w.values()) + tied
    assert backend.weight_bytes(model, "int8") == 4 * other + sum(w + 8 for w in linear_w.values())


def test_bf16_units_says_why():
    has, why = backend.bf16_units()
    flags = native.cpu_signature().split()
    assert has == ("amx_bf16" in flags or "avx512_bf16" in flags)
    assert ("no bf16 matrix units" in why) != has


@pytest.mark.parametrize("kernels", ["native", "torch"])
def test_a_prefill_fills_the_cache_as_the_reference_does(monkeypatch, kernels, calls):
    from gpt2core import KVCache
    model = perturbed(get_config("tiny"))
    ids = IDS[:1]
    monkeypatch.setenv("GPT2_KERNELS", "torch")
    ref_cache = KVCache(model.config, 1)
    with torch.no_grad():
        ref = model(ids, kv_cache=ref_cache)
        ref_next = model(torch.tensor([[9]]), kv_cache=ref_cache)
    calls.clear()
    monkeypatch.setenv("GPT2_KERNELS", kernels)
    cache = KVCache(model.config, 1)
    with torch.no_grad():
        logits = model(ids, kv_cache=cache)
        following = model(torch.tensor([[9]]), kv_cache=cache)
    assert ("attention" in calls) == (kernels == "native")
    T = ids.shape[1]
    torch.testing.assert_close(cache.k[:, :, :, :T + 1], ref_cache.k[:, :, :, :T + 1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache.v[:, :, :, :T + 1], ref_cache.v[:, :, :, :T + 1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(following, ref_next, rtol=1e-5, atol=2e-5)
