"""gpt2core.analysis.circuits: the induction measure, the head detector on hand-built patterns, activation patching
(exact at its ends, batched = one at a time, HF parity with its modules edited the same way)."""
import math

import pytest
import torch

from gpt2core import GPT2, GPT2Config
from gpt2core.analysis import circuits
from gpt2core.analysis.circuits import Patch, PatchingError
from gpt2core.training.data import repeated_windows

from conftest import perturbed

CFG = GPT2Config(vocab_size=50257, n_ctx=64, n_embd=32, n_layer=3, n_head=4)


@pytest.fixture(scope="module")
def model():
    return perturbed(CFG, seed=3)


# ---- induction measure and the training mix -------------------------------------------------------------
def test_repeated_random_tokens_shape_and_repeat():
    ids = circuits.repeated_random_tokens(10, batch=3, seed=1)
    assert ids.shape == (3, 21)
    assert (ids[:, 0] == 50256).all()
    assert torch.equal(ids[:, 1:11], ids[:, 11:])
    assert torch.equal(ids, circuits.repeated_random_tokens(10, batch=3, seed=1))   # seeded


def test_induction_loss_matches_a_direct_computation(model):
    out = circuits.induction_loss(model, n_tokens=8, batch=2, seed=5)
    ids = circuits.repeated_random_tokens(8, 2, 5)
    with torch.no_grad():
        logp = torch.log_softmax(model(ids), -1)                                  # (2, 17, V)
    nll = -logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0].mean(0)              # (16,)
    assert out["first"] == pytest.approx(float(nll[:8].mean()), rel=1e-5)
    assert out["second"] == pytest.approx(float(nll[9:].mean()), rel=1e-5)
    assert out["second_with_first"] == pytest.approx(float(nll[8:].mean()), rel=1e-5)
    with pytest.raises(ValueError, match="context"):
        circuits.induction_loss(model, n_tokens=40)


def test_repeated_text_loss_matches_a_direct_computation(model):
    text = torch.arange(1000, 1400)
    out = circuits.repeated_text_loss(model, text, n_tokens=6, n_passages=3)
    seqs = torch.stack([torch.cat([torch.tensor([50256]), text[i * 133:i * 133 + 6], text[i * 133:i * 133 + 6]])
                        for i in range(3)])
    with torch.no_grad():
        logp = torch.log_softmax(model(seqs), -1)
    nll = -logp[:, :-1].gather(-1, seqs[:, 1:, None])[..., 0].mean(0)
    assert out["first"] == pytest.approx(float(nll[:6].mean()), rel=1e-5)
    assert out["second"] == pytest.approx(float(nll[7:].mean()), rel=1e-5)


def test_repeated_windows_repeat_a_span_and_mask_the_unpredictable_targets():
    text = torch.arange(5000, 6000)
    x0 = torch.stack([text[i:i + 32] for i in (0, 100, 200, 300)])
    y0 = torch.stack([text[i + 1:i + 33] for i in (0, 100, 200, 300)])
    for share in (1.0, 0.0):
        g = torch.Generator().manual_seed(7)
        x, y = repeated_windows(text, (x0, y0), torch.tensor([1, 3]), g, 50257, share, min_span=4, max_span=10)
        assert torch.equal(x[[0, 2]], x0[[0, 2]]) and torch.equal(y[[0, 2]], y0[[0, 2]])   # others untouched
        for b in (1, 3):
            seq = torch.cat([x[b, :1], torch.where(y[b] == -100, x[b].roll(-1), y[b])])
            assert torch.equal(seq[:-1], x[b])
            # some span of length L >= 4 is followed at once by itself
            found = [(p, L) for L in range(4, 11) for p in range(0, 33 - 2 * L)
                     if torch.equal(seq[p:p + L], seq[p + L:p + 2 * L]) and not torch.equal(seq[p:p + L], x0[b, :L])]
            assert found
            masked = (y[b] == -100).nonzero().flatten().tolist()
            if share == 1.0:
                p, L = min(found, key=lambda f: -f[1])
                assert masked and len(masked) == masked[-1] - masked[0] + 1   # one run: the first copy
                assert masked[-1] == p + L - 1 or masked[-1] <= p + L - 1
            else:
                assert masked == []
    # the pool: random ids drawn only from it
    g = torch.Generator().manual_seed(0)
    pool = torch.tensor([11, 22, 33])
    x, y = repeated_windows(text, (x0, y0), torch.arange(4), g, 50257, 1.0, pool=pool)
    outside = set(x.flatten().tolist()) - set(text.tolist())
    assert outside and outside <= {11, 22, 33}


