"""gpt2core.reference.hooks and GPT2.run_with_cache: names, shapes, filters, values, cleanup, threads."""
import fnmatch
import threading

import pytest
import torch
import torch.nn.functional as F

from gpt2core import GPT2, get_config
from gpt2core.reference import hooks
from gpt2core.reference.hooks import capture

LN_HOOKS = ["hook_in_mean", "hook_in_var", "hook_normalized", "hook_out_mean", "hook_out_var"]
ATTN_HOOKS = ["hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z"]


def expected_hook_names(n_layer: int) -> list[str]:
    """Written out from the architecture, not read from the model."""
    names = ["hook_embed", "hook_pos_embed"]
    for i in range(n_layer):
        b = f"blocks.{i}"
        names.append(f"{b}.hook_resid_pre")
        names += [f"{b}.ln_1.{h}" for h in LN_HOOKS]
        names += [f"{b}.attn.{h}" for h in ATTN_HOOKS]
        names += [f"{b}.hook_attn_out", f"{b}.hook_resid_mid"]
        names += [f"{b}.ln_2.{h}" for h in LN_HOOKS]
        names += [f"{b}.mlp.hook_pre", f"{b}.mlp.hook_post", f"{b}.hook_mlp_out", f"{b}.hook_resid_post"]
    names += [f"ln_f.{h}" for h in LN_HOOKS]
    return names


def expected_shapes(T: int, d=64, nh=4, n_layer=2) -> dict[str, tuple]:
    hs = d // nh
    shapes = {"hook_embed": (T, d), "hook_pos_embed": (T, d)}
    ln = lambda p: {f"{p}.hook_in_mean": (T,), f"{p}.hook_in_var": (T,), f"{p}.hook_normalized": (T, d),  # noqa: E731
                    f"{p}.hook_out_mean": (T,), f"{p}.hook_out_var": (T,)}
    for i in range(n_layer):
        b = f"blocks.{i}"
        shapes.update(ln(f"{b}.ln_1"))
        shapes.update(ln(f"{b}.ln_2"))
        shapes.update({
            f"{b}.hook_resid_pre": (T, d), f"{b}.hook_attn_out": (T, d), f"{b}.hook_resid_mid": (T, d),
            f"{b}.hook_mlp_out": (T, d), f"{b}.hook_resid_post": (T, d),
            f"{b}.attn.hook_q": (nh, T, hs), f"{b}.attn.hook_k": (nh, T, hs), f"{b}.attn.hook_v": (nh, T, hs),
            f"{b}.attn.hook_attn_scores": (nh, T, T), f"{b}.attn.hook_pattern": (nh, T, T),
            f"{b}.attn.hook_z": (T, nh, hs),
            f"{b}.mlp.hook_pre": (T, 4 * d), f"{b}.mlp.hook_post": (T, 4 * d),
        })
    shapes.update(ln("ln_f"))
    return shapes




@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT2(get_config("tiny")).eval()
    with torch.no_grad():   # LayerNorms and biases away from (1, 0) so every term matters
        for name, p in m.named_parameters():
            if "ln_" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.5)
    return m


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 50257, (11,), generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def full(model, ids):
    return model.run_with_cache(ids)


# ---- names and shapes ------------------------------------------------------------------------

def test_hook_names_exact(model):
    expected = expected_hook_names(2)
    assert len(expected) == 2 + 2 * 23 + 5 == 53
    assert len(model.hook_names) == len(set(model.hook_names))
    assert sorted(model.hook_names) == sorted(expected)


def test_full_capture_has_every_hook_with_its_shape(full, ids):
    logits, cache = full
    T = len(ids)
    assert logits.shape == (T, 50257)
    shapes = expected_shapes(T)
    assert sorted(cache) == sorted(expected_hook_names(2)) == sorted(shapes)
    for name, shape in shapes.items():
        assert tuple(cache[name].shape) == shape, name
        assert not cache[name].requires_grad


def test_batched_shapes_keep_the_batch_axis(model):
    idx = torch.randint(0, 50257, (3, 6), generator=torch.Generator().manual_seed(8))
    logits, cache = model.run_with_cache(idx, names=lambda n: n != "hook_pos_embed")
    assert logits.shape == (3, 6, 50257)
    for name, shape in expected_shapes(6).items():
        if name != "hook_pos_embed":
            assert tuple(cache[name].shape) == (3, *shape), name


