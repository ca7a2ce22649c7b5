"""The model you trained, loaded here: LLMs-from-scratch, nanoGPT and minGPT checkpoints, each built with the
upstream class (tests/upstream_gpt.py), trained a few steps, saved as its users save it, loaded by
gpt2core.load: the same logits (fp32) and the same greedy continuation; then through ``python -m
gpt2core.convert`` into a Hugging Face folder that ``transformers`` loads with the same logits. And the hostile
files: each a plain WeightsError, nothing run, nothing allocated."""
import json
import pickle

import pytest
import torch

import gpt2core as g
from gpt2core import convert
from gpt2core.reference import formats
from gpt2core.reference.weights import WeightsError
from gpt2core.text import tokenizer
from tests import upstream_gpt as up
from tests.test_core_weights import Payload   # unpickling it creates a marker file

GPT2_VOCAB = 50257


def lfs(tmp, qkv_bias=False, with_optimizer=False):
    cfg = dict(up.LFS_TINY, vocab_size=GPT2_VOCAB, qkv_bias=qkv_bias)   # the course trains on GPT-2's BPE
    torch.manual_seed(1)
    model = up.LFSGPTModel(cfg)
    opt = up.train_a_few_steps(model, cfg["vocab_size"], cfg["context_length"])
    path = tmp / ("model_and_optimizer.pth" if with_optimizer else "model.pth")
    if with_optimizer:
        up.save_lfs_with_optimizer(model, opt, path)
    else:
        up.save_lfs_state_dict(model, path)
    return model, path, cfg


def nanogpt(tmp, **args):
    model_args = dict(up.NANOGPT_TINY_ARGS, **args)
    torch.manual_seed(2)
    model = up.NanoGPT(up.NanoGPTConfig(**model_args))
    opt = up.train_a_few_steps(model, model_args["vocab_size"], model_args["block_size"])
    return model, model_args, opt


# name -> (build, load kwargs): build(tmp) returns (upstream model, checkpoint path, vocabulary size shown)
def build_lfs_with_n_head(tmp):
    model, path, cfg = lfs(tmp)
    return model, path, {"n_head": cfg["n_heads"]}


def build_lfs_config_beside(tmp):
    model, path, cfg = lfs(tmp, qkv_bias=True, with_optimizer=True)
    (tmp / "config.json").write_text(json.dumps(cfg))            # GPT_CONFIG_124M, as JSON, beside the file
    return model, path, {}


def build_nanogpt_char(tmp):
    model, model_args, opt = nanogpt(tmp)                       # bias=False, vocabulary 65: shakespeare_char
    up.save_nanogpt_ckpt(model, opt, model_args, tmp / "ckpt.pt", compiled_prefix=True)
    up.save_nanogpt_meta(tmp / "meta.pkl")
    return model, tmp / "ckpt.pt", {}


def build_nanogpt_padded(tmp):
    model, model_args, opt = nanogpt(tmp, bias=True, vocab_size=50304)   # GPT-2's BPE padded to 64 * 786
    up.save_nanogpt_ckpt(model, opt, model_args, tmp / "ckpt.pt")
    return model, tmp / "ckpt.pt", {}


def build_mingpt(tmp):
    torch.manual_seed(3)
    model = up.MinGPT(**dict(up.MINGPT_TINY, vocab_size=GPT2_VOCAB))
    up.train_a_few_steps(model, GPT2_VOCAB, up.MINGPT_TINY["block_size"])
    up.save_mingpt(model, tmp / "model.pt")
    return model, tmp / "model.pt", {"n_head": up.MINGPT_TINY["n_head"]}


FORMATS = {"lfs-state-dict": (build_lfs_with_n_head, "lfs"), "lfs-with-optimizer": (build_lfs_config_beside, "lfs"),
           "nanogpt-char": (build_nanogpt_char, "nanogpt"), "nanogpt-padded-bpe": (build_nanogpt_padded, "nanogpt"),
           "mingpt": (build_mingpt, "mingpt")}


