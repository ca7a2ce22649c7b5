"""gpt2core.kernels.native: the C decode step against the PyTorch model it accelerates."""
import threading
from pathlib import Path

import pytest
import torch

from gpt2core import GPT2, KVCache, capture, generate, get_config, stream
from gpt2core.kernels import native
from tests.conftest import perturbed

pytestmark = pytest.mark.skipif(native.library() is None, reason=f"no native library: {native.error()}")


CONFIGS = {
    "tiny": get_config("tiny"),
    # no q/k/v bias, an untied head, a width that is no multiple of 16, 3 heads of 12
    "odd": get_config("tiny", n_embd=36, n_head=3, n_layer=3, qkv_bias=False, tie_weights=False, n_ctx=40),
}


@pytest.mark.parametrize("K,N", [(64, 192), (36, 7), (37, 1000), (768, 50)])
@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_matvec_matches_torch(K, N, n_threads, bias):
    g = torch.Generator().manual_seed(K * N)
    x, w, b = torch.randn(K, generator=g), torch.randn(K, N, generator=g), torch.randn(N, generator=g)
    y = native.matvec(x, w, b if bias else None, n_threads=n_threads)
    ref = (x.double() @ w.double() + (b.double() if bias else 0)).float()
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("M,K,N", [(2, 64, 192), (7, 300, 37), (16, 768, 50), (65, 37, 1000), (13, 600, 16),
                                   (300, 520, 9), (130, 48, 2051)])
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(M, K, N, n_threads, bias):
    """Row blocks of 6 with a remainder, k blocks of 256 with a remainder, 16-column panels and a
    partial last one (or only that), with w packed for the call and packed ahead."""
    g = torch.Generator().manual_seed(M * K * N)
    x, w, b = torch.randn(M, K, generator=g), torch.randn(K, N, generator=g), torch.randn(N, generator=g)
    ref = (x.double() @ w.double() + (b.double() if bias else 0)).float()
    y = native.linear(x, w, b if bias else None, n_threads=n_threads)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-4)
    packed = native.pack(w)
    P = native.panel_width()
    assert packed.shape == ((N + P - 1) // P, K, P)
    assert torch.equal(native.linear(x, w, b if bias else None, n_threads=n_threads, packed=packed), y)


def test_pack_lays_out_column_panels_zero_padded():
    P = native.panel_width()
    flags = native.cpu_signature().split()
    assert P == (32 if "avx512f" in flags else 16)   # the build is -march=native
    w = torch.arange(3 * (P + 4), dtype=torch.float32).view(3, P + 4)
    packed = native.pack(w)
    assert packed.shape == (2, 3, P)
    assert torch.equal(packed[0], w[:, :P])
    assert torch.equal(packed[1, :, :4], w[:, P:]) and not packed[1, :, 4:].any()


def test_linear_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="linear wants"):
        native.linear(torch.ones(2, 3), torch.ones(4, 5))
    with pytest.raises(ValueError, match="not that of pack"):
        native.linear(torch.ones(2, 4), torch.ones(4, 5), packed=native.pack(torch.ones(4, native.panel_width() + 1)))