def test_batched_pos_embed_has_the_batch_axis(model):
    idx = torch.randint(0, 50257, (3, 6), generator=torch.Generator().manual_seed(8))
    _, cache = model.run_with_cache(idx, names="hook_pos_embed")
    assert tuple(cache["hook_pos_embed"].shape) == (3, 6, 64)


# ---- names filter ----------------------------------------------------------------------------

@pytest.mark.parametrize("names", [
    "blocks.0.attn.hook_pattern",
    ["hook_embed", "blocks.1.hook_resid_post", "ln_f.hook_out_var"],
    "*hook_pattern",
    ["blocks.1.*"],
    ["blocks.?.ln_1.hook_in_mean", "hook_embed"],
    "*.ln_[12].hook_out_*",
    ["no_such_hook"],
    [],
])
def test_names_filter_captures_only_what_is_asked(model, ids, full, names):
    _, cache = model.run_with_cache(ids, names=names)
    patterns = [names] if isinstance(names, str) else names
    expected = {n for n in expected_hook_names(2) if any(fnmatch.fnmatchcase(n, p) for p in patterns)}
    assert set(cache) == expected
    for name in expected:
        assert torch.equal(cache[name], full[1][name]), name


def test_callable_filter(model, ids):
    _, cache = model.run_with_cache(ids, names=lambda n: n.endswith("hook_z"))
    assert set(cache) == {"blocks.0.attn.hook_z", "blocks.1.attn.hook_z"}


def test_exact_names_are_not_substrings(model, ids):
    _, cache = model.run_with_cache(ids, names=["hook_pattern", "blocks.0.attn"])
    assert cache == {}


# ---- values ----------------------------------------------------------------------------------

def test_logits_identical_with_and_without_capture(model, ids, full):
    with torch.no_grad():
        plain = model(ids[None])[0]
    assert torch.equal(full[0], plain)
    assert torch.equal(model.run_with_cache(ids, names="blocks.0.ln_1.hook_out_mean")[0], plain)
    assert torch.equal(model.run_with_cache(ids, names=[])[0], plain)
    batch = torch.stack([ids, ids.flip(0)])
    with torch.no_grad():
        assert torch.equal(model.run_with_cache(batch)[0], model(batch))


def test_pattern_is_causal_and_normalised(full, ids):
    T = len(ids)
    above = torch.ones(T, T, dtype=torch.bool).triu(1)
    for i in range(2):
        pattern = full[1][f"blocks.{i}.attn.hook_pattern"]
        torch.testing.assert_close(pattern.sum(-1), torch.ones(4, T), atol=1e-6, rtol=0)
        assert torch.all(pattern[:, above] == 0)
        assert torch.all(pattern[:, ~above] > 0)
        assert torch.all(pattern[:, 0, 0] == 1)   # the first token can only look at itself


def test_scores_are_minus_inf_exactly_where_masked(full, ids):
    T = len(ids)
    above = torch.ones(T, T, dtype=torch.bool).triu(1)
    for i in range(2):
        scores = full[1][f"blocks.{i}.attn.hook_attn_scores"]
        assert torch.equal(torch.isneginf(scores), above.expand(4, T, T))
        assert torch.isfinite(scores[:, ~above]).all()


def test_scores_softmaxed_equal_pattern(full):
    for i in range(2):
        scores, pattern = full[1][f"blocks.{i}.attn.hook_attn_scores"], full[1][f"blocks.{i}.attn.hook_pattern"]
        torch.testing.assert_close(torch.softmax(scores.double(), -1).float(), pattern, atol=1e-6, rtol=1e-5)