@pytest.fixture(scope="module", params=list(FORMATS))
def saved(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    build, kind = FORMATS[request.param]
    upstream, path, kwargs = build(tmp)
    return request.param, kind, upstream.eval(), path, kwargs


def test_each_format_gives_the_upstream_logits_and_greedy_continuation(saved):
    name, kind, upstream, path, kwargs = saved
    loaded = formats.load_checkpoint(path, **kwargs)
    model, n_vocab = loaded.model, loaded.model.config.vocab_size
    assert loaded.format == kind
    assert n_vocab == (len(up.SHAKESPEARE_CHARS) if name == "nanogpt-char" else GPT2_VOCAB)
    ids = torch.randint(0, n_vocab, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = up.full_logits(upstream, ids)[..., :n_vocab]      # padded rows are never a token
        got = model(ids)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    prompt = ids[0, :6].tolist()
    with tokenizer.using(model.tokenizer):
        ours = g.generate(model, prompt, 10, temperature=0.0, stop_at_eot=False)
    assert ours == up.greedy(lambda x: up.full_logits(upstream, x)[..., :n_vocab], prompt, 10)
    if name == "nanogpt-char":
        assert model.tokenizer.itos == list(up.SHAKESPEARE_CHARS)
        with tokenizer.using(model.tokenizer):
            assert tokenizer.decode(tokenizer.encode("ROMEO: But soft!")) == "ROMEO: But soft!"
        assert "exact GELU" in " ".join(loaded.notes) and "no biases" in " ".join(loaded.notes)
    if name == "nanogpt-padded-bpe":
        assert "50,304" in " ".join(loaded.notes) and model.tokenizer is None


def test_convert_writes_a_folder_transformers_loads_with_the_same_logits(saved, tmp_path):
    from transformers import GPT2LMHeadModel

    name, _, upstream, path, kwargs = saved
    args = [str(path), str(tmp_path / "hf"), "--to", "hf"] + (["--n-head", str(kwargs["n_head"])] if kwargs else [])
    assert convert.main(args) == 0
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    n_vocab = hf.config.vocab_size
    ids = torch.randint(0, n_vocab, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, up.full_logits(upstream, ids)[..., :n_vocab], atol=1e-5, rtol=1e-5)
    # And back: our own format keeps a character vocabulary.
    assert convert.main([str(path), str(tmp_path / "ours"), "--to", "ours"] + args[4:]) == 0
    again = g.load(tmp_path / "ours")
    assert (again.tokenizer is None) == (name != "nanogpt-char")
    with torch.no_grad():
        torch.testing.assert_close(again(ids), hf(ids).logits, atol=1e-5, rtol=1e-5)


# ---- what the file can't tell ------------------------------------------------------------------

def test_the_heads_are_asked_for_plainly(tmp_path):
    _, path, cfg = lfs(tmp_path)
    with pytest.raises(WeightsError, match=r"number of attention heads is not in the file.*--n-head N"):
        formats.load_checkpoint(path)
    assert formats.load_checkpoint(path, config=cfg).model.config.n_head == cfg["n_heads"]
    with pytest.raises(WeightsError, match="5 heads do not divide the width 48"):
        formats.load_checkpoint(path, n_head=5)
    with pytest.raises(WeightsError, match="config says n_layer=3 but the tensors have 2"):
        formats.load_checkpoint(path, config=dict(cfg, n_layers=3))


def test_command_line_weights_take_a_course_checkpoint(tmp_path):
    from explorer.session import build_registry
    _, path, cfg = lfs(tmp_path)
    registry = build_registry(weights_arg=str(path), n_head=cfg["n_heads"])
    assert registry.default == "model.pth" and not registry.startup_notice
    assert "LLMs-from-scratch GPTModel" in registry.get("model.pth").source
    registry = build_registry(weights_arg=str(path))
    assert "number of attention heads" in registry.startup_notice and registry.default != "model.pth"


# ---- hostile files ------------------------------------------------------------------------------

def hostile(tmp, marker):
    """name -> (path, load kwargs, message regex)"""
    good_model, good, cfg = lfs(tmp)
    files = {}
    rnd = tmp / "random.pth"
    rnd.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    files["random bytes"] = (rnd, {}, r"not a (readable )?PyTorch checkpoint")
    cut = tmp / "truncated.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    files["truncated"] = (cut, {"n_head": 4}, r"not a (readable )?PyTorch checkpoint")
    llama = tmp / "llama.pth"
    torch.save({"model.embed_tokens.weight": torch.zeros(10, 8), "model.layers.0.self_attn.q_proj.weight": torch.zeros(8, 8),
                "model.layers.0.mlp.gate_proj.weight": torch.zeros(16, 8)}, llama)
    files["a Llama"] = (llama, {}, r"not a GPT-2: it looks like a Llama-family model.*q_proj")
    state = torch.load(good, weights_only=True)
    wrong = tmp / "wrong_shape.pth"
    torch.save({**state, "trf_blocks.1.ff.layers.0.weight": torch.zeros(100, 48)}, wrong)
    files["shapes disagree"] = (wrong, {"n_head": 4}, r"wrong shapes for the config.*blocks\.1\.mlp\.c_fc\.weight")
    narrow = tmp / "narrow_pos.pth"
    torch.save({**state, "pos_emb.weight": torch.zeros(32, 40)}, narrow)
    files["embeddings disagree"] = (narrow, {"n_head": 4}, r"token embedding is 48 wide but the position embedding 40")
    files["absurd config"] = (good, {"config": dict(cfg, n_heads=10**7)}, r"n_head=10,000,000 is beyond")
    files["over the size limit"] = (good, {"n_head": 4, "max_bytes": 1000}, r"MB is over the limit")
    whole = tmp / "whole_model.pth"
    torch.save(good_model, whole)
    files["a whole pickled module"] = (whole, {}, r"refused.*torch\.save\(model\.state_dict\(\)")
    trap = tmp / "trap.pth"
    torch.save({"tok_emb.weight": Payload(marker)}, trap)
    files["code in a .pth"] = (trap, {}, r"refused.*(open|Payload)")
    meta = tmp / "evil_meta.pkl"
    meta.write_bytes(pickle.dumps(Payload(marker)))
    files["code in meta.pkl"] = (good, {"n_head": 4, "vocab": meta}, r"not a pickle of plain data.*only plain data")
    return files


def test_hostile_files_are_refused_plainly_and_nothing_runs(tmp_path):
    marker = tmp_path / "UNPICKLED"
    for what, (path, kwargs, message) in hostile(tmp_path, marker).items():
        with pytest.raises(WeightsError, match=message):
            formats.load_checkpoint(path, **kwargs)
        assert not marker.exists(), f"{what}: a payload ran"


def test_the_plain_unpickler_admits_plain_data_only():
    data = {"vocab_size": 3, "itos": {0: "a", 1: "b", 2: "c"}, "nested": [1, 2.5, ("x", None, True)]}
    assert formats.plain_unpickle(pickle.dumps(data)) == data
    with pytest.raises(WeightsError, match="only plain data"):
        formats.plain_unpickle(pickle.dumps({"f": print}))


def test_character_vocabulary_from_text_and_json(tmp_path):
    text = tmp_path / "input.txt"
    text.write_text("hello world\n", encoding="utf-8")
    assert formats.read_vocabulary(text).itos == sorted(set("hello world\n"))   # as prepare.py builds it
    (tmp_path / "v.json").write_text(json.dumps(["a", "b", "a"]))
    with pytest.raises(WeightsError, match="repeats a character"):
        formats.read_vocabulary(tmp_path / "v.json")
    tok = tokenizer.CharTokenizer("abc")
    with pytest.raises(tokenizer.UnknownCharacters, match="'d'"):
        tok.encode("abd")


def test_the_active_tokenizer_is_the_contexts(tmp_path):
    """using() restores; explorer.scheduling runs each request (and each generator's steps) in a context of
    its own, so a character model's request never leaves its tokenizer active."""
    from explorer.scheduling import in_own_context
    chars = tokenizer.CharTokenizer("ab ")
    with tokenizer.using(chars):
        assert tokenizer.encode("ab a") == [0, 1, 2, 0] and tokenizer.eot_id() is None
    assert tokenizer.active() is None and tokenizer.eot_id() == tokenizer.EOT_ID

    def request():
        tokenizer.activate(chars)
        return tokenizer.encode("ba")

    def streamed():
        tokenizer.activate(chars)
        for _ in range(3):
            yield tokenizer.encode("b")     # every step still sees the request's tokenizer

    assert in_own_context(request)() == [1, 0] and tokenizer.active() is None
    assert list(in_own_context(streamed)()) == [[1]] * 3 and tokenizer.active() is None


def test_kv_cache_generation_of_an_exact_gelu_model_skips_the_tanh_c_step(saved):
    """The C decode step computes GPT-2's tanh GELU: a nanoGPT model (exact GELU) decodes through the PyTorch
    forward, and the same weights with the tanh GELU still get the C step (conftest sets GPT2_KERNELS=native)."""
    from gpt2core.kernels import backend

    name, _, _, path, kwargs = saved
    if name not in ("nanogpt-char", "nanogpt-padded-bpe"):
        pytest.skip("the nanoGPT checkpoints carry the exact GELU")
    model = formats.load_checkpoint(path, **kwargs).model
    tanh_twin = g.GPT2(model.config.replace(activation="gelu_tanh")).eval()
    tanh_twin.load_state_dict(model.state_dict())
    for m, expected in ((model, None), (tanh_twin, "the C step")):
        cache = g.KVCache(m.config, 1)
        with torch.no_grad():
            m(torch.tensor([[1, 2, 3]]), kv_cache=cache)
        assert (backend.decoder(m, cache, 4) is None) == (expected is None)
