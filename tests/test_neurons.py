"""gpt2core.features.neurons: a prompt's top neurons, and the corpus index checked against every activation
computed the slow way on a small corpus (a tiny random model whose GELU inputs are spread out)."""
import math
import os

import numpy as np
import pytest
import torch

import gpt2core as g
from gpt2core.features import neurons as nr
from gpt2core.text import tokenizer

WINDOW, BATCH = 128, 256          # two windows a forward: the merges run over several batches
N_TOKENS = 5 * WINDOW + 60        # and a short last window


def tiny_model(seed=0):
    torch.manual_seed(seed)
    model = g.GPT2(g.get_config("tiny")).eval()
    with torch.no_grad():
        for block in model.blocks:   # GELU inputs of order 1, so activations fill many bins
            block.mlp.c_fc.weight.normal_(0, 0.2)
            block.mlp.c_fc.bias.normal_(0, 0.5)
    return model


def hook(layer):
    return f"blocks.{layer}.mlp.hook_post"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = tiny_model()
    ids = np.random.default_rng(0).integers(0, 50257, N_TOKENS).astype(np.int32)
    # Brute force: every window on its own, every activation kept. (L, n_tokens, N)
    names = [hook(layer) for layer in range(model.config.n_layer)]
    parts = [model.run_with_cache(torch.as_tensor(ids[s:s + WINDOW], dtype=torch.long), names=names)[1]
             for s in range(0, N_TOKENS, WINDOW)]
    full = torch.stack([torch.cat([c[n] for c in parts]) for n in names]).numpy()
    cache_dir = tmp_path_factory.mktemp("neurons")
    seen = []
    index = nr.build_index(model, ids, k=8, window=WINDOW, batch_tokens=BATCH, cache_dir=cache_dir,
                           progress=lambda f, m: seen.append(f))
    return model, ids, full, index, cache_dir, seen


def count_forwards(model):
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


# ---- a prompt's neurons -------------------------------------------------------------------------------

def test_neuron_activations_is_the_hook():
    model = tiny_model()
    ids = [464, 3290, 318, 257, 1332, 13]
    acts = nr.neuron_activations(model, ids, 1)
    assert acts.shape == (len(ids), 4 * model.config.n_embd)
    assert torch.equal(acts, model.run_with_cache(ids, names=[hook(1)])[1][hook(1)])
    assert torch.equal(nr.neuron_activations(model, ids, -1), acts)
    with pytest.raises(ValueError):
        nr.neuron_activations(model, ids, 2)


def test_top_neurons_at_sorted_and_correct():
    model = tiny_model()
    ids = [464, 3290, 318, 257, 1332, 13]
    _, cache = model.run_with_cache(ids, names="blocks.*.mlp.hook_post")
    all_acts = torch.stack([cache[hook(layer)][3] for layer in range(2)])       # (L, N)
    rows = nr.top_neurons_at(model, ids, None, 3, k=20)
    assert [r[2] for r in rows] == sorted((r[2] for r in rows), reverse=True)
    assert [r[2] for r in rows] == pytest.approx(all_acts.flatten().topk(20).values.tolist())
    assert all(all_acts[L, n].item() == a for L, n, a in rows)
    one = nr.top_neurons_at(model, ids, 1, -3, k=5)                              # position -3 is 3
    assert {r[0] for r in one} == {1}
    assert [r[2] for r in one] == pytest.approx(all_acts[1].topk(5).values.tolist())


# ---- the corpus index ---------------------------------------------------------------------------------

def test_top_contexts_are_the_top_activations(setup):
    model, ids, full, index, _, seen = setup
    L, N = index.shape
    assert (L, N) == (2, 256) and index.top_pos.shape == (2, 256, 8)
    for layer in range(L):
        exact = np.sort(full[layer], axis=0)[::-1][:8].T                         # (N, 8) largest first
        found = np.take_along_axis(full[layer].T, index.top_pos[layer].astype(np.int64), 1)  # (N, 8)
        np.testing.assert_allclose(found, exact, rtol=0, atol=1e-5)
        np.testing.assert_allclose(index.top_act[layer].astype(np.float32), found, rtol=1e-3, atol=1e-4)
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)


def test_histograms_count_every_activation(setup):
    _, _, full, index, _, _ = setup
    inner = torch.as_tensor(nr.HIST_EDGES[1:-1])
    for layer in range(2):
        b = torch.bucketize(torch.as_tensor(full[layer]).bfloat16().float(), inner).numpy()   # (n_tokens, N)
        expect = np.stack([np.bincount(b[:, n], minlength=nr.N_BINS) for n in range(b.shape[1])])
        np.testing.assert_array_equal(index.hist[layer], expect)
    assert index.hist.dtype == np.uint16 and index.hist.sum(-1).min() == N_TOKENS


