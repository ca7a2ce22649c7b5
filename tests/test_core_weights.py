"""gpt2core.reference.weights: our format round-trips, HF folders, clear errors, no pickle, offline Hub."""
import json
import os
import pickle
import shutil
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from gpt2core import GPT2, WeightsError, get_config, load, load_hf, save
from gpt2core.reference.weights import download_hf, load_from_hub



def perturbed_tiny(**overrides) -> GPT2:
    torch.manual_seed(0)
    model = GPT2(get_config("tiny", **overrides)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln_" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.5)
    return model


@pytest.fixture
def hf_copy(hf_tiny_dir, tmp_path):
    """A private copy of the HF folder that a test may break."""
    dst = tmp_path / "hf"
    shutil.copytree(hf_tiny_dir, dst)
    return dst


# ---- our format ------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [{}, {"tie_weights": False}, {"qkv_bias": False}])
def test_save_load_round_trip_exact(tmp_path, overrides):
    model = perturbed_tiny(**overrides)
    folder = save(model, tmp_path / "ckpt", metadata={"note": "hello"})
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    loaded = load(folder)
    assert loaded.config == model.config
    assert not loaded.training
    expected = model.state_dict()
    got = loaded.state_dict()
    assert set(got) == set(expected)
    for name, t in expected.items():
        assert got[name].dtype == torch.float32
        assert torch.equal(got[name], t), name
    assert (loaded.lm_head.weight is loaded.wte.weight) == model.config.tie_weights
    doc = json.loads((folder / "config.json").read_text())
    assert doc["format"] == "gpt2core" and doc["note"] == "hello" and doc["config"] == model.config.to_dict()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_tied_checkpoint_stores_the_embedding_once(tmp_path):
    folder = save(perturbed_tiny(), tmp_path / "ckpt")
    names = set(load_file(str(folder / "model.safetensors")))
    assert "wte.weight" in names and "lm_head.weight" not in names
    untied = save(perturbed_tiny(tie_weights=False), tmp_path / "untied")
    assert "lm_head.weight" in set(load_file(str(untied / "model.safetensors")))


def test_load_accepts_the_files_inside_the_folder(tmp_path):
    model = perturbed_tiny()
    folder = save(model, tmp_path / "ckpt")
    for path in (folder, folder / "config.json", folder / "model.safetensors", str(folder)):
        assert torch.equal(load(path).wte.weight, model.wte.weight)


def test_fp16_storage_round_trip(tmp_path):
    model = perturbed_tiny()
    folder = save(model, tmp_path / "half", dtype=torch.float16)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:   # stored as fp16
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    full_size = (save(model, tmp_path / "full") / "model.safetensors").stat().st_size
    assert (folder / "model.safetensors").stat().st_size < 0.55 * full_size
    loaded = load(folder)
    for name, t in model.state_dict().items():
        got = loaded.state_dict()[name]
        assert got.dtype == torch.float32
        assert torch.equal(got, t.half().float()), name          # exactly the fp16 rounding
        torch.testing.assert_close(got, t, rtol=1e-3, atol=1e-4)  # which is fp16 precision


# ---- Hugging Face folders --------------------------------------------------------------------

def test_hf_folder_loads(hf_tiny_dir):
    hf_cfg = json.loads((hf_tiny_dir / "config.json").read_text())
    model = load_hf(hf_tiny_dir)
    assert (model.config.n_layer, model.config.n_embd, model.config.n_head, model.config.n_ctx) == (
        hf_cfg["n_layer"], hf_cfg["n_embd"], hf_cfg["n_head"], hf_cfg["n_positions"]) == (3, 32, 4, 64)
    assert model.config.tie_weights and model.lm_head.weight is model.wte.weight
    assert not model.training
    raw = {k.removeprefix("transformer."): v for k, v in load_file(str(hf_tiny_dir / "model.safetensors")).items()}
    sd = model.state_dict()
    for i in range(3):
        for conv in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):   # HF Conv1D is (in, out)
            assert torch.equal(sd[f"blocks.{i}.{conv}.weight"], raw[f"h.{i}.{conv}.weight"].t())
            assert torch.equal(sd[f"blocks.{i}.{conv}.bias"], raw[f"h.{i}.{conv}.bias"])
        for ln in ("ln_1", "ln_2"):
            assert torch.equal(sd[f"blocks.{i}.{ln}.weight"], raw[f"h.{i}.{ln}.weight"])
    for name in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"):
        assert torch.equal(sd[name], raw[name])
    # load() recognises the HF format too
    assert torch.equal(load(hf_tiny_dir).blocks[2].mlp.c_fc.weight, sd["blocks.2.mlp.c_fc.weight"])