def test_cached_values_agree_with_an_independent_forward(model, ids, full):
    """Recompute every activation from the parameters with torch.nn.functional."""
    _, c = full
    T, d, nh, hs = len(ids), 64, 4, 16
    atol = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c["hook_embed"], model.wte.weight[ids].detach(), atol=0, rtol=0)
    torch.testing.assert_close(c["hook_pos_embed"], model.wpe.weight[:T].detach(), atol=0, rtol=0)
    x = c["hook_embed"] + c["hook_pos_embed"]
    with torch.no_grad():
        for i, blk in enumerate(model.blocks):
            b = f"blocks.{i}"
            torch.testing.assert_close(c[f"{b}.hook_resid_pre"], x, **atol)
            for ln_name, ln, inp in (("ln_1", blk.ln_1, x),):
                check_ln(c, f"{b}.{ln_name}", ln, inp)
            h = F.layer_norm(x, (d,), blk.ln_1.weight, blk.ln_1.bias, 1e-5)
            q, k, v = F.linear(h, blk.attn.c_attn.weight, blk.attn.c_attn.bias).split(d, -1)
            q, k, v = (t.reshape(T, nh, hs).transpose(0, 1) for t in (q, k, v))
            for name, t in (("q", q), ("k", k), ("v", v)):
                torch.testing.assert_close(c[f"{b}.attn.hook_{name}"], t, **atol)
            scores = q @ k.transpose(-1, -2) / hs ** 0.5
            mask = torch.ones(T, T, dtype=torch.bool).tril()
            torch.testing.assert_close(c[f"{b}.attn.hook_attn_scores"][:, mask], scores[:, mask], **atol)
            pattern = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1)
            torch.testing.assert_close(c[f"{b}.attn.hook_pattern"], pattern, **atol)
            z = (pattern @ v).transpose(0, 1)                       # (T, nh, hs)
            torch.testing.assert_close(c[f"{b}.attn.hook_z"], z, **atol)
            attn_out = F.linear(z.reshape(T, d), blk.attn.c_proj.weight, blk.attn.c_proj.bias)
            torch.testing.assert_close(c[f"{b}.hook_attn_out"], attn_out, **atol)
            x = x + attn_out
            torch.testing.assert_close(c[f"{b}.hook_resid_mid"], x, **atol)
            check_ln(c, f"{b}.ln_2", blk.ln_2, x)
            h = F.layer_norm(x, (d,), blk.ln_2.weight, blk.ln_2.bias, 1e-5)
            pre = F.linear(h, blk.mlp.c_fc.weight, blk.mlp.c_fc.bias)
            torch.testing.assert_close(c[f"{b}.mlp.hook_pre"], pre, **atol)
            post = F.gelu(pre, approximate="tanh")
            torch.testing.assert_close(c[f"{b}.mlp.hook_post"], post, **atol)
            mlp_out = F.linear(post, blk.mlp.c_proj.weight, blk.mlp.c_proj.bias)
            torch.testing.assert_close(c[f"{b}.hook_mlp_out"], mlp_out, **atol)
            x = x + mlp_out
            torch.testing.assert_close(c[f"{b}.hook_resid_post"], x, **atol)
        check_ln(c, "ln_f", model.ln_f, x)
        logits = F.layer_norm(x, (d,), model.ln_f.weight, model.ln_f.bias, 1e-5) @ model.wte.weight.T
        torch.testing.assert_close(full[0], logits, **atol)


def check_ln(c, prefix, ln, x):
    atol = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c[f"{prefix}.hook_in_mean"], x.mean(-1), **atol)
    torch.testing.assert_close(c[f"{prefix}.hook_in_var"], x.var(-1, unbiased=False), **atol)
    torch.testing.assert_close(c[f"{prefix}.hook_normalized"], F.layer_norm(x, x.shape[-1:], eps=1e-5), **atol)
    out = F.layer_norm(x, x.shape[-1:], ln.weight, ln.bias, 1e-5)
    torch.testing.assert_close(c[f"{prefix}.hook_out_mean"], out.mean(-1), **atol)
    torch.testing.assert_close(c[f"{prefix}.hook_out_var"], out.var(-1, unbiased=False), **atol)


def test_activation_cache_stack(full):
    stacked = full[1].stack("blocks.{}.attn.hook_pattern", 2)
    assert stacked.shape == (2, 4, 11, 11)
    assert torch.equal(stacked[1], full[1]["blocks.1.attn.hook_pattern"])


# ---- cleanup ---------------------------------------------------------------------------------

def test_capture_state_removed_after_the_call(model, ids):
    calls = []
    _, cache = model.run_with_cache(ids, names="hook_embed", hooks={"blocks.0.hook_resid_pre": lambda t, n: calls.append(n)})
    assert calls == ["blocks.0.hook_resid_pre"]
    assert not hooks.capture_active()
    snapshot = dict(cache)
    with torch.no_grad():
        model(ids[None])
    assert calls == ["blocks.0.hook_resid_pre"]      # the hook is gone
    assert list(cache) == ["hook_embed"] and cache["hook_embed"] is snapshot["hook_embed"]


