"""gpt2core.analysis.lens: the logit lens, the logit attribution and ablations, checked against the model itself
and against Hugging Face transformers on the same weights."""
import pytest
import torch

from gpt2core import encode, load, load_hf
from gpt2core.analysis.lens import (AblationError, ablation_hooks, attribute, lens_positions, lens_stages, logit_lens,
                           parse_heads, parse_layers, run_ablated, scan_heads, unembed)
from explorer.session import BUNDLED_DIR

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny(hf_tiny_dir):
    return load_hf(hf_tiny_dir).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def bundled():
    return load(BUNDLED_DIR).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 50257, (23,), generator=torch.Generator().manual_seed(3))


def softmax64(logits):
    return torch.softmax(logits.double(), -1)


def assert_block_boundaries_match(lens, stages, hf_logits):
    """The lens's top 5 and the final pick's probability at these stages equal those of HF's logits."""
    for stage, expected in zip(stages, hf_logits):
        probs = softmax64(expected)
        p, top = probs.topk(5, -1)
        assert torch.equal(lens.top_ids[stage], top), lens.stages[stage]
        torch.testing.assert_close(lens.top_probs[stage].double(), p, atol=1e-6, rtol=1e-4)
        final = probs.gather(1, lens.final_ids[:, None])[:, 0]
        torch.testing.assert_close(lens.final_probs[stage].double(), final, atol=1e-6, rtol=1e-4)


# ---- logit lens --------------------------------------------------------------------------------------
def test_stages_follow_the_forward_pass():
    assert lens_stages(2) == [("embeddings", "blocks.0.hook_resid_pre"),
                              ("L0 after attention", "blocks.0.hook_resid_mid"), ("L0 after MLP", "blocks.0.hook_resid_post"),
                              ("L1 after attention", "blocks.1.hook_resid_mid"), ("L1 after MLP", "blocks.1.hook_resid_post")]


@pytest.mark.parametrize("which", ["tiny", "bundled"])
def test_last_stage_is_the_models_own_output(which, request, ids):
    model = request.getfixturevalue(which)
    lens = logit_lens(model, ids, k=5)
    with torch.no_grad():
        logits = model(ids[None])[0]
    expected_p, expected_ids = torch.softmax(logits, -1).topk(5, -1)      # the model's own distribution
    assert torch.equal(lens.final_ids, logits.argmax(-1))
    assert torch.equal(lens.top_ids[-1], expected_ids)
    torch.testing.assert_close(lens.top_probs[-1], expected_p, atol=0, rtol=0)
    assert torch.all(lens.final_ranks[-1] == 1)
    torch.testing.assert_close(lens.logits, logits, atol=0, rtol=0)
    # The unembedding of the last residual is exactly what the model computes.
    _, cache = model.run_with_cache(ids, names=[f"blocks.{model.config.n_layer - 1}.hook_resid_post"])
    torch.testing.assert_close(unembed(model, cache[f"blocks.{model.config.n_layer - 1}.hook_resid_post"]),
                               logits, atol=1e-6, rtol=1e-6)


def test_lens_ranks_and_tracked_tokens_against_brute_force(tiny, ids):
    track = [int(ids[0]), 198]
    lens = logit_lens(tiny, ids, k=3, track=track)
    names = [name for _, name in lens_stages(tiny.config.n_layer)]
    _, cache = tiny.run_with_cache(ids, names=names)
    for s, name in enumerate(names):
        with torch.no_grad():
            logits = unembed(tiny, cache[name])                                   # (T, V)
        probs = softmax64(logits)
        for t in range(len(ids)):
            final = int(lens.final_ids[t])
            assert int(lens.final_ranks[s, t]) == int((logits[t] > logits[t, final]).sum()) + 1
            assert float(lens.final_probs[s, t]) == pytest.approx(float(probs[t, final]), rel=1e-4, abs=1e-9)
            for tok in track:
                ranks, p = lens.tracked[tok]
                assert int(ranks[s, t]) == int((logits[t] > logits[t, tok]).sum()) + 1
                assert float(p[s, t]) == pytest.approx(float(probs[t, tok]), rel=1e-4, abs=1e-9)
    assert lens.top_ids.shape == (len(names), len(ids), 3)