def test_hf_folder_resaved_in_our_format(hf_tiny_dir, tmp_path):
    model = load_hf(hf_tiny_dir)
    again = load(save(model, tmp_path / "ours"))
    for name, t in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], t)


# ---- clear errors ----------------------------------------------------------------------------

def test_missing_config_json(hf_copy, tmp_path):
    (hf_copy / "config.json").unlink()
    with pytest.raises(WeightsError) as info:
        load(hf_copy)
    assert str(hf_copy / "config.json") in str(info.value) and "not found" in str(info.value)
    with pytest.raises(WeightsError, match="config.json"):
        load_hf(hf_copy)


def test_missing_safetensors(hf_copy, tmp_path):
    (hf_copy / "model.safetensors").unlink()
    with pytest.raises(WeightsError) as info:
        load(hf_copy)
    assert str(hf_copy / "model.safetensors") in str(info.value) and "not found" in str(info.value)
    ours = save(perturbed_tiny(), tmp_path / "ours")
    (ours / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match="model.safetensors"):
        load(ours)


def test_missing_folder(tmp_path):
    with pytest.raises(WeightsError, match="no-such"):
        load(tmp_path / "no-such")


@pytest.mark.parametrize("damage", ["random", "truncated", "empty", "header-only"])
def test_corrupt_safetensors(hf_copy, damage):
    path = hf_copy / "model.safetensors"
    data = path.read_bytes()
    if damage == "random":
        path.write_bytes(os.urandom(4096))
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(data[:8])
    with pytest.raises(WeightsError) as info:
        load(hf_copy)
    assert str(path) in str(info.value)


def test_invalid_config_json(hf_copy):
    (hf_copy / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match="config.json"):
        load(hf_copy)
    (hf_copy / "config.json").write_text("[1, 2]")
    with pytest.raises(WeightsError, match="config.json"):
        load(hf_copy)


def test_wrong_shapes(hf_copy):
    path = hf_copy / "model.safetensors"
    tensors = load_file(str(path))
    key = next(k for k in tensors if k.endswith("h.1.mlp.c_fc.weight"))
    tensors[key] = torch.zeros(32, 100)          # (in, out) should be (32, 128)
    save_file(tensors, str(path), metadata={"format": "pt"})
    with pytest.raises(WeightsError) as info:
        load(hf_copy)
    message = str(info.value)
    assert str(path) in message and "shape" in message and "blocks.1.mlp.c_fc.weight" in message


def test_wrong_shapes_in_our_format(tmp_path):
    folder = save(perturbed_tiny(), tmp_path / "ours")
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    tensors["wpe.weight"] = tensors["wpe.weight"][:100].contiguous()
    save_file(tensors, str(path), metadata={"format": "gpt2core"})
    with pytest.raises(WeightsError) as info:
        load(folder)
    assert str(path) in str(info.value) and "wpe.weight" in str(info.value)


@pytest.mark.parametrize("key,value", [("n_layer", 5), ("n_layer", 2), ("n_embd", 64), ("vocab_size", 50000)])
def test_config_does_not_match_the_tensors(hf_copy, key, value):
    cfg_path = hf_copy / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg[key] = value
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(WeightsError) as info:
        load(hf_copy)
    assert str(hf_copy / "model.safetensors") in str(info.value)


