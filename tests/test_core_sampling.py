"""gpt2core.decoding.sampling: top-k, top-p, temperature, seeds, distribution() stages, settings checks.

Expected sets and probabilities are computed independently (float64, plain Python sorting).
"""
import math

import pytest
import torch

from gpt2core.decoding.sampling import (GREEDY_TEMPERATURE, SamplingSettings, check_settings, distribution, entropy,
                               filter_logits, sample, top_k_mask, top_p_mask)


def rand_logits(n=1000, seed=0, scale=3.0, rows=None):
    g = torch.Generator().manual_seed(seed)
    shape = (n,) if rows is None else (rows, n)
    return torch.randn(shape, generator=g) * scale


def nucleus_reference(logits: torch.Tensor, p: float) -> set[int]:
    """Smallest set of most likely tokens whose mass is >= p, in float64 with Python sorting."""
    probs = torch.softmax(logits.double(), -1).tolist()
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    kept, mass = set(), 0.0
    for i in order:
        kept.add(i)
        mass += probs[i]
        if mass >= p:
            break
    return kept


# ---- top-k -----------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 2, 5, 50, 999])
def test_top_k_keeps_exactly_k_largest(k):
    logits = rand_logits()
    mask = top_k_mask(logits, k)
    assert mask.dtype == torch.bool and int(mask.sum()) == k
    expected = set(sorted(range(1000), key=lambda i: -logits[i].item())[:k])
    assert set(mask.nonzero().flatten().tolist()) == expected
    filtered = filter_logits(logits, top_k=k)
    assert int(torch.isfinite(filtered).sum()) == k
    assert torch.equal(filtered[mask], logits[mask])


def test_top_k_off_and_oversized_keep_everything():
    logits = rand_logits(50)
    for k in (None, 0, 50, 10_000):
        assert bool(top_k_mask(logits, k).all())
        assert torch.equal(filter_logits(logits, top_k=k), logits)


def test_top_k_per_row():
    logits = rand_logits(100, rows=4)
    mask = top_k_mask(logits, 7)
    assert mask.sum(-1).tolist() == [7] * 4
    for r in range(4):
        assert torch.equal(mask[r], top_k_mask(logits[r], 7))


def test_top_k_with_ties_keeps_exactly_k():
    logits = torch.zeros(1000)
    for k in (1, 3, 17, 200):
        assert int(top_k_mask(logits, k).sum()) == k


def test_top_k_ties_broken_by_index():
    assert top_k_mask(torch.tensor([1.0, 2.0, 2.0, 2.0, 0.0]), 2).tolist() == [False, True, True, False, False]
    assert top_k_mask(torch.zeros(100), 3).nonzero().flatten().tolist() == [0, 1, 2]


# ---- top-p -----------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [0.01, 0.1, 0.3, 0.5, 0.75, 0.9, 0.99, 0.999])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_p_keeps_the_smallest_set_reaching_p(p, seed):
    logits = rand_logits(500, seed=seed, scale=2.0)
    mask = top_p_mask(logits, p)
    kept = set(mask.nonzero().flatten().tolist())
    assert kept == nucleus_reference(logits, p)
    probs = torch.softmax(logits.double(), -1)
    mass = probs[mask].sum().item()
    assert mass >= p - 1e-6
    # minimal: without its least likely token the set falls below p
    least = probs[mask].min().item()
    assert mass - least < p
    # and the kept tokens are the most likely ones
    if not mask.all():
        assert probs[mask].min() >= probs[~mask].max()


def test_top_p_exact_boundaries():
    probs = torch.tensor([0.5, 0.25, 0.125, 0.125], dtype=torch.float64)
    logits = probs.log().float()
    assert top_p_mask(logits, 0.5).tolist() == [True, False, False, False]      # 0.5 reaches 0.5
    assert top_p_mask(logits, 0.51).tolist() == [True, True, False, False]
    assert top_p_mask(logits, 0.75).tolist() == [True, True, False, False]
    assert top_p_mask(logits, 0.76).tolist() == [True, True, True, False]
    assert top_p_mask(logits, 1e-9).tolist() == [True, False, False, False]     # always at least one
    assert top_p_mask(logits, 1.0).all() and top_p_mask(logits, None).all()


def test_top_p_per_row():
    logits = rand_logits(200, rows=3, scale=2.0)
    mask = top_p_mask(logits, 0.8)
    for r in range(3):
        assert set(mask[r].nonzero().flatten().tolist()) == nucleus_reference(logits[r], 0.8)