@pytest.mark.parametrize("shape", [(1, 1, 64), (2, 5, 36), (3, 768)])
def test_layer_norm_and_its_statistics(shape):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=g) * 3 + 1
    d = shape[-1]
    w, b = torch.randn(d, generator=g), torch.randn(d, generator=g)
    out, stats = native.layer_norm(x, w, b, 1e-5, ["in_mean", "in_var", "normalized", "out_mean", "out_var"])
    torch.testing.assert_close(out, torch.nn.functional.layer_norm(x, (d,), w, b, 1e-5), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats["in_mean"], x.mean(-1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats["in_var"], x.var(-1, unbiased=False), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats["normalized"], torch.nn.functional.layer_norm(x, (d,), eps=1e-5),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats["out_mean"], out.mean(-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats["out_var"], out.var(-1, unbiased=False), rtol=1e-5, atol=1e-5)
    only_out, none = native.layer_norm(x, w, b, 1e-5)
    assert none == {} and torch.equal(only_out, out)


def test_modules_use_native_kernels_only_without_autograd(monkeypatch):
    monkeypatch.setenv("GPT2_KERNELS", "native")   # not left to the measured choice
    model = perturbed(CONFIGS["tiny"])
    calls = []
    for name in ("linear", "layer_norm"):
        real = getattr(native, name)
        monkeypatch.setattr(native, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        fast = model(ids)
    L = model.config.n_layer
    assert calls.count("linear") == 4 * L + 1 and calls.count("layer_norm") == 2 * L + 1
    calls.clear()
    slow = model(ids)          # grad enabled, parameters require grad: torch's kernels, with backward
    assert calls == [] and slow.requires_grad
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-5, atol=1e-5)


def test_matvec_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="matvec wants"):
        native.matvec(torch.ones(3), torch.ones(4, 5))


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_step_logits_and_cache_match_the_forward(name, n_threads):
    cfg = CONFIGS[name]
    model = perturbed(cfg)
    ids = torch.randint(0, cfg.vocab_size, (1, 24), generator=torch.Generator().manual_seed(2))
    prefill = 5
    with torch.no_grad():
        full = model(ids)[0]                                                    # (T, V)
        ref_cache = KVCache(cfg, 1)
        model(ids, kv_cache=ref_cache)
        cache = KVCache(cfg, 1)
        model(ids[:, :prefill], kv_cache=cache)
    assert native.Decoder.supports(model, cache)
    dec = native.Decoder(model, cache, n_threads=n_threads)
    for t in range(prefill, ids.shape[1]):
        logits = dec.step(int(ids[0, t]))
        torch.testing.assert_close(logits, full[t], rtol=1e-5, atol=2e-5)
    assert cache.length == ids.shape[1] == ref_cache.length
    n = ids.shape[1]
    torch.testing.assert_close(cache.k[:, :, :, :n], ref_cache.k[:, :, :, :n], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache.v[:, :, :, :n], ref_cache.v[:, :, :, :n], rtol=1e-5, atol=1e-5)


def test_step_refuses_a_full_cache():
    cfg = CONFIGS["odd"]
    model = perturbed(cfg)
    cache = KVCache(cfg, 1, max_len=3)
    dec = native.Decoder(model, cache)
    for token in (1, 2, 3):
        dec.step(token)
    with pytest.raises(ValueError, match="outside"):
        dec.step(4)
    with pytest.raises(ValueError, match="outside"):
        native.Decoder(model, KVCache(cfg, 1)).step(cfg.vocab_size)


@pytest.mark.parametrize("name", CONFIGS)
def test_generation_is_the_same_with_and_without_the_native_step(name, monkeypatch):
    model = perturbed(CONFIGS[name])
    prompt = [11, 22, 33, 44]
    fast = generate(model, prompt, 30, temperature=0.0, stop_at_eot=False)
    fast_steps = list(stream(model, prompt, 12, temperature=0.8, top_k=50, seed=3, stop_at_eot=False))
    monkeypatch.setenv("GPT2_NATIVE", "0")
    assert not native.Decoder.supports(model, KVCache(model.config, 1))
    assert fast == generate(model, prompt, 30, temperature=0.0, stop_at_eot=False)
    slow_steps = list(stream(model, prompt, 12, temperature=0.8, top_k=50, seed=3, stop_at_eot=False))
    assert [s.token_id for s in fast_steps] == [s.token_id for s in slow_steps]
    for a, b in zip(fast_steps, slow_steps):
        assert a.prob == pytest.approx(b.prob, rel=1e-4, abs=1e-7)
        assert a.sampled_prob == pytest.approx(b.sampled_prob, rel=1e-4, abs=1e-7)


def test_generation_uses_the_native_step(monkeypatch):
    monkeypatch.setenv("GPT2_KERNELS", "native")   # no timing runs of the step
    model = perturbed(CONFIGS["tiny"])
    calls = []
    real = native.Decoder.step
    monkeypatch.setattr(native.Decoder, "step", lambda self, token: calls.append(token) or real(self, token))
    out = generate(model, [1, 2, 3], 6, temperature=0.0, stop_at_eot=False)
    assert calls == out[:-1]   # the prompt goes through the PyTorch forward, each new token through C


def test_hooks_see_every_step_while_capturing(monkeypatch):
    """The C step has no hook points, so under capture generation runs the PyTorch forward."""
    model = perturbed(CONFIGS["tiny"])
    monkeypatch.setattr(native.Decoder, "step", lambda self, token: pytest.fail("native step under capture"))
    seen = []
    with capture([], hooks={"blocks.0.attn.hook_pattern": lambda t, n: seen.append(tuple(t.shape))}):
        generate(model, [1, 2, 3], 4, temperature=0.0, stop_at_eot=False)
    nh = model.config.n_head
    assert seen == [(1, nh, 3, 3), (1, nh, 1, 4), (1, nh, 1, 5), (1, nh, 1, 6)]


def test_unsupported_models_fall_back():
    cfg = CONFIGS["tiny"]
    model = perturbed(cfg)
    assert not native.Decoder.supports(model, None)
    assert not native.Decoder.supports(model, KVCache(cfg, 2))                     # batch of 2
    assert not native.Decoder.supports(model, KVCache(cfg, 1, dtype=torch.float64))
    assert not native.Decoder.supports(model.double(), KVCache(cfg, 1, dtype=torch.float64))
    with_dropout = perturbed(get_config("tiny", dropout=0.1)).train()
    assert not native.Decoder.supports(with_dropout, KVCache(cfg, 1))
    assert native.Decoder.supports(with_dropout.eval(), KVCache(cfg, 1))


def test_no_compiler_means_pytorch(monkeypatch):
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_error", None)
    monkeypatch.setattr(native, "_compiler", lambda: None)
    assert native.library() is None
    assert "no C compiler" in native.error()
    model = perturbed(CONFIGS["tiny"])
    assert not native.Decoder.supports(model, KVCache(model.config, 1))
    assert len(generate(model, [1, 2], 5, temperature=0.0, stop_at_eot=False)) == 5


def test_a_failed_build_is_reported(monkeypatch, tmp_path):
    bad = tmp_path / "kernels.c"
    bad.write_text("this is not C\n")
    monkeypatch.setattr(native, "SOURCE", bad)
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_error", None)
    monkeypatch.setenv("GPT2_EXPLORER_CACHE", str(tmp_path / "cache"))
    assert native.library() is None
    assert "failed" in native.error()
    assert not list((tmp_path / "cache").glob("*.so"))   # no half-built library left behind


def test_concurrent_generations_do_not_mix():
    model = perturbed(CONFIGS["tiny"])
    prompts = [[i, i + 1, i + 2] for i in range(0, 40, 5)]
    expected = [generate(model, p, 20, temperature=0.0, stop_at_eot=False) for p in prompts]
    results = {}

    def run(i):
        results[i] = generate(model, prompts[i], 20, temperature=0.0, stop_at_eot=False)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(prompts))] == expected


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps")
def test_one_openmp_runtime_in_the_process():
    """The library must share torch's OpenMP threads, not bring a second pool to fight them."""
    maps = Path("/proc/self/maps").read_text().splitlines()
    gomp = {line.split()[-1] for line in maps if "libgomp" in line}
    assert len(gomp) == 1, gomp


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="glibc's mallopt, on Linux")
def test_retain_freed_memory_is_accepted_by_glibc():
    assert native.retain_freed_memory() is True


