"""gpt2core.decoding.generate and the KV cache: cache vs no cache, the context window, EOT, the stream."""
import copy

import pytest
import torch

from gpt2core import EOT_ID, GPT2, KVCache, generate, get_config, stream
from gpt2core.text.tokenizer import token_bytes



@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT2(get_config("tiny")).eval()
    with torch.no_grad():   # enough structure that greedy decoding does not repeat one token
        for name, p in m.named_parameters():
            if name.startswith("blocks.") and ("ln_" in name or name.endswith(".bias")):
                p.add_(torch.randn_like(p) * 0.5)
            if name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
                p.mul_(20)
        m.wte.weight.mul_(10)
    return m


@pytest.fixture(scope="module")
def plain_model():
    """GPT-2 initialisation with LayerNorms and biases moved off (1, 0): for logit comparisons."""
    torch.manual_seed(0)
    m = GPT2(get_config("tiny")).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "ln_" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.5)
    return m


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(0, 50257, (7,), generator=torch.Generator().manual_seed(1)).tolist()


def sampled_prob_reference(logits, temperature, top_k=None, top_p=None, token=None):
    """Probability of ``token`` after temperature, top-k, top-p, written out in float64."""
    if temperature == 0:
        return 1.0 if token == int(logits.argmax()) else 0.0
    x = logits.double() / temperature
    order = torch.argsort(x, descending=True, stable=True).tolist()
    if top_k:
        order = order[:top_k]
    probs = torch.softmax(x[order], -1).tolist()
    if top_p is not None and top_p < 1:
        mass, n = 0.0, 0
        for q in probs:
            n += 1
            mass += q
            if mass >= top_p:
                break
        order, probs = order[:n], probs[:n]
    total = sum(probs)
    probs = [q / total for q in probs]
    return dict(zip(order, probs)).get(token, 0.0)


def greedy_reference(model, ids, n):
    """No cache, no library helper: crop to n_ctx, argmax of the last position, append."""
    ids = list(ids)
    out = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids[-model.config.n_ctx:]]))[0, -1]
            token = int(logits.argmax())
            out.append(token)
            ids.append(token)
    return out


# ---- KV cache --------------------------------------------------------------------------------

def test_kv_cache_logits_match_full_forward(plain_model, prompt):
    """Per step: the cached incremental forward vs the model run on the whole growing sequence."""
    model = plain_model
    cache = KVCache(model.config, 1)
    ids = list(prompt)
    with torch.no_grad():
        first = model(torch.tensor([ids]), kv_cache=cache)
        torch.testing.assert_close(first, model(torch.tensor([ids])), atol=1e-5, rtol=0)
        assert cache.length == len(ids)
        g = torch.Generator().manual_seed(2)
        for _ in range(30):
            ids.append(int(torch.randint(0, 50257, (1,), generator=g)))
            step = model(torch.tensor([ids[-1:]]), kv_cache=cache)[0, -1]
            full = model(torch.tensor([ids]))[0, -1]
            torch.testing.assert_close(step, full, atol=1e-5, rtol=0)
            assert cache.length == len(ids)


@pytest.mark.parametrize("chunks", [[5, 5, 5], [1, 7, 3, 4], [15]])
def test_kv_cache_chunked_prefill(plain_model, chunks):
    """Several tokens at a time on top of a non-empty cache: the causal mask must be offset."""
    model = plain_model
    ids = torch.randint(0, 50257, (1, sum(chunks)), generator=torch.Generator().manual_seed(3))
    cache = KVCache(model.config, 1)
    outs, start = [], 0
    with torch.no_grad():
        for n in chunks:
            outs.append(model(ids[:, start:start + n], kv_cache=cache))
            start += n
        full = model(ids)
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=0)


def test_kv_cache_batch(plain_model):
    model = plain_model
    ids = torch.randint(0, 50257, (3, 12), generator=torch.Generator().manual_seed(4))
    cache = KVCache(model.config, 3)
    with torch.no_grad():
        a = model(ids[:, :8], kv_cache=cache)
        b = model(ids[:, 8:], kv_cache=cache)
        torch.testing.assert_close(torch.cat([a, b], 1), model(ids), atol=1e-5, rtol=0)


def test_kv_cache_refuses_overflow(model):
    cache = KVCache(model.config, 1)
    with torch.no_grad():
        model(torch.zeros(1, 120, dtype=torch.long), kv_cache=cache)
        with pytest.raises(ValueError):
            model(torch.zeros(1, 9, dtype=torch.long), kv_cache=cache)
    assert KVCache(model.config, 1, max_len=10_000).max_len == 128


def test_greedy_same_tokens_with_and_without_cache(model, prompt):
    expected = greedy_reference(model, prompt, 25)
    with_cache = generate(model, prompt, 25, temperature=0, use_cache=True, stop_at_eot=False)
    without = generate(model, prompt, 25, temperature=0, use_cache=False, stop_at_eot=False)
    assert with_cache == without == expected
    assert len(set(expected)) > 1   # not a degenerate repeat of one token