def test_filter_order_temperature_then_k_then_p():
    logits = rand_logits(300, seed=4, scale=2.0)
    T, k, p = 0.7, 40, 0.6
    out = filter_logits(logits, T, k, p)
    tempered = logits.double() / T
    top = sorted(range(300), key=lambda i: -tempered[i].item())[:k]
    sub = torch.full_like(tempered, float("-inf"))
    sub[top] = tempered[top]
    expected = nucleus_reference(sub, p)     # top-p on the tempered, top-k-cut distribution
    assert set(torch.isfinite(out).nonzero().flatten().tolist()) == expected
    kept = torch.isfinite(out)
    torch.testing.assert_close(out[kept].double(), tempered[kept], atol=1e-5, rtol=1e-6)


# ---- temperature -----------------------------------------------------------------------------

def test_temperature_zero_is_greedy():
    logits = rand_logits(1000, rows=8, seed=5)
    argmax = logits.argmax(-1)
    for t in (0, 0.0, GREEDY_TEMPERATURE / 2):
        assert torch.equal(sample(logits, temperature=t), argmax)
        assert torch.equal(sample(logits, temperature=t, top_k=5, top_p=0.5), argmax)
        out = filter_logits(logits, temperature=t)
        assert torch.equal(torch.isfinite(out).sum(-1), torch.ones(8, dtype=torch.long))
        assert torch.equal(out.argmax(-1), argmax)
        d = distribution(logits[0], temperature=t)
        assert d.final[argmax[0]] == 1 and d.final.sum() == 1


def test_temperature_to_zero_converges_to_greedy():
    logits = rand_logits(100, seed=6)
    top = logits.argmax().item()
    previous = 0.0
    for t in (1.0, 0.3, 0.1, 0.03, 0.01):
        p_top = distribution(logits, temperature=t).tempered[top].item()
        assert p_top >= previous
        previous = p_top
    assert previous > 0.999
    g = torch.Generator().manual_seed(0)
    draws = sample(logits.expand(500, -1), temperature=0.01, generator=g)
    assert (draws == top).float().mean() > 0.99


