"""gpt2core.features.sae / sae_train: a TopK SAE recovers a known dictionary; each metric against a hand
computation; SAELens's folder format both ways (and its older cfgs); the error-term splice is exact and edits
move exactly what they should; the TransformerLens centring adapter; plain errors; the CLI end to end."""
import json

import pytest
import torch
from safetensors.torch import save_file

import gpt2core as g
from gpt2core import sae as S
from gpt2core.features import sae_train

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return g.GPT2(g.get_config("tiny")).eval()   # d = 64, 2 layers


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(1))


def random_sae(d_in=64, d_sae=256, architecture="topk", k=8, seed=3, **kw) -> S.SAE:
    sae = S.SAE(d_in, d_sae, architecture, k=k, hook_name=HOOK, model_name="tiny", seed=seed, **kw)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return sae


# ---- training recovers a known answer ---------------------------------------------------------------

def sparse_data(n, d=32, m=32, seed=0):
    """Sparse non-negative combinations (2 or 3 active, each 0.5-1.5) of m random unit directions in d dims."""
    D = torch.randn(m, d, generator=torch.Generator().manual_seed(0))
    D /= D.norm(dim=-1, keepdim=True)                                                   # (m, d)
    gen = torch.Generator().manual_seed(seed)
    n_active = torch.randint(2, 4, (n,), generator=gen)                                 # (n,)
    ranks = torch.rand(n, m, generator=gen).argsort(-1).argsort(-1)                     # (n, m)
    coef = (torch.rand(n, m, generator=gen) + 0.5) * (ranks < n_active[:, None])       # (n, m)
    return coef @ D, D


def test_topk_sae_recovers_a_known_dictionary():
    x, D = sparse_data(8192)
    x_eval, _ = sparse_data(2048, seed=1)
    sae, log = sae_train.train_on_activations(x, 64, eval_acts=x_eval, k=3, steps=300, batch_tokens=256, lr=3e-3,
                                              eval_every=100)
    best = (D @ sae.W_dec.detach().T).max(-1).values   # (m,) each true direction's best cosine with a decoder row
    assert best.min() > 0.95
    final = log["final"]
    assert final["explained_variance"] > 0.97 and final["l0"] == pytest.approx(3.0)
    assert [e["step"] for e in log["evals"]] == [100, 200, 300] and len(log["loss"]) == 300
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(64), atol=1e-5)           # rows kept unit norm


def test_relu_sae_trains_with_an_l1_penalty():
    x, _ = sparse_data(2048)
    sparse, _ = sae_train.train_on_activations(x, 64, architecture="relu", l1_coefficient=0.5, steps=60,
                                               batch_tokens=256, lr=3e-3)
    dense, _ = sae_train.train_on_activations(x, 64, architecture="relu", l1_coefficient=0.0, steps=60,
                                              batch_tokens=256, lr=3e-3)
    assert S.l0(sparse.encode(x)) < S.l0(dense.encode(x))   # the penalty buys sparsity


def test_train_sae_streams_a_models_activations(model):
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 50257, (4, 16), generator=gen) for _ in range(3)]
    events = []
    sae, log = S.train_sae(model, HOOK, batches, 128, k=4, steps=6, batch_tokens=32, eval_every=3,
                           progress=events.append, dead_window=64)
    assert len(events) == 6 and [e["step"] for e in events if "eval" in e] == [3, 6]
    final = log["final"]
    for key in ("l0", "explained_variance", "ce_loss_recovered", "dead_fraction", "mse", "ce_clean", "ce_zero"):
        assert isinstance(final[key], float)
    with torch.no_grad():
        assert final["ce_clean"] == pytest.approx(float(model.loss(batches[0][:, :-1], batches[0][:, 1:])), rel=1e-5)
    assert final["l0"] == pytest.approx(4.0) and final["dead_window_tokens"] == 64
    assert sae.hook_name == HOOK and sae.log_sparsity.shape == (128,)


# ---- each metric by hand ----------------------------------------------------------------------------

def test_l0_and_mse_by_hand():
    f = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0], [3.0, 3.0, 3.0]])
    assert S.l0(f) == pytest.approx(5 / 3)
    assert S.l0(f.reshape(1, 3, 3)) == pytest.approx(5 / 3)   # any leading axes are tokens
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    assert S.mse(x, x + torch.tensor([[1.0, 0.0], [0.0, 3.0]])) == pytest.approx((1 + 9) / 4)