def test_lens_at_block_boundaries_matches_hf_hidden_states(hf_tiny_dir, tiny, ids):
    """HF's hidden_states[i] is the residual before block i; its last one already has ln_f applied."""
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_tiny_dir).eval()
    lens = logit_lens(tiny, ids, k=5)
    with torch.no_grad():
        hidden = hf(ids[None], output_hidden_states=True).hidden_states
        L = tiny.config.n_layer
        hf_logits = [hf.lm_head(hf.transformer.ln_f(h[0])) for h in hidden[:L]] + [hf.lm_head(hidden[L][0])]
    boundary = [0] + [2 * i + 2 for i in range(L)]      # embeddings, then each block's output
    assert_block_boundaries_match(lens, boundary, hf_logits)


# Windows of the 23-token prompt: the head over the prefix costs more than twice the window (the forward stops
# at the last position and the lens makes the last stage), or not (the forward's own logits); one position;
# positions out of order, repeated and counted from the end.
WINDOWS = [list(range(15, 19)), [20], [0, 1, 2], list(range(14, 23)), [-1, 3, 9, 3]]
FIELDS = ("top_ids", "top_probs", "final_ranks", "final_probs")


@pytest.mark.parametrize("which", ["tiny", "bundled"])
@pytest.mark.parametrize("window", WINDOWS, ids=str)
def test_windowed_lens_is_the_full_lens_at_those_positions(which, window, request, ids):
    """The lens of some positions is the full lens's columns there, bit for bit: the full lens of the prompt up
    to the last of them (the same forward), and of the whole prompt up to float rounding (a later token cannot
    change an earlier prediction; a forward over more tokens may round differently)."""
    model = request.getfixturevalue(which)
    track = [int(ids[0]), 198]
    cols = sorted({p % len(ids) for p in window})
    w = logit_lens(model, ids, k=5, track=track, positions=window)
    assert w.positions == cols and w.top_ids.shape == (len(w.stages), len(cols), 5)
    prefix = logit_lens(model, ids[:cols[-1] + 1], k=5, track=track)
    for field in FIELDS:
        assert torch.equal(getattr(w, field), getattr(prefix, field)[:, cols]), field
    for tok in track:
        for got, full in zip(w.tracked[tok], prefix.tracked[tok]):
            assert torch.equal(got, full[:, cols])
    assert torch.equal(w.final_ids, prefix.final_ids[cols]) and torch.equal(w.logits, prefix.logits[cols])
    whole = logit_lens(model, ids, k=5, track=track)
    assert torch.equal(w.top_ids[:, :, 0], whole.top_ids[:, cols, 0])
    torch.testing.assert_close(w.top_probs, whole.top_probs[:, cols], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(w.logits, whole.logits[cols], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("which", ["tiny", "bundled"])
@pytest.mark.parametrize("window", WINDOWS, ids=str)
def test_windowed_last_stage_is_the_models_own_output(which, window, request, ids):
    """Where the lens makes the last stage itself (ln_f and lm_head on the final residual of those positions
    only), it is still bit for bit the model's logits and softmax, as the forward makes them over the prompt."""
    model = request.getfixturevalue(which)
    cols = lens_positions(window, len(ids))
    w = logit_lens(model, ids, k=5, positions=window)
    with torch.no_grad():
        logits = model(ids[None, :cols[-1] + 1])[0][cols]                 # (T, V) the model's, over the prefix
    expected_p, expected_ids = torch.softmax(logits, -1).topk(5, -1)
    torch.testing.assert_close(w.logits, logits, atol=0, rtol=0)
    assert torch.equal(w.final_ids, logits.argmax(-1)) and torch.equal(w.top_ids[-1], expected_ids)
    torch.testing.assert_close(w.top_probs[-1], expected_p, atol=0, rtol=0)
    assert torch.all(w.final_ranks[-1] == 1)


def test_windowed_lens_runs_the_forward_up_to_its_last_position(tiny, ids, monkeypatch):
    """Only the prefix up to the last position is run, and the head of the forward makes the logits of every
    prefix position only when that costs at most twice the window's (else just the last: last_only)."""
    seen = []
    run = tiny.run_with_cache
    monkeypatch.setattr(tiny, "run_with_cache", lambda idx, **kw: seen.append((len(idx), kw["last_only"]))
                        or run(idx, **kw))
    logit_lens(tiny, ids, positions=range(15, 19))
    logit_lens(tiny, ids, positions=[0, 1, 2])
    logit_lens(tiny, ids)
    assert seen == [(19, True), (3, False), (len(ids), False)]


def test_windowed_lens_at_block_boundaries_matches_hf_hidden_states(hf_tiny_dir, tiny, ids):
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_tiny_dir).eval()
    cols = list(range(12, 20))
    lens = logit_lens(tiny, ids, k=5, positions=cols)
    with torch.no_grad():
        hidden = hf(ids[None, :cols[-1] + 1], output_hidden_states=True).hidden_states
        L = tiny.config.n_layer
        hf_logits = [hf.lm_head(hf.transformer.ln_f(h[0, cols])) for h in hidden[:L]] + [hf.lm_head(hidden[L][0, cols])]
    assert_block_boundaries_match(lens, [0] + [2 * i + 2 for i in range(L)], hf_logits)


@pytest.mark.parametrize("window", [list(range(12, 23)), None], ids=["window", "all"])
def test_lens_in_small_chunks_is_the_same_lens(tiny, ids, window, monkeypatch):
    """Rows unembedded a few at a time, and read a few at a time (the last stage then spans several chunks,
    made before any stage is ranked on it), give the same lens."""
    import gpt2core.analysis.lens as lens_module
    track = [198]
    one_go = logit_lens(tiny, ids, k=3, track=track, positions=window)
    monkeypatch.setattr(lens_module, "LENS_ROWS", 8)
    monkeypatch.setattr(lens_module, "POST_ROWS", 3)
    assert [r.stop - r.start for r in lens_module._chunks(77)] == [8] * 7 + [7] * 3
    small = logit_lens(tiny, ids, k=3, track=track, positions=window)
    for field in ("top_ids", "final_ranks", "final_ids"):
        assert torch.equal(getattr(small, field), getattr(one_go, field)), field
    for field in ("top_probs", "final_probs", "logits"):
        torch.testing.assert_close(getattr(small, field), getattr(one_go, field), atol=1e-6, rtol=1e-5)
    assert torch.equal(small.tracked[198][0], one_go.tracked[198][0])


def test_lens_positions():
    assert lens_positions(None, 4) == [0, 1, 2, 3]
    assert lens_positions([3, -4, 3, -1], 4) == [0, 3]
    with pytest.raises(IndexError, match="outside a prompt of 4 tokens"):
        lens_positions([4], 4)
    with pytest.raises(IndexError, match="outside"):
        lens_positions([-5], 4)
    with pytest.raises(ValueError, match="no positions"):
        lens_positions([], 4)


# ---- attribution -------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["tiny", "bundled"])
@pytest.mark.parametrize("position", [-1, 4])
def test_parts_add_up_to_the_logit(which, position, request, ids):
    model = request.getfixturevalue(which)
    with torch.no_grad():
        logits = model(ids[None])[0]
    p = position % len(ids)
    a = attribute(model, ids, position=position)
    assert a.target == int(logits[p].argmax()) and a.position == p
    assert a.logit == pytest.approx(float(logits[p, a.target]), rel=1e-6)
    assert a.total() == pytest.approx(a.logit, rel=1e-4)
    assert a.heads.shape == (model.config.n_layer, model.config.n_head)
    contrast = int(logits[p].argsort()[-2])
    d = attribute(model, ids, target=a.target, contrast=contrast, position=position)
    assert d.logit == pytest.approx(float(logits[p, a.target] - logits[p, contrast]), rel=1e-5, abs=1e-5)
    assert d.total() == pytest.approx(d.logit, rel=1e-4, abs=1e-5)


def test_heads_and_bias_split_the_attention_output(tiny, ids):
    """Per layer, the heads and the c_proj bias add up to that layer's whole attention output read the
    same way, so the per-head slicing of c_proj is right (not just the total)."""
    a = attribute(tiny, ids, position=-1)
    names = [f"blocks.{i}.hook_attn_out" for i in range(tiny.config.n_layer)] + ["ln_f.hook_in_var"]
    _, cache = tiny.run_with_cache(ids, names=names)
    W_U = tiny.lm_head.weight.double()
    u = W_U[a.target] * tiny.ln_f.weight.double() / a.scale
    u = u - u.mean()
    for i in range(tiny.config.n_layer):
        whole = float(cache[f"blocks.{i}.hook_attn_out"][-1].double() @ u)
        assert float(a.attn[i]) == pytest.approx(whole, rel=1e-5, abs=1e-6)
    # A head's share is its z through its own rows of c_proj, computed here the long way.
    z = tiny.run_with_cache(ids, names=["blocks.1.attn.hook_z"])[1]["blocks.1.attn.hook_z"][-1]   # (nh, hs)
    hs = tiny.config.head_dim
    W_O = tiny.blocks[1].attn.c_proj.weight.t()
    for h in range(tiny.config.n_head):
        out = z[h].double() @ W_O[h * hs:(h + 1) * hs].double()                  # (d,)
        assert float(a.heads[1, h]) == pytest.approx(float(out @ u), rel=1e-6, abs=1e-9)


# ---- ablation ----------------------------------------------------------------------------------------
def hf_with_head_mask(hf_tiny_dir):
    """HF GPT-2 whose eager attention honours ``head_mask`` as transformers 4.x did (the probabilities are
    multiplied by it before the values): transformers 5 still passes ``head_mask`` to the attention function
    but its eager function ignores it, so it is registered here through HF's own attention registry, with
    HF's own eager causal mask."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    def head_mask_eager(module, query, key, value, attention_mask, scaling=None, dropout=0.0, head_mask=None,
                        **kwargs):
        weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
        if attention_mask is not None:
            weights = weights + attention_mask
        weights = torch.softmax(weights, dim=-1)
        if head_mask is not None:
            weights = weights * head_mask[module.layer_idx].view(1, -1, 1, 1)
        return torch.matmul(weights, value).transpose(1, 2), weights

    AttentionInterface.register("head_mask_eager", head_mask_eager)
    ALL_MASK_ATTENTION_FUNCTIONS.register("head_mask_eager", eager_mask)
    return transformers.GPT2LMHeadModel.from_pretrained(hf_tiny_dir, attn_implementation="head_mask_eager").eval()


def test_zero_ablation_equals_hf_head_mask(hf_tiny_dir, tiny, ids):
    hf = hf_with_head_mask(hf_tiny_dir)
    heads = [(0, 1), (1, 3), (2, 0), (2, 2)]
    mask = torch.ones(tiny.config.n_layer, tiny.config.n_head)
    for layer, head in heads:
        mask[layer, head] = 0.0
    with torch.no_grad():
        expected = hf(ids[None], head_mask=mask).logits[0]
        unmasked = hf(ids[None], head_mask=torch.ones_like(mask)).logits[0]
    got = run_ablated(tiny, ids, heads=heads)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (got - unmasked).abs().max() > 1e-3          # the ablation did change something


def test_no_ablation_is_the_clean_run(tiny, ids):
    with torch.no_grad():
        clean = tiny(ids[None])[0]
    torch.testing.assert_close(run_ablated(tiny, ids), clean, atol=1e-6, rtol=1e-6)


def test_zero_mlp_ablation_removes_its_output(tiny, ids):
    hooks = ablation_hooks(tiny, ids, mlps=[1])
    _, cache = tiny.run_with_cache(ids, names=["blocks.1.hook_mlp_out", "blocks.1.hook_resid_post",
                                               "blocks.1.hook_resid_mid"], hooks=hooks)
    assert torch.all(cache["blocks.1.hook_mlp_out"] == 0)
    assert torch.equal(cache["blocks.1.hook_resid_post"], cache["blocks.1.hook_resid_mid"])


def test_mean_ablation_puts_the_positional_mean_in(tiny, ids):
    _, clean = tiny.run_with_cache(ids, names=["blocks.2.attn.hook_z", "blocks.0.hook_mlp_out"])
    hooks = ablation_hooks(tiny, ids, heads=[(2, 1)], mlps=[0], mode="mean")
    _, cache = tiny.run_with_cache(ids, names=["blocks.2.attn.hook_z", "blocks.0.hook_mlp_out"], hooks=hooks)
    z = cache["blocks.2.attn.hook_z"]
    mean_z = clean["blocks.2.attn.hook_z"][:, 1].mean(0)
    torch.testing.assert_close(z[:, 1], mean_z.expand_as(z[:, 1]))
    torch.testing.assert_close(cache["blocks.0.hook_mlp_out"],
                               clean["blocks.0.hook_mlp_out"].mean(0).expand(len(ids), -1))
    # Layer 0's MLP is mean-ablated too, so layer 2's other heads see other inputs and change.
    assert not torch.allclose(z[:, 0], clean["blocks.2.attn.hook_z"][:, 0])


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_scan_equals_one_ablation_at_a_time(tiny, ids, mode):
    position, target = 15, int(ids[16])
    seen = []
    deltas, clean = scan_heads(tiny, ids, target, position=position, mode=mode, batch_size=5,
                               progress=lambda done, total: seen.append((done, total)))
    n = tiny.config.n_layer * tiny.config.n_head
    assert seen[-1] == (n, n) and len(seen) == -(-n // 5)
    with torch.no_grad():
        full = torch.log_softmax(tiny(ids[None])[0, position], -1)[target]
    assert clean == pytest.approx(float(full), abs=1e-5)
    for layer in range(tiny.config.n_layer):
        for head in range(tiny.config.n_head):
            # Mean ablation averages over the prompt the scan sees: the tokens up to the position.
            logits = run_ablated(tiny, ids[:position + 1], heads=[(layer, head)], mode=mode)
            expected = float(torch.log_softmax(logits[-1], -1)[target]) - clean
            assert float(deltas[layer, head]) == pytest.approx(expected, abs=2e-5), (layer, head)


def test_parse_heads_and_layers():
    assert parse_heads("0.1, 3.2 3:2;5.0", 6, 4) == [(0, 1), (3, 2), (5, 0)]
    assert parse_heads("  ", 6, 4) == []
    assert parse_layers("0, 4 4", 6) == [0, 4]
    for bad, words in [("6.0", "does not exist"), ("0.4", "does not exist"), ("1-2", "not a head"),
                       ("x", "not a head"), ("1.2.3", "not a head")]:
        with pytest.raises(AblationError, match=words):
            parse_heads(bad, 6, 4)
    with pytest.raises(AblationError, match="does not exist"):
        parse_layers("6", 6)
    with pytest.raises(AblationError, match="not a layer"):
        parse_layers("1.5", 6)
    with pytest.raises(AblationError, match="ablation must be"):
        ablation_hooks(None, [1, 2], heads=[(0, 0)], mode="half")



def test_ablated_last_position_alone(tiny, ids):
    full = run_ablated(tiny, ids, heads=[(1, 2)], mlps=[0])
    last = run_ablated(tiny, ids, heads=[(1, 2)], mlps=[0], last_only=True)
    assert last.shape == (1, full.shape[-1])
    torch.testing.assert_close(last, full[-1:], atol=1e-5, rtol=1e-5)