@pytest.mark.parametrize("settings", [dict(temperature=1.0), dict(temperature=0.8, top_k=40),
                                      dict(temperature=1.2, top_p=0.9), dict(temperature=0.7, top_k=100, top_p=0.8)])
def test_seeded_sampling_same_tokens_with_and_without_cache(model, prompt, settings):
    a = generate(model, prompt, 25, seed=1234, use_cache=True, stop_at_eot=False, **settings)
    b = generate(model, prompt, 25, seed=1234, use_cache=False, stop_at_eot=False, **settings)
    c = generate(model, prompt, 25, seed=1234, use_cache=True, stop_at_eot=False, **settings)
    d = generate(model, prompt, 25, seed=4321, use_cache=True, stop_at_eot=False, **settings)
    assert a == b == c
    assert a != d
    assert len(a) == 25


def test_seed_does_not_touch_the_global_rng(model, prompt):
    torch.manual_seed(99)
    before = torch.rand(3)
    torch.manual_seed(99)
    generate(model, prompt, 5, seed=7, stop_at_eot=False)
    assert torch.equal(torch.rand(3), before)


# ---- past the context window -----------------------------------------------------------------

def test_generation_past_the_context_window(model):
    prompt = torch.randint(0, 50257, (120,), generator=torch.Generator().manual_seed(5)).tolist()
    expected = greedy_reference(model, prompt, 20)
    with_cache = generate(model, prompt, 20, temperature=0, use_cache=True, stop_at_eot=False)
    without = generate(model, prompt, 20, temperature=0, use_cache=False, stop_at_eot=False)
    assert len(with_cache) == 20
    assert with_cache == without == expected
    sampled = [generate(model, prompt, 20, temperature=1.0, top_k=50, seed=3, use_cache=u, stop_at_eot=False)
               for u in (True, False)]
    assert sampled[0] == sampled[1] and len(sampled[0]) == 20


def test_prompt_longer_than_the_context(model):
    prompt = torch.randint(0, 50257, (140,), generator=torch.Generator().manual_seed(6)).tolist()
    expected = greedy_reference(model, prompt, 5)
    assert generate(model, prompt, 5, temperature=0, use_cache=True, stop_at_eot=False) == expected
    assert generate(model, prompt, 5, temperature=0, use_cache=False, stop_at_eot=False) == expected