def test_explained_variance_by_hand():
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [4.0, 6.0]])   # mu = (2, 2); E||x - mu||^2 = (8 + 4 + 20) / 3
    x_hat = x + torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])   # E||x - x_hat||^2 = 2 / 3
    assert S.explained_variance(x, x_hat) == pytest.approx(1 - (2 / 3) / (32 / 3))
    # the set's mean, not each token's ratio: the mean of per-token ratios would be (1/8 + 1/4 + 0) / 3
    assert S.explained_variance(x, x_hat) != pytest.approx(1 - (1 / 8 + 1 / 4) / 3)
    assert S.explained_variance(x, x) == 1.0
    assert S.explained_variance(x, x.mean(0).expand_as(x)) == pytest.approx(0.0)


def test_dead_fraction_by_hand():
    assert S.dead_fraction(torch.tensor([0, 2, 3, 10]), window=3) == 0.5
    assert S.dead_fraction(torch.tensor([0, 2, 3, 10]), window=3, tokens_seen=2) == 0.75   # window: all 2 seen
    tracker = S.DeadLatentTracker(4, window=3)
    tracker.update(torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0]]))   # two tokens: latent 0 fires, then latent 1
    assert tracker.since.tolist() == [1, 0, 2, 2] and tracker.dead_fraction() == 0.5   # window = the 2 seen
    tracker.update(torch.tensor([[0.0, 0, 0, 5.0]]))
    assert tracker.since.tolist() == [2, 1, 3, 0]
    assert tracker.dead_mask().tolist() == [False, False, True, False] and tracker.dead_fraction() == 0.25
    tracker.update(torch.zeros(1, 4))
    assert tracker.since.tolist() == [3, 2, 4, 1] and tracker.dead_fraction() == 0.5