def test_temperature_scales_logits():
    logits = rand_logits(64, seed=7)
    for t in (0.25, 1.0, 2.0, 10.0):
        d = distribution(logits, temperature=t)
        torch.testing.assert_close(d.tempered.double(), torch.softmax(logits.double() / t, -1), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(filter_logits(logits, temperature=t), logits / t)


# ---- sampling --------------------------------------------------------------------------------

def test_fixed_seed_reproduces_the_sample():
    logits = rand_logits(1000, rows=64, seed=8, scale=1.0)
    a = sample(logits, 0.9, 100, 0.95, generator=torch.Generator().manual_seed(123))
    b = sample(logits, 0.9, 100, 0.95, generator=torch.Generator().manual_seed(123))
    c = sample(logits, 0.9, 100, 0.95, generator=torch.Generator().manual_seed(124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == (64,)


def test_sample_frequencies_follow_the_filtered_distribution():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    g = torch.Generator().manual_seed(0)
    n = 20000
    for T, k, expected_support in ((1.0, None, 5), (0.5, None, 5), (1.0, 2, 2)):
        draws = sample(logits.expand(n, -1), temperature=T, top_k=k, generator=g)
        freq = torch.bincount(draws, minlength=5).double() / n
        probs = torch.softmax(logits.double() / T, -1)
        if k:
            probs[k:] = 0
            probs /= probs.sum()
        assert int((freq > 0).sum()) == expected_support
        assert (freq - probs).abs().max() < 0.015


def test_sample_never_draws_a_cut_token():
    logits = rand_logits(200, rows=200, seed=9, scale=1.0)
    g = torch.Generator().manual_seed(1)
    draws = sample(logits, 1.0, 10, 0.5, generator=g)
    allowed = torch.isfinite(filter_logits(logits, 1.0, 10, 0.5))
    assert allowed.gather(-1, draws[:, None]).all()


# ---- distribution() --------------------------------------------------------------------------

@pytest.mark.parametrize("T,k,p", [(1.0, None, None), (0.7, 20, 0.8), (1.5, 5, None), (1.0, None, 0.3),
                                   (0.0, 10, 0.9), (2.0, 1000, 0.999), (0.9, 3, 0.01)])
def test_distribution_stages_are_consistent(T, k, p):
    logits = rand_logits(1000, seed=10, scale=2.5)
    d = distribution(logits, T, k, p)
    for stage in (d.base, d.tempered, d.after_top_k, d.final):
        assert stage.shape == (1000,)
        assert abs(stage.double().sum().item() - 1) < 1e-5
    torch.testing.assert_close(d.base.double(), torch.softmax(logits.double(), -1), atol=1e-7, rtol=1e-5)
    assert not (d.cut_by_top_k & d.cut_by_top_p).any()
    cut = d.cut_by_top_k | d.cut_by_top_p
    assert torch.all(d.final[cut] == 0)
    assert torch.all(d.after_top_k[d.cut_by_top_k] == 0)
    # final is the tempered distribution restricted to the kept tokens, renormalised
    kept = d.final > 0
    expected = d.tempered.double() * kept
    torch.testing.assert_close(d.final.double(), expected / expected.sum(), atol=1e-6, rtol=1e-4)
    # the masks agree with filter_logits, which sampling uses
    assert torch.equal(kept, torch.isfinite(filter_logits(logits, T, k, p)))
    if T >= GREEDY_TEMPERATURE:
        if k and k < 1000:
            assert int(d.cut_by_top_k.sum()) == 1000 - k
        if p is not None:
            assert set(kept.nonzero().flatten().tolist()) == nucleus_reference(
                torch.where(d.after_top_k > 0, logits / T, torch.tensor(float("-inf"))), p)
    else:
        assert int(kept.sum()) == 1 and not cut.any()


def test_distribution_entropy_bits():
    logits = torch.tensor([0.0, 0.0, 0.0, 0.0])
    assert entropy(torch.softmax(logits, -1)).item() == pytest.approx(2.0)
    assert entropy(torch.tensor([1.0, 0.0])).item() == 0.0
    logits = rand_logits(100, seed=11)
    d = distribution(logits, 0.8, 10, 0.9)
    bits = d.entropy_bits

    def h(p):
        return -sum(x * math.log2(x) for x in p.double().tolist() if x > 0)

    assert bits["model"] == pytest.approx(h(d.base), abs=1e-4)
    assert bits["tempered"] == pytest.approx(h(d.tempered), abs=1e-4)
    assert bits["final"] == pytest.approx(h(d.final), abs=1e-4)


# ---- invalid settings ------------------------------------------------------------------------

INVALID = [
    dict(temperature=-0.1), dict(temperature=float("nan")), dict(temperature=float("inf")),
    dict(temperature=True),
    dict(top_k=-1), dict(top_k=2.5), dict(top_k=True), dict(top_k="5"),
    dict(top_p=0), dict(top_p=0.0), dict(top_p=-0.5), dict(top_p=1.01), dict(top_p=float("nan")),
    dict(top_p=True), dict(top_p="0.9"),
]


@pytest.mark.parametrize("bad", INVALID, ids=[str(b) for b in INVALID])
def test_invalid_settings_raise_value_error(bad):
    args = {"temperature": 1.0, "top_k": None, "top_p": None, **bad}
    logits = rand_logits(20)
    with pytest.raises(ValueError):
        check_settings(args["temperature"], args["top_k"], args["top_p"])
    with pytest.raises(ValueError):
        SamplingSettings(**args)
    with pytest.raises(ValueError):
        filter_logits(logits, **args)
    with pytest.raises(ValueError):
        distribution(logits, **args)
    with pytest.raises(ValueError):
        sample(logits, **args)


@pytest.mark.parametrize("bad", [dict(temperature="hot"), dict(temperature=None)], ids=["str", "None"])
def test_non_numeric_temperature_raises_value_error_from_settings(bad):
    with pytest.raises(ValueError):
        check_settings(bad["temperature"], None, None)
    with pytest.raises(ValueError):
        SamplingSettings(**bad)


@pytest.mark.parametrize("bad", ["hot", None])
def test_sample_non_numeric_temperature_raises_value_error(bad):
    with pytest.raises(ValueError):
        sample(rand_logits(20), temperature=bad)


def test_valid_edge_settings():
    SamplingSettings(temperature=0, top_k=0, top_p=1.0)
    SamplingSettings(temperature=2, top_k=1, top_p=1e-6)
    assert SamplingSettings(temperature=0).greedy and not SamplingSettings(temperature=0.5).greedy


@pytest.mark.parametrize("k", [1, 2, 3, 5, 7, 50])
def test_top_k_mask_equals_a_stable_sort_with_ties(k):
    """The first k of a stable descending sort: ties at the k-th value are kept in index order."""
    from gpt2core.decoding.sampling import top_k_mask
    g = torch.Generator().manual_seed(k)
    logits = torch.randint(-3, 4, (4, 200), generator=g).float()      # many ties
    logits[0, :10] = float("-inf")
    reference = torch.zeros_like(logits, dtype=torch.bool).scatter_(
        -1, torch.sort(logits, dim=-1, descending=True, stable=True).indices[..., :k], True)
    mask = top_k_mask(logits, k)
    assert torch.equal(mask, reference)
    assert (mask.sum(-1) == k).all()