def test_a_training_step_with_repeats_counts_only_the_targets_that_carry_loss():
    from gpt2core.training.train import Trainer, TrainSettings
    torch.manual_seed(0)
    m = GPT2(GPT2Config(vocab_size=50257, n_ctx=32, n_embd=16, n_layer=1, n_head=2))
    s = TrainSettings(steps=2, batch_size=4, warmup_steps=1, repeat_fraction=1.0, repeat_random_share=1.0)
    trainer = Trainer.from_ids(m, torch.arange(3000, 3600), s)
    batches, n_targets = trainer.micro_batches()
    (x, y), = batches
    assert n_targets == int((y != -100).sum()) < 4 * 32
    again, n_again = trainer.micro_batches()
    assert torch.equal(again[0][1], y) and n_again == n_targets       # drawn from (seed, step): reproducible
    assert math.isfinite(trainer.train_step())
    with pytest.raises(ValueError):
        TrainSettings(repeat_fraction=1.5)
    with pytest.raises(ValueError):
        TrainSettings(repeat_pool="words")


# ---- head detector ---------------------------------------------------------------------------------------
def test_detection_patterns_by_hand():
    ids = [5, 6, 7, 5, 6, 9]
    prev = circuits.detection_pattern("previous_token", ids)
    assert prev.tolist()[3] == [0, 0, 1, 0, 0, 0] and prev[0].sum() == 0
    dup = circuits.detection_pattern("duplicate_token", ids)
    assert dup.nonzero().tolist() == [[3, 0], [4, 1]]
    ind = circuits.detection_pattern("induction", ids)
    assert ind.nonzero().tolist() == [[3, 1], [4, 2]]       # 5 at 3 -> the 6 after the first 5; 6 at 4 -> 7
    first = circuits.detection_pattern("first_token", ids)
    assert first[:, 0].tolist() == [0, 1, 1, 1, 1, 1] and first[:, 1:].sum() == 0
    with pytest.raises(ValueError, match="head type"):
        circuits.detection_pattern("copying", ids)


def _rows(T, targets):
    """A (T, T) attention pattern: row i puts all its weight on targets[i]."""
    p = torch.zeros(T, T)
    for i, j in enumerate(targets):
        p[i, j] = 1.0
    return p


def test_head_scores_on_hand_built_patterns():
    ids = [9, 1, 2, 3, 1, 2, 3]                        # 1 2 3 repeated
    T = len(ids)
    previous = _rows(T, [0, 0, 1, 2, 3, 4, 5])
    induction = _rows(T, [0, 0, 0, 0, 2, 3, 0])         # 1 at 4 -> 2 at 2, 2 at 5 -> 3 at 3; row 6 to the sink
    sink = _rows(T, [0] * T)
    half = 0.5 * previous + 0.5 * sink
    scores = circuits.head_scores(torch.stack([previous, induction, sink, half])[None], ids)   # (1, 4)
    assert scores["previous_token"][0].tolist() == pytest.approx([1.0, 1 / 6, 1 / 6, 7 / 12])
    # induction rows: 4, 5, 6 (each has an earlier copy whose successor is before it)
    assert scores["induction"][0].tolist() == pytest.approx([0.0, 2 / 3, 0.0, 0.0])
    assert scores["duplicate_token"][0].tolist() == pytest.approx([0.0, 0.0, 0.0, 0.0])
    assert scores["first_token"][0].tolist() == pytest.approx([1 / 6, 4 / 6, 1.0, 7 / 12])
    # nothing repeats: duplicate and induction can't score
    none = circuits.head_scores(previous[None, None], [1, 2, 3, 4, 5, 6, 7])
    assert math.isnan(float(none["induction"][0, 0])) and math.isnan(float(none["duplicate_token"][0, 0]))
    assert float(none["previous_token"][0, 0]) == 1.0


def test_detect_heads_reads_the_models_own_patterns(model):
    ids = circuits.repeated_random_tokens(6, 1, seed=2)[0]
    scores, patterns = circuits.detect_heads(model, ids)
    _, cache = model.run_with_cache(ids, names=["blocks.1.attn.hook_pattern"])
    assert torch.equal(patterns[1], cache["blocks.1.attn.hook_pattern"])
    assert set(scores) == set(circuits.HEAD_TYPES)
    for s in scores.values():
        assert s.shape == (3, 4) and float(s.min()) >= 0 and float(s.max()) <= 1
    assert torch.allclose(scores["induction"], circuits.head_scores(patterns, ids)["induction"])