# ---- EOT -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def eot_model(model):
    """A copy whose head strongly prefers <|endoftext|>: ln_f outputs a constant vector c, and the
    (tied) embedding row of EOT is c, so its logit is |c|^2 = 64 and every other is ~N(0, 1)."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.ln_f.weight.zero_()
        m.ln_f.bias.fill_(1.0)
        m.wte.weight.normal_(0, 0.125, generator=torch.Generator().manual_seed(0))
        m.wte.weight[EOT_ID] = 1.0
    return m


def test_eot_model_prefers_eot(eot_model, model, prompt):
    with torch.no_grad():
        probs = torch.softmax(eot_model(torch.tensor([prompt]))[0, -1], -1)
    assert probs[EOT_ID] > 0.999
    assert model.ln_f.bias.ne(1.0).any()   # the original is untouched


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("settings", [dict(temperature=0), dict(temperature=1.0, seed=0)])
def test_stops_at_eot(eot_model, prompt, use_cache, settings):
    assert generate(eot_model, prompt, 10, use_cache=use_cache, stop_at_eot=True, **settings) == [EOT_ID]
    steps = list(stream(eot_model, prompt, 10, use_cache=use_cache, **settings))
    assert len(steps) == 1 and steps[0].is_eot and steps[0].token_id == EOT_ID


@pytest.mark.parametrize("use_cache", [True, False])
def test_does_not_stop_at_eot_when_told_not_to(eot_model, prompt, use_cache):
    out = generate(eot_model, prompt, 10, temperature=0, use_cache=use_cache, stop_at_eot=False)
    assert out == [EOT_ID] * 10
    steps = list(stream(eot_model, prompt, 4, temperature=0, use_cache=use_cache, stop_at_eot=False))
    assert [s.is_eot for s in steps] == [True] * 4


def test_no_eot_without_it(model, prompt):
    steps = list(stream(model, prompt, 15, temperature=0, stop_at_eot=True))
    assert len(steps) == 15 and not any(s.is_eot for s in steps)


# ---- the stream ------------------------------------------------------------------------------

@pytest.mark.parametrize("settings", [dict(temperature=0), dict(temperature=0.9, top_k=30, top_p=0.9, seed=5),
                                      dict(temperature=1.0, seed=6)])
def test_stream_steps(model, prompt, settings):
    n_alt = 6
    steps = list(stream(model, prompt, 12, stop_at_eot=False, n_alternatives=n_alt, **settings))
    assert [s.index for s in steps] == list(range(12))
    ids = list(prompt)
    with torch.no_grad():
        for s in steps:
            logits = model(torch.tensor([ids]))[0, -1]
            probs = torch.softmax(logits.double(), -1)  # independent of the stream's own softmax
            assert 0 < s.prob <= 1 and 0 < s.sampled_prob <= 1
            assert s.prob == pytest.approx(probs[s.token_id].item(), rel=1e-4, abs=1e-9)
            assert s.token_bytes == token_bytes(s.token_id)
            assert not s.is_eot
            assert len(s.alternatives) == n_alt
            alt_ids = [i for i, _ in s.alternatives]
            alt_probs = [p for _, p in s.alternatives]
            assert len(set(alt_ids)) == n_alt
            assert alt_probs == sorted(alt_probs, reverse=True)
            assert all(0 < p <= 1 for p in alt_probs)
            top = torch.topk(probs, n_alt)
            assert set(alt_ids) == set(top.indices.tolist())
            for i, p in s.alternatives:
                assert p == pytest.approx(probs[i].item(), rel=1e-4)
            if settings["temperature"] == 0:
                assert s.token_id == alt_ids[0] and s.sampled_prob == 1.0
            expected = sampled_prob_reference(logits, settings["temperature"], settings.get("top_k"),
                                              settings.get("top_p"), s.token_id)
            assert s.sampled_prob == pytest.approx(expected, rel=1e-3, abs=1e-9)
            ids.append(s.token_id)
    assert [s.token_id for s in steps] == generate(model, prompt, 12, stop_at_eot=False, **settings)


def test_stream_accepts_a_tensor_prompt(model, prompt):
    a = generate(model, torch.tensor(prompt), 5, temperature=0, stop_at_eot=False)
    assert a == generate(model, prompt, 5, temperature=0, stop_at_eot=False)


def test_zero_new_tokens(model, prompt):
    assert generate(model, prompt, 0) == []


# ---- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("empty", [[], (), torch.tensor([], dtype=torch.long)], ids=["list", "tuple", "tensor"])
def test_empty_prompt_raises_value_error(model, empty):
    with pytest.raises(ValueError, match="prompt"):
        generate(model, empty, 5)
    with pytest.raises(ValueError):
        next(stream(model, empty, 5))


@pytest.mark.parametrize("bad", [dict(max_new_tokens=-1), dict(max_new_tokens=2.5), dict(max_new_tokens=True),
                                 dict(temperature=-1), dict(top_k=-3), dict(top_p=0)])
def test_invalid_arguments_raise_value_error(model, prompt, bad):
    kwargs = {"max_new_tokens": 3, **bad}
    with pytest.raises(ValueError):
        next(stream(model, prompt, **kwargs))


def test_a_suspended_stream_leaves_grad_mode_alone():
    """A server resumes generators on pool threads: a yield inside no_grad would leave that
    thread with grad disabled, and a later training request on it would fail."""
    torch.manual_seed(0)
    model = GPT2(get_config("tiny")).eval()
    it = stream(model, [1, 2, 3], 3, temperature=0.0)
    assert torch.is_grad_enabled()
    next(it)
    assert torch.is_grad_enabled(), "grad mode leaked out of a suspended stream"
    list(it)
    assert torch.is_grad_enabled()


def test_next_token_distribution_matches_the_models_last_logits():
    from gpt2core import next_token_distribution

    torch.manual_seed(0)
    model = GPT2(get_config("tiny")).eval()
    prompt = list(range(10, 30))
    dist = next_token_distribution(model, prompt, temperature=0.7, top_k=5, top_p=0.9)
    with torch.no_grad():
        logits = model(torch.tensor([prompt]))[0, -1]
    torch.testing.assert_close(dist.base, torch.softmax(logits.double(), -1))   # shown in float64
    torch.testing.assert_close(dist.tempered, torch.softmax((logits / 0.7).double(), -1))
    assert int((dist.final > 0).sum()) <= 5
    assert int(dist.cut_by_top_k.sum()) == 50257 - 5
    # Longer than the context: only the last n_ctx tokens count.
    long = list(range(300))
    cropped = next_token_distribution(model, long)
    torch.testing.assert_close(cropped.base, next_token_distribution(model, long[-128:]).base)


def test_greedy_steps_report_what_the_filtered_distribution_gives():
    """Greedy with no other filter takes a shortcut; its token and probabilities are the general path's."""
    import torch

    from gpt2core import GPT2, get_config
    from gpt2core.decoding.generate import stream
    from gpt2core.decoding.sampling import draw, filter_logits

    torch.manual_seed(0)
    model = GPT2(get_config("tiny")).eval()
    steps = list(stream(model, [1, 2, 3], 5, temperature=0.0, stop_at_eot=False))
    ids = [1, 2, 3]
    for s in steps:
        with torch.no_grad():
            logits = model(torch.tensor([ids]))[0, -1]
        filtered = torch.softmax(filter_logits(logits, 0.0, None, None), -1)
        token = int(draw(logits, filtered, 0.0))
        assert s.token_id == token
        assert abs(s.sampled_prob - float(filtered[token])) < 1e-6
        assert abs(s.prob - float(torch.softmax(logits, -1)[token])) < 1e-5
        ids.append(token)
    tied = torch.zeros(10)
    tied[[3, 7]] = 5.0                                   # two tied maxima share the greedy mass
    assert float(torch.softmax(filter_logits(tied, 0.0), -1)[3]) == 0.5