def test_capture_state_removed_after_an_exception_in_a_hook(model, ids):
    calls = []

    def boom(t, name):
        raise RuntimeError("boom in " + name)

    with pytest.raises(RuntimeError, match="boom in blocks.1.attn.hook_pattern"):
        model.run_with_cache(ids, hooks={"hook_embed": lambda t, n: calls.append(n),
                                         "blocks.1.attn.hook_pattern": boom})
    assert calls == ["hook_embed"]
    assert not hooks.capture_active()
    assert hooks._ACTIVE.get() is None
    with torch.no_grad():
        after = model(ids[None])[0]
    assert calls == ["hook_embed"]                     # a normal forward runs no hook
    assert torch.equal(after, model.run_with_cache(ids, names=[])[0])

    # the same with the context manager: the store of the failed capture receives nothing more
    with pytest.raises(RuntimeError):
        with capture(hooks={"blocks.0.hook_mlp_out": boom}) as store:
            with torch.no_grad():
                model(ids[None])
    n_recorded = len(store)
    assert 0 < n_recorded < len(expected_hook_names(2))
    with torch.no_grad():
        model(ids[None])
    assert len(store) == n_recorded and not hooks.capture_active()


def test_nested_capture_restores_the_outer_one(model, ids):
    with capture(names="hook_embed") as outer:
        with capture(names="ln_f.hook_in_mean") as inner:
            with torch.no_grad():
                model(ids[None])
        assert set(inner) == {"ln_f.hook_in_mean"} and outer == {}
        with torch.no_grad():
            model(ids[None])
        assert set(outer) == {"hook_embed"}
    assert not hooks.capture_active()


# ---- editing hooks ---------------------------------------------------------------------------

def test_hook_zeroing_a_head_changes_logits(model, ids, full):
    def zero_head_1(pattern, name):
        pattern = pattern.clone()
        pattern[:, 1] = 0
        return pattern

    logits, cache = model.run_with_cache(ids, hooks={"blocks.0.attn.hook_pattern": zero_head_1},
                                         names=["blocks.0.attn.hook_pattern", "blocks.0.attn.hook_z",
                                                "blocks.0.attn.hook_v"])
    assert not torch.allclose(logits, full[0], atol=1e-4)
    # the stored pattern is the edited one, and the head's output is zero
    assert torch.all(cache["blocks.0.attn.hook_pattern"][1] == 0)
    assert torch.all(cache["blocks.0.attn.hook_z"][:, 1] == 0)
    # the other heads are untouched (an editing hook runs the PyTorch attention, the plain capture the
    # native kernel: the same numbers to float rounding)
    torch.testing.assert_close(cache["blocks.0.attn.hook_pattern"][0], full[1]["blocks.0.attn.hook_pattern"][0],
                               rtol=1e-6, atol=1e-7)
    # independent: the same edit done by hand on the attention output gives the same logits
    z = full[1]["blocks.0.attn.hook_z"].clone()
    z[:, 1] = 0
    blk = model.blocks[0]
    with torch.no_grad():
        x = full[1]["blocks.0.hook_resid_pre"] + blk.attn.c_proj(z.reshape(len(ids), 64))
        x = x + blk.mlp(blk.ln_2(x))
        x = model.blocks[1](x[None])[0]
        expected = model.lm_head(model.ln_f(x))
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_hook_returning_none_changes_nothing(model, ids, full):
    seen = []
    logits, _ = model.run_with_cache(ids, names=[], hooks={
        "blocks.1.mlp.hook_post": [lambda t, n: seen.append(n)] * 2})
    assert seen == ["blocks.1.mlp.hook_post"] * 2
    assert torch.equal(logits, full[0])


def test_hooks_apply_in_order(model, ids):
    logits, cache = model.run_with_cache(ids, names="hook_embed", hooks={"hook_embed": [
        lambda t, n: t * 0, lambda t, n: t + 1]})
    assert torch.all(cache["hook_embed"] == 1)


# ---- threads ---------------------------------------------------------------------------------