def test_our_config_does_not_match_the_tensors(tmp_path):
    folder = save(perturbed_tiny(), tmp_path / "ours")
    doc = json.loads((folder / "config.json").read_text())
    doc["config"]["n_layer"] = 4
    (folder / "config.json").write_text(json.dumps(doc))
    with pytest.raises(WeightsError) as info:
        load(folder)
    assert str(folder / "model.safetensors") in str(info.value) and "blocks.2" in str(info.value)
    doc["config"]["n_layer"] = "two"
    (folder / "config.json").write_text(json.dumps(doc))
    with pytest.raises(WeightsError, match="config.json"):
        load(folder)
    doc["config"] = {**doc["config"], "n_layer": 2, "bogus": 1}
    (folder / "config.json").write_text(json.dumps(doc))
    with pytest.raises(WeightsError, match="config.json"):
        load(folder)


@pytest.mark.parametrize("change", [{"activation_function": "relu"}, {"activation_function": "gelu_10"},
                                    {"n_inner": 100}, {"scale_attn_by_inverse_layer_idx": True},
                                    {"model_type": "gpt_neo"}])
def test_unsupported_hf_variant(hf_copy, change):
    cfg_path = hf_copy / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(change)
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(WeightsError) as info:
        load(hf_copy)
    assert str(cfg_path) in str(info.value)
    assert next(iter(change)) in str(info.value) or "gpt_neo" in str(info.value)


def test_non_finite_weights_refused(hf_copy):
    path = hf_copy / "model.safetensors"
    tensors = load_file(str(path))
    key = next(k for k in tensors if k.endswith("ln_f.weight"))
    tensors[key][0] = float("nan")
    save_file(tensors, str(path), metadata={"format": "pt"})
    with pytest.raises(WeightsError, match="non-finite"):
        load(hf_copy)


# ---- pickle is never unpickled ---------------------------------------------------------------

class Payload:
    """Unpickling this creates the marker file (as any code could run instead)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_payload_is_live(tmp_path):
    """Check the trap works, so the tests below prove something."""
    marker = tmp_path / "proof"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


@pytest.mark.parametrize("filename", ["model.pt", "pytorch_model.bin", "ckpt.pth", "weights.pkl", "last.ckpt"])
def test_pickle_checkpoint_refused_without_unpickling(tmp_path, filename):
    marker = tmp_path / "PWNED"
    path = tmp_path / filename
    torch.save({"state_dict": Payload(marker)}, path)
    assert not marker.exists()
    # .pkl is refused unread; the torch formats are read by torch.load(weights_only=True), which refuses
    # the object's class instead of importing it.
    with pytest.raises(WeightsError, match="refused") as info:
        load(path)
    assert path.name in str(info.value)
    with pytest.raises(WeightsError):
        load_hf(path)
    assert not marker.exists()


def test_pickle_disguised_as_safetensors_refused_without_unpickling(hf_copy, tmp_path):
    marker = tmp_path / "PWNED"
    path = hf_copy / "model.safetensors"
    torch.save({"state_dict": Payload(marker)}, path)
    with pytest.raises(WeightsError) as info:
        load(hf_copy)
    assert str(path) in str(info.value)
    with pytest.raises(WeightsError):
        load(path)
    assert not marker.exists()


def test_hf_folder_with_only_a_pickle_is_refused(hf_copy, tmp_path):
    marker = tmp_path / "PWNED"
    (hf_copy / "model.safetensors").unlink()
    torch.save({"state_dict": Payload(marker)}, hf_copy / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="model.safetensors"):
        load(hf_copy)
    assert not marker.exists()


# ---- the Hub, offline ------------------------------------------------------------------------

def test_download_offline_fails_fast_with_a_plain_message(monkeypatch, tmp_path):
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))  # nothing cached
    calls = []
    start = time.monotonic()
    with pytest.raises(WeightsError) as info:
        download_hf("openai-community/gpt2", progress=lambda f, m: calls.append((f, m)))
    elapsed = time.monotonic() - start
    assert elapsed < 10
    message = str(info.value)
    assert message.startswith("could not download openai-community/gpt2/config.json")
    assert "HF_HUB_OFFLINE=1" in message
    assert "Traceback" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert calls == [(0.0, "downloading openai-community/gpt2/config.json")]
    start = time.monotonic()
    with pytest.raises(WeightsError, match="could not download"):
        load_from_hub("openai-community/gpt2")
    assert time.monotonic() - start < 10