def test_gelu_matches_the_formula():
    from gpt2core.reference.model import gelu
    g = torch.Generator().manual_seed(5)
    x = torch.cat([torch.randn(10_001, generator=g) * 4, torch.linspace(-30, 30, 999),
                   torch.tensor([0.0, 1e-8, -1e-8, 100.0, -100.0, 1e30, -1e30])])
    y = native.gelu(x)
    torch.testing.assert_close(y, gelu(x.double()).float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y, torch.nn.functional.gelu(x, approximate="tanh"), rtol=1e-5, atol=1e-6)
    inf = float("inf")
    assert native.gelu(torch.tensor([inf, -inf] * 5)).tolist() == [inf, 0.0] * 5   # the limits
    assert torch.isnan(native.gelu(torch.tensor([float("nan")] * 9))).all()
    strided = x[:11000].view(-1, 11)[:, :5]                                          # not contiguous
    assert torch.equal(native.gelu(strided), native.gelu(strided.contiguous()))


@pytest.mark.parametrize("B,T,nh,hs", [(1, 5, 4, 16), (2, 9, 3, 12), (1, 33, 2, 64), (1, 100, 3, 20), (2, 50, 5, 64)])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_attention_matches_the_formula(B, T, nh, hs, n_threads, monkeypatch):
    """Blocks of 6 queries and panels of 16 keys with remainders, a head size that is no multiple of 16."""
    monkeypatch.setattr(native, "threads", lambda: n_threads)
    d = nh * hs
    qkv = torch.randn(B, T, 3 * d, generator=torch.Generator().manual_seed(T)) * 2
    z, scores, pattern = native.attention(qkv, nh, scores=True, pattern=True)
    q, k, v = (t.view(B, T, nh, hs).transpose(1, 2).double() for t in qkv.split(d, dim=2))
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    ref_scores = (q @ k.transpose(-2, -1) / hs ** 0.5).masked_fill(future, float("-inf"))
    ref_pattern = torch.softmax(ref_scores, -1)
    ref_z = (ref_pattern @ v).transpose(1, 2).reshape(B, T, d)
    torch.testing.assert_close(scores, ref_scores.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pattern, ref_pattern.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z, ref_z.float(), rtol=1e-5, atol=1e-5)
    assert torch.isneginf(scores[..., future]).all() and (pattern[..., future] == 0).all()
    z_only, none_s, none_p = native.attention(qkv, nh)
    assert none_s is None and none_p is None and torch.equal(z_only, z)