def _run_threads(targets):
    errors = []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
        return run

    threads = [threading.Thread(target=wrap(fn)) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    if errors:
        raise errors[0]


def assert_same_cache(got, expected):
    assert set(got) == set(expected)
    for name in expected:
        assert got[name].shape == expected[name].shape, name
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("filters", [(None, None), ("*hook_pattern", ["*resid*", "hook_embed"])])
def test_two_threads_capture_only_their_own(model, filters):
    reps = 20
    prompts = [torch.randint(0, 50257, (9,), generator=torch.Generator().manual_seed(10)),
               torch.randint(0, 50257, (14,), generator=torch.Generator().manual_seed(11))]
    reference = [model.run_with_cache(p, names=f) for p, f in zip(prompts, filters)]
    barrier = threading.Barrier(2)
    results = [[], []]
    hook_threads = [set(), set()]

    def worker(k):
        def run():
            me = threading.get_ident()
            for _ in range(reps):
                barrier.wait(timeout=60)
                results[k].append(model.run_with_cache(
                    prompts[k], names=filters[k],
                    hooks={"blocks.0.attn.hook_q": lambda t, n: hook_threads[k].add(threading.get_ident())}))
            hook_threads[k].add(("owner", me))
        return run

    _run_threads([worker(0), worker(1)])
    for k in range(2):
        assert len(results[k]) == reps
        owner = {x[1] for x in hook_threads[k] if isinstance(x, tuple)}
        assert {x for x in hook_threads[k] if not isinstance(x, tuple)} == owner   # hooks ran in own thread
        for logits, cache in results[k]:
            torch.testing.assert_close(logits, reference[k][0], atol=1e-6, rtol=1e-5)
            assert_same_cache(cache, reference[k][1])


def test_plain_forward_in_another_thread_gets_no_capture(model):
    reps = 20
    capturing = torch.randint(0, 50257, (10,), generator=torch.Generator().manual_seed(12))
    plain = torch.randint(0, 50257, (1, 13), generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        plain_ref = model(plain)
    cap_ref = model.run_with_cache(capturing)
    barrier = threading.Barrier(2)
    seen = []            # (thread ident, capture_active()) seen inside HookPoint forwards
    lock = threading.Lock()
    plain_out, cap_out = [], []
    hook_calls = []

    def observe(module, inputs, output):
        with lock:
            seen.append((threading.get_ident(), hooks.capture_active()))

    handle = model.blocks[1].hook_resid_mid.register_forward_hook(observe)
    idents = {}
    try:
        def capture_worker():
            idents["cap"] = threading.get_ident()
            for _ in range(reps):
                barrier.wait(timeout=60)
                cap_out.append(model.run_with_cache(
                    capturing, hooks={"hook_embed": lambda t, n: hook_calls.append(threading.get_ident())}))

        def plain_worker():
            idents["plain"] = threading.get_ident()
            for _ in range(reps):
                barrier.wait(timeout=60)
                with torch.no_grad():
                    plain_out.append(model(plain))

        _run_threads([capture_worker, plain_worker])
    finally:
        handle.remove()
    assert set(hook_calls) == {idents["cap"]} and len(hook_calls) == reps
    assert sorted(set(seen)) == sorted({(idents["cap"], True), (idents["plain"], False)})
    assert len(seen) == 2 * reps
    for out in plain_out:
        torch.testing.assert_close(out, plain_ref, atol=1e-6, rtol=1e-5)
    for logits, cache in cap_out:
        torch.testing.assert_close(logits, cap_ref[0], atol=1e-6, rtol=1e-5)
        assert_same_cache(cache, cap_ref[1])
    assert not hooks.capture_active()


def test_last_only_capture_keeps_every_position_in_the_hooks():
    """run_with_cache(last_only=True) computes the head for the last position, yet every hook
    (ln_f included) still holds every position, equal to a full run's."""
    torch.manual_seed(0)
    model = GPT2(get_config("tiny")).eval()
    ids = list(range(100, 120))
    full_logits, full = model.run_with_cache(ids)
    last_logits, last = model.run_with_cache(ids, last_only=True)
    assert last_logits.shape == (1, model.config.vocab_size)
    torch.testing.assert_close(last_logits[0], full_logits[-1], rtol=0, atol=1e-5)
    assert set(last) == set(full)
    for name in full:
        torch.testing.assert_close(last[name], full[name], rtol=0, atol=0, msg=name)


# ---- edits -------------------------------------------------------------------------------------

@pytest.mark.parametrize("hook", ["hook_normalized", "hook_in_mean", "hook_in_var"])
def test_a_hook_that_edits_layer_norm_statistics_changes_the_output(model, ids, hook):
    """LayerNorm's fused path has no x_hat to edit, so an editing hook takes the written-out one."""
    name = f"blocks.0.ln_1.{hook}"
    logits, _ = model.run_with_cache(ids, names=[])
    same, _ = model.run_with_cache(ids, names=[], hooks={name: lambda t, n: None})   # observes only
    edited, _ = model.run_with_cache(ids, names=[], hooks={name: lambda t, n: t * 2})
    torch.testing.assert_close(same, logits, rtol=1e-5, atol=1e-5)
    assert (edited - logits).abs().max() > 1e-3