def identity_sae(d: int) -> S.SAE:
    """A ReLU SAE that reconstructs exactly: latents relu(x), relu(-x); decoder [I; -I]."""
    sae = S.SAE(d, 2 * d, "relu", hook_name=HOOK)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_ce_loss_recovered_is_one_for_a_perfect_sae_and_zero_for_a_silent_one(model, ids):
    perfect = identity_sae(64)
    x = S.hook_activations(model, ids, HOOK)
    assert torch.equal(perfect(x), x) and S.explained_variance(x, perfect(x)) == 1.0
    r = S.ce_loss_recovered(model, perfect, [ids])
    assert r["ce_sae"] == pytest.approx(r["ce_clean"], abs=1e-6)
    assert r["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-5) and r["ce_zero"] != r["ce_clean"]
    with torch.no_grad():
        assert r["ce_clean"] == pytest.approx(float(model.loss(ids[:, :-1], ids[:, 1:])), rel=1e-6)
    silent = identity_sae(64)
    with torch.no_grad():
        silent.W_dec.zero_()
    assert S.ce_loss_recovered(model, silent, [ids])["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-9)


# ---- SAELens's folder format -----------------------------------------------------------------------

@pytest.mark.parametrize("architecture", S.ARCHITECTURES)
def test_saelens_folder_round_trip(tmp_path, architecture):
    sae = random_sae(architecture=architecture, metadata={"context_size": 128, "dataset_path": "heldout.txt"})
    sae.log_sparsity = torch.linspace(-6, 0, 256)
    S.save_sae(sae, tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == {"topk": "topk", "relu": "standard", "jumprelu": "jumprelu"}[architecture]
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"], cfg["normalize_activations"]) == (64, 256, "float32", "none")
    assert cfg["metadata"]["hook_name"] == HOOK and cfg["metadata"]["model_name"] == "tiny"
    assert cfg["metadata"]["sae_lens_version"] >= "6" and cfg["metadata"]["context_size"] == 128
    assert cfg.get("k") == (8 if architecture == "topk" else None)
    back = S.load_sae(tmp_path)
    assert back.cfg_dict() == sae.cfg_dict()
    assert {n for n, _ in back.named_parameters()} == {n for n, _ in sae.named_parameters()}
    for name, p in sae.named_parameters():
        assert torch.equal(getattr(back, name), p), name
    assert torch.equal(back.log_sparsity, sae.log_sparsity)
    x = torch.randn(5, 64)
    assert torch.equal(back.encode(x), sae.encode(x))


def write_folder(folder, cfg, d_in=64, d_sae=256, seed=0, threshold=False):
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    tensors = {"W_enc": torch.randn(d_in, d_sae, generator=gen), "W_dec": torch.randn(d_sae, d_in, generator=gen),
               "b_enc": torch.randn(d_sae, generator=gen), "b_dec": torch.randn(d_in, generator=gen)}
    if threshold:
        tensors["threshold"] = torch.rand(d_sae, generator=gen)
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return tensors


# mats_sae_training / SAELens < 1: what jbloom/GPT2-Small-SAEs-Reformatted's cfg.json files look like
OLD_CFG = {"model_name": "gpt2-small", "hook_point": "blocks.0.hook_resid_pre", "hook_point_layer": 0,
           "hook_point_head_index": None, "dataset_path": "Skylion007/openwebtext", "context_size": 128,
           "d_in": 64, "expansion_factor": 4, "dtype": "torch.float32", "device": "mps", "l1_coefficient": 8e-05,
           "b_dec_init_method": "geometric_median", "dead_feature_window": 5000}


def test_reads_old_style_and_saelens5_cfgs(tmp_path):
    tensors = write_folder(tmp_path / "old", OLD_CFG)
    old = S.load_sae(tmp_path / "old")
    assert (old.architecture, old.d_in, old.d_sae, old.hook_name, old.model_name) == \
        ("relu", 64, 256, "blocks.0.hook_resid_pre", "gpt2-small")
    assert torch.equal(old.W_enc, tensors["W_enc"]) and not old.centred
    assert old.metadata["context_size"] == 128 and "l1_coefficient" not in old.metadata
    v5 = {"architecture": "standard", "d_in": 64, "d_sae": 256, "activation_fn_str": "topk",
          "activation_fn_kwargs": {"k": 5}, "hook_name": "blocks.1.hook_resid_post", "hook_layer": 1,
          "hook_head_index": None, "model_name": "tiny", "normalize_activations": "none", "dtype": "float32",
          "apply_b_dec_to_input": False, "sae_lens_training_version": "5.3.0"}
    write_folder(tmp_path / "v5", v5)
    topk = S.load_sae(tmp_path / "v5")
    assert (topk.architecture, topk.k, topk.hook_name, topk.apply_b_dec_to_input) == \
        ("topk", 5, "blocks.1.hook_resid_post", False)
    S.save_sae(topk, tmp_path / "again")   # written in 6's layout, read back the same
    assert S.load_sae(tmp_path / "again").cfg_dict() == topk.cfg_dict()


def test_rescaled_topk_is_folded_to_the_same_function(tmp_path):
    cfg = {"architecture": "topk", "d_in": 64, "d_sae": 256, "k": 6, "rescale_acts_by_decoder_norm": True,
           "metadata": {"hook_name": HOOK, "sae_lens_version": "6.5.0"}}
    t = write_folder(tmp_path, cfg)
    sae = S.load_sae(tmp_path)
    x = torch.randn(7, 64, generator=torch.Generator().manual_seed(4))
    norms = t["W_dec"].norm(dim=-1)
    pre = ((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]) * norms                           # SAELens's TopKSAE.encode
    top = pre.topk(6, dim=-1)
    f = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    expected = (f / norms) @ t["W_dec"] + t["b_dec"]
    assert torch.allclose(sae(x), expected, atol=1e-4)


@pytest.mark.parametrize("change, words", [
    ({"normalize_activations": "constant_norm_rescale"}, "normalize_activations"),
    ({"normalize_activations": True}, "expected_average_only_in"),
    ({"architecture": "gated"}, "architecture 'gated'"),
    ({"hook_point_head_index": 3}, "hook_head_index"),
    ({"d_in": None}, "d_in"),
])
def test_unsupported_settings_are_plain_errors(tmp_path, change, words):
    write_folder(tmp_path, {**OLD_CFG, **change})
    with pytest.raises(ValueError, match=words):
        S.load_sae(tmp_path)


# ---- splicing ---------------------------------------------------------------------------------------

def test_error_term_splice_is_exact_and_edits_move_what_they_should(model, ids):
    sae = random_sae()
    clean, _ = model.run_with_cache(ids, names=[])
    spliced, cache = model.run_with_cache(ids, names=[HOOK], hooks=S.splice_hooks(sae, model=model))
    assert torch.allclose(spliced, clean, atol=1e-5, rtol=0)
    x = cache[HOOK]                                                                     # (B, T, d) unedited
    f = sae.encode(x)
    on = f[:, 5].nonzero()[0, 1].item()   # a latent active at position 5 of the first sequence
    ablated, cache = model.run_with_cache(ids, names=[HOOK],
                                          hooks=S.splice_hooks(sae, edit=S.ablate(on, positions=[5])))
    moved = x.clone()
    moved[:, 5] -= f[:, 5, on, None] * sae.W_dec[on]
    assert torch.allclose(cache[HOOK], moved, atol=1e-5)
    assert torch.allclose(ablated[:, :5], clean[:, :5], atol=1e-5)   # earlier positions can't see it
    assert not torch.allclose(ablated[:, 5:], clean[:, 5:], atol=1e-3)
    clamped, cache = model.run_with_cache(ids, names=[HOOK], hooks=S.splice_hooks(sae, edit=S.clamp([on, 1], 4.0)))
    moved = x + (4.0 - f[..., [on, 1]]) @ sae.W_dec[[on, 1]]
    assert torch.allclose(cache[HOOK], moved, atol=1e-4)
    assert not torch.allclose(clamped, clean, atol=1e-3)
    # clamping a latent to its own value changes nothing
    same = S.splice_hooks(sae, edit=lambda lat: lat.clone())
    assert torch.equal(model.run_with_cache(ids, names=[], hooks=same)[0], spliced)


def test_centring_adapter(model, ids):
    """A centred SAE reads x less its mean over d_model (TransformerLens's centred stream); the splice stays exact."""
    plain = random_sae(d_sae=128)
    centred = random_sae(d_sae=128, centred=True)
    x = S.hook_activations(model, ids, HOOK)
    x_c = x - x.mean(-1, keepdim=True)
    assert x.mean(-1).abs().max() > 1e-3   # our stream has a mean to remove
    assert torch.allclose(centred.encode(x), plain.encode(x_c), atol=1e-6)
    assert torch.allclose(centred.encode(x), centred.encode(x_c), atol=1e-6)
    assert torch.allclose(centred(x), plain(x_c) + x.mean(-1, keepdim=True), atol=1e-6)
    clean, _ = model.run_with_cache(ids, names=[])
    spliced, _ = model.run_with_cache(ids, names=[], hooks=S.splice_hooks(centred, model=model))
    assert torch.allclose(spliced, clean, atol=1e-5, rtol=0)
    # the mean never reaches the logits (every reader is a LayerNorm): replacing x by x_c changes nothing
    shifted, _ = model.run_with_cache(ids, names=[], hooks={HOOK: lambda t, _n: t - t.mean(-1, keepdim=True)})
    assert torch.allclose(shifted, clean, atol=1e-4)
    with pytest.raises(ValueError, match="residual"):
        S.check_fits(model, S.SAE(256, 512, centred=True), "blocks.0.mlp.hook_post")


def test_gpt2_small_res_jb_loads_from_the_local_hf_cache_only(tmp_path):
    """A random SAE laid out as jbloom/GPT2-Small-SAEs-Reformatted in a Hugging Face cache folder (never a download)."""
    repo = tmp_path / "models--jbloom--GPT2-Small-SAEs-Reformatted"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123456789abcdef0123456789abcdef01234567")
    snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    write_folder(snapshot / "blocks.0.hook_resid_pre", OLD_CFG)
    sae = S.load_gpt2_small_res_jb(0, cache_dir=tmp_path)
    assert sae.centred and sae.hook_name == "blocks.0.hook_resid_pre" and sae.d_sae == 256
    assert S.load_gpt2_small_res_jb(3, cache_dir=tmp_path) is None
    with pytest.raises(FileNotFoundError, match="huggingface-cli download"):
        S.load_gpt2_small_res_jb(3, cache_dir=tmp_path, required=True)
    S.save_sae(sae, tmp_path / "saved")   # the flag travels in SAELens's own key
    cfg = json.loads((tmp_path / "saved" / "cfg.json").read_text())
    assert cfg["metadata"]["model_from_pretrained_kwargs"] == {"center_writing_weights": True}
    assert S.load_sae(tmp_path / "saved").centred


def test_d_in_mismatch_is_a_plain_error(model):
    with pytest.raises(ValueError, match=r"48-wide.*blocks\.1\.hook_resid_post is 64 wide"):
        S.splice_hooks(S.SAE(48, 96), "blocks.1.hook_resid_post", model=model)
    with pytest.raises(ValueError, match="blocks.0.mlp.hook_post is 256 wide"):
        S.check_fits(model, S.SAE(64, 96), "blocks.0.mlp.hook_post")
    with pytest.raises(ValueError, match="not a hook point"):
        S.check_fits(model, S.SAE(64, 96), "blocks.9.hook_resid_post")


# ---- the CLI ----------------------------------------------------------------------------------------

def test_cli_writes_the_saelens_folder_and_a_card(tmp_path, model):
    g.save(model, tmp_path / "model")
    text = tmp_path / "text.txt"
    text.write_text("To be, or not to be, that is the question. " * 40)
    out = tmp_path / "sae"
    argv = ["--model", str(tmp_path / "model"), "--hook", HOOK, "--d-sae", "128", "--k", "4", "--steps", "4",
            "--batch-tokens", "64", "--context", "16", "--eval-every", "2", "--text", str(text), "--out", str(out),
            "--device", "cpu"]
    assert sae_train.main(argv) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["command"] == "python -m gpt2core.sae " + " ".join(argv)
    assert set(card["metrics"]) >= {"l0", "explained_variance", "ce_loss_recovered", "dead_fraction", "mse"}
    assert card["wall_time_s"] > 0 and [e["step"] for e in card["evals"]] == [2, 4]
    sae = S.load_sae(out)
    assert (sae.hook_name, sae.d_sae, sae.k, sae.model_name) == (HOOK, 128, 4, "model")
    assert (out / "sparsity.safetensors").is_file()