# ---- activation patching ---------------------------------------------------------------------------------
CLEAN = [464, 3797, 3332, 319, 262, 2603, 13, 464, 3797]
CORRUPT = [464, 3290, 3332, 319, 262, 2603, 13, 464, 3797]


def _clean_cache(model):
    return model.run_with_cache(CLEAN, names=circuits.patch_names(model.config.n_layer), last_only=True)


def test_patching_everything_restores_clean_and_nothing_gives_corrupted(model):
    clean_logits, cache = _clean_cache(model)
    corrupt_logits, _ = model.run_with_cache(CORRUPT, names=[], last_only=True)
    assert torch.equal(circuits.run_patched(model, CORRUPT, cache, [Patch("resid_pre", 0)]), clean_logits[-1])
    last = model.config.n_layer - 1
    # every position's attention and MLP output of the last layer, and the residual entering it
    everything = [Patch("resid_pre", last), Patch("attn_out", last), Patch("mlp_out", last)]
    assert torch.equal(circuits.run_patched(model, CORRUPT, cache, everything), clean_logits[-1])
    # every head of every layer, with every MLP: the run is the clean one
    heads = [Patch("heads", l, None, h) for l in range(3) for h in range(4)] + [Patch("mlp_out", l) for l in range(3)]
    assert torch.allclose(circuits.run_patched(model, CORRUPT, cache, heads), clean_logits[-1], atol=1e-5)
    assert torch.equal(circuits.run_patched(model, CORRUPT, cache, []), corrupt_logits[-1])


def test_the_batched_sweep_equals_patches_one_at_a_time(model):
    clean_logits, cache = _clean_cache(model)
    # A random model's two prompts share a top token: take the two tokens the prompts move most apart.
    corrupt_logits, _ = model.run_with_cache(CORRUPT, names=[], last_only=True)
    shift = clean_logits[-1] - corrupt_logits[-1]
    answer, wrong = int(shift.argmax()), int(shift.argmin())
    sweep = circuits.patching_sweep(model, CLEAN, CORRUPT, answer, wrong, batch_size=7)
    T, L = len(CLEAN), model.config.n_layer

    def diff(patch):
        """The logit difference of one patched run, one ordinary forward pass."""
        return float(circuits.logit_diff(circuits.run_patched(model, CORRUPT, cache, [patch]), sweep.answer, sweep.wrong))

    def raw(scores):
        """The sweep's normalised scores back in logits (a batch of 7 rounds a little differently from one row)."""
        return scores * (sweep.clean_diff - sweep.corrupt_diff) + sweep.corrupt_diff

    for kind in ("resid_pre", "attn_out", "mlp_out"):
        assert sweep.scores[kind].shape == (L, T)
        one = torch.tensor([[diff(Patch(kind, l, p)) for p in range(T)] for l in range(L)], dtype=torch.float64)
        assert torch.allclose(raw(sweep.scores[kind]), one, atol=1e-4), kind
    one = torch.tensor([[diff(Patch("heads", l, None, h)) for h in range(4)] for l in range(L)], dtype=torch.float64)
    assert torch.allclose(raw(sweep.scores["heads"]), one, atol=1e-4)
    assert sweep.n_runs == 3 * L * T + L * 4
    # where the prompts agree, patching the residual changes nothing; the first layer at the changed token restores
    assert sweep.scores["resid_pre"][0, 1] == pytest.approx(1.0, abs=1e-3)
    assert sweep.scores["resid_pre"][0, [0, 2, 3, 4, 5, 6, 7, 8]].abs().max() < 1e-3
    progress = []
    circuits.patching_sweep(model, CLEAN, CORRUPT, answer, wrong, kinds=("heads",), progress=lambda d, t: progress.append((d, t)))
    assert progress[-1] == (12, 12)