def test_quantile_samples_lie_in_their_bands(setup):
    _, _, full, index, _, _ = setup
    edges, checked, exact, full_bands = nr.HIST_EDGES, 0, 0, []
    for layer in range(2):
        for n in range(index.shape[1]):
            positive = np.sort(full[layer, :, n][full[layer, :, n] > 0])
            assert index.n_positive(layer, n) == len(positive)
            bands = index.bands(layer, n)
            if len(positive) < 50:
                continue
            checked += 1
            # Each estimated quantile lies in the histogram bin of the exact order statistic.
            for q, est in zip(nr.QUANTILES, [b["activations"][0] for b in bands] + [bands[-1]["activations"][1]]):
                x = positive[math.ceil(q * len(positive)) - 1]
                j = int(torch.bucketize(torch.tensor(x).bfloat16().float(), torch.as_tensor(edges[1:-1])))
                hi = max(edges[j + 1], positive[-1]) if j == nr.N_BINS - 1 else edges[j + 1]
                assert edges[j] * (1 - 1e-3) <= est <= hi * (1 + 1e-3), (layer, n, q)
            for b, band in enumerate(bands):
                lo, hi = band["activations"]
                p16 = positive.astype(np.float16)   # a value on a shared edge belongs to the upper band
                inside = ((p16 >= lo) & ((p16 < hi) if b < len(bands) - 1 else (p16 <= hi))).sum()
                if len(positive) <= nr.RESERVOIR:   # the reservoir holds them all: as many as the band has
                    assert len(band["examples"]) == min(nr.SAMPLES_PER_BAND, inside)
                    exact += 1
                full_bands.append(len(band["examples"]) == nr.SAMPLES_PER_BAND)
                for p, a in band["examples"]:
                    assert lo <= a <= hi
                    assert a == pytest.approx(full[layer, p, n], rel=1e-3)
            positions = [p for b in bands for p, _ in b["examples"]]
            assert len(set(positions)) == len(positions)
    assert checked > 100 and exact > 10 and np.mean(full_bands) > 0.95


def test_context_stays_in_its_window(setup):
    _, ids, _, index, _, _ = setup
    ctx, at = index.context(WINDOW + 2, before=10, after=3)
    assert ctx == ids[WINDOW:WINDOW + 6].tolist() and at == 2
    ctx, at = index.context(N_TOKENS - 1, before=4, after=3)
    assert ctx == ids[-5:].tolist() and at == 4


def test_cache_is_reused_and_keyed(setup):
    model, ids, _, index, cache_dir, _ = setup
    assert index.path is not None and not index.from_cache
    calls, handle = count_forwards(model)
    try:
        again = nr.build_index(model, ids, k=8, window=WINDOW, batch_tokens=BATCH, cache_dir=cache_dir)
        assert again.from_cache and not calls and again.path == index.path
        for name in ("corpus", "top_pos", "top_act", "band_pos", "band_act", "band_edges", "hist"):
            np.testing.assert_array_equal(getattr(again, name), getattr(index, name))
        other = ids.copy()
        other[7] = (other[7] + 1) % 50257
        built = nr.build_index(model, other, k=8, window=WINDOW, batch_tokens=BATCH, cache_dir=cache_dir)
        assert not built.from_cache and calls and built.path != index.path
    finally:
        handle.remove()
    changed = tiny_model()
    with torch.no_grad():
        changed.blocks[1].mlp.c_fc.bias[0] += 1.0
    fresh = nr.build_index(changed, ids, k=8, window=WINDOW, batch_tokens=BATCH, cache_dir=cache_dir)
    assert not fresh.from_cache and fresh.path not in (index.path, built.path)


def test_size_bound_refuses_and_evicts(tmp_path):
    model = tiny_model()
    corpora = [np.random.default_rng(s).integers(0, 50257, 300).astype(np.int32) for s in range(3)]
    bound = nr.index_nbytes(2, 256, 300, k=8)
    refused = nr.build_index(model, corpora[0], k=8, cache_dir=tmp_path, max_index_bytes=bound - 1)
    assert refused.path is None and "not_cached" in refused.meta and not list(tmp_path.iterdir())
    (tmp_path / "a file").write_text("")   # an unwritable cache costs the cache, not the index
    assert nr.build_index(model, corpora[0], k=8, cache_dir=tmp_path / "a file").path is None
    (tmp_path / "a file").unlink()
    (tmp_path / "foreign").mkdir()   # not an index: never deleted
    (tmp_path / "foreign" / "meta.json").write_text("{}")
    paths = []
    for i, ids in enumerate(corpora):
        index = nr.build_index(model, ids, k=8, cache_dir=tmp_path, max_cache_bytes=2 * bound + 1000)
        on_disk = sum(f.stat().st_size for f in index.path.iterdir())
        assert bound - 20_000 < on_disk <= bound
        os.utime(index.path / "meta.json", (1000 + i, 1000 + i))   # a clear order of use
        paths.append(index.path)
    assert not paths[0].exists() and paths[1].exists() and paths[2].exists()
    assert (tmp_path / "foreign").exists()
    assert nr.cached_indexes(tmp_path) == paths[1:]


def test_default_corpus_is_the_cards_heldout_text():
    bpe = nr.default_corpus(tiny_model())
    text = nr.HELDOUT_TEXT.read_text(encoding="utf-8")
    assert len(bpe) == nr.DEFAULT_CORPUS_TOKENS == 16_384 and bpe.dtype == np.int32
    assert bpe[:200].tolist() == tokenizer.encode(text)[:200]
    assert nr.default_corpus(tiny_model(), "hello world").tolist() == tokenizer.encode("hello world")
    itos = sorted(set("abcdefghijklmnopqrstuvwxyz ,.\n"))   # capitals and more are left out
    model = g.GPT2(g.get_config("tiny", vocab_size=len(itos)))
    model.tokenizer = tokenizer.CharTokenizer(itos)
    ids = nr.default_corpus(model, max_tokens=500)
    assert len(ids) == 500 and ids.max() < len(itos)
    with tokenizer.using(model.tokenizer):
        assert tokenizer.decode(ids) == "".join(c for c in text if c in itos)[:500]