def test_attention_refuses_a_width_the_heads_do_not_divide():
    with pytest.raises(ValueError, match="attention wants"):
        native.attention(torch.ones(1, 3, 30), 4)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_capture_records_the_same_attention_as_pytorch(monkeypatch, n_threads):
    monkeypatch.setattr(native, "threads", lambda: n_threads)   # the suite runs torch on one thread
    monkeypatch.setenv("GPT2_KERNELS", "native")
    model = perturbed(CONFIGS["odd"])
    ids = torch.randint(0, 50257, (2, 11), generator=torch.Generator().manual_seed(4))
    names = ["blocks.*.attn.*", "blocks.1.ln_2.*", "blocks.*.mlp.*"]
    fast_logits, fast = model.run_with_cache(ids, names=names)
    monkeypatch.setenv("GPT2_NATIVE", "0")
    slow_logits, slow = model.run_with_cache(ids, names=names)
    assert set(fast) == set(slow)
    for name in slow:
        torch.testing.assert_close(fast[name], slow[name], rtol=1e-5, atol=2e-5, msg=name)
    torch.testing.assert_close(fast_logits, slow_logits, rtol=1e-5, atol=2e-5)


def test_the_portable_build_without_avx2(monkeypatch, tmp_path):
    """csrc/kernels.c has AVX2 paths and plain-C ones for other CPUs; build the plain ones and check them."""
    import platform
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("-march=x86-64 is an x86 flag")
    flags = [f for f in native._FLAGS if not f.startswith("-march")] + ["-march=x86-64"]   # no AVX2, no FMA
    monkeypatch.setattr(native, "_FLAGS", flags)
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_error", None)
    monkeypatch.setenv("GPT2_EXPLORER_CACHE", str(tmp_path))
    assert native.library() is not None, native.error()
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 7, 36, generator=g)
    from gpt2core.reference.model import gelu
    torch.testing.assert_close(native.gelu(x * 4), gelu((x * 4).double()).float(), rtol=1e-5, atol=1e-6)
    qkv = torch.randn(2, 9, 3 * 64, generator=g)
    z, scores, pattern = native.attention(qkv, 1, scores=True, pattern=True)
    q, k, v = (t.unsqueeze(1).double() for t in qkv.split(64, dim=2))
    future = torch.ones(9, 9, dtype=torch.bool).triu(1)
    ref = torch.softmax((q @ k.transpose(-2, -1) / 8).masked_fill(future, float("-inf")), -1)
    torch.testing.assert_close(pattern, ref.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z, (ref @ v).squeeze(1).float(), rtol=1e-5, atol=1e-5)
    test_linear_matches_torch(7, 300, 37, 2, True)
    test_step_logits_and_cache_match_the_forward("tiny", 2)