def test_patching_refuses_what_it_cant_compare(model):
    with pytest.raises(PatchingError, match="clean one has 9, the corrupted one 8"):
        circuits.patching_sweep(model, CLEAN, CORRUPT[:-1])
    with pytest.raises(PatchingError, match="same tokens"):
        circuits.patching_sweep(model, CLEAN, list(CLEAN))
    with pytest.raises(PatchingError, match="same token"):
        circuits.patching_sweep(model, CLEAN, CORRUPT, answer=5, wrong=5)
    with pytest.raises(ValueError, match="patch kind"):
        circuits.patching_sweep(model, CLEAN, CORRUPT, kinds=("resid_post",))


def test_patched_logits_match_hf_with_its_modules_edited_the_same_way(tmp_path):
    """An HF GPT-2 with an odd hidden size (15 = 3 heads of 5): forward hooks on its blocks, attention, MLP
    and c_proj copy the clean run's tensors in; our patches must give the same logits."""
    transformers = pytest.importorskip("transformers")
    from gpt2core.reference.weights import load
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50257, n_positions=32, n_embd=15, n_layer=2, n_head=3,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "ln_" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.5)
            elif p.dim() == 2:
                p.mul_(10)   # weights of std 0.2: the prompts' difference reaches the last logits
    hf.save_pretrained(tmp_path)
    ours = load(tmp_path).eval()
    blocks = hf.transformer.h
    clean, corrupt = torch.tensor([CLEAN]), torch.tensor([CORRUPT])

    def hf_capture():
        """The clean run's block inputs, attention outputs, MLP outputs and c_proj inputs, from HF itself."""
        store, handles = {}, []
        for l, b in enumerate(blocks):
            handles.append(b.register_forward_pre_hook(
                lambda m, a, k, l=l: store.__setitem__(("resid_pre", l), (a[0] if a else k["hidden_states"]).clone()),
                with_kwargs=True))
            handles.append(b.attn.register_forward_hook(lambda m, a, o, l=l: store.__setitem__(("attn_out", l), o[0].clone())))
            handles.append(b.mlp.register_forward_hook(lambda m, a, o, l=l: store.__setitem__(("mlp_out", l), o.clone())))
            handles.append(b.attn.c_proj.register_forward_pre_hook(
                lambda m, a, l=l: store.__setitem__(("heads", l), a[0].clone())))
        with torch.no_grad():
            hf(clean)
        for h in handles:
            h.remove()
        return store

    src = hf_capture()

    def hf_patched(patch: Patch):
        l, pos = patch.layer, slice(None) if patch.position is None else patch.position
        value = src[(patch.kind, l)]
        if patch.kind == "resid_pre":
            def pre(m, a, k):
                x = (a[0] if a else k["hidden_states"]).clone()
                x[:, pos] = value[:, pos]
                return ((x, *a[1:]), k) if a else (a, {**k, "hidden_states": x})
            handle = blocks[l].register_forward_pre_hook(pre, with_kwargs=True)
        elif patch.kind == "heads":
            hs = 5

            def pre(m, a):
                x = a[0].clone()
                x[:, :, patch.head * hs:(patch.head + 1) * hs] = value[:, :, patch.head * hs:(patch.head + 1) * hs]
                return (x, *a[1:])
            handle = blocks[l].attn.c_proj.register_forward_pre_hook(pre)
        else:
            module = blocks[l].attn if patch.kind == "attn_out" else blocks[l].mlp

            def post(m, a, o):
                x = (o[0] if isinstance(o, tuple) else o).clone()
                x[:, pos] = value[:, pos]
                return (x, *o[1:]) if isinstance(o, tuple) else x
            handle = module.register_forward_hook(post)
        try:
            with torch.no_grad():
                return hf(corrupt).logits[0, -1]
        finally:
            handle.remove()

    _, cache = ours.run_with_cache(CLEAN, names=circuits.patch_names(2), last_only=True)
    patches = [Patch("resid_pre", 1, 1), Patch("attn_out", 0, 1), Patch("mlp_out", 1, 8), Patch("mlp_out", 0, None),
               Patch("heads", 0, None, 2), Patch("heads", 1, None, 0), Patch("resid_pre", 0, None)]
    for patch in patches:
        theirs = hf_patched(patch)
        mine = circuits.run_patched(ours, CORRUPT, cache, [patch])
        assert torch.allclose(mine, theirs, atol=1e-4, rtol=1e-4), patch
        # and each patch moves the logits far more than that tolerance: the comparison can fail
        with torch.no_grad():
            plain = hf(corrupt).logits[0, -1]
        assert float((theirs - plain).abs().max()) > 1e-2, patch
