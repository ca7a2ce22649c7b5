"""Reliability (issue 6): broken, hostile and mismatched checkpoint files.

Every bad checkpoint goes through ``gpt2core.load`` (a WeightsError that names the file) and through
``explorer.session.build_registry(weights_arg=...)`` (the error lands in ``startup_notice`` and the
registry keeps serving its default model, which still runs). Pickles posing as checkpoints must never
be unpickled: their ``__reduce__`` would create a marker file, and the marker must never appear.
"""
from __future__ import annotations

import json
import pickle
import re
import shutil
import struct
from pathlib import Path

import pytest
import torch

from explorer.inputs import prepare_prompt
from explorer.session import build_registry
from gpt2core import GPT2, WeightsError, get_config, load, save
from gpt2core.reference.weights import CONFIG_FILE, WEIGHTS_FILE


class MakesMarker:
    """Unpickling this runs ``open(path, "w")``: the marker file appears if anyone unpickles it."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory) -> Path:
    """A valid gpt2core checkpoint of the tiny preset: the base every broken variant is cut from."""
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = GPT2(get_config("tiny"))
    return save(model, tmp_path_factory.mktemp("good") / "ckpt")


@pytest.fixture(scope="module")
def hf_dir(hf_tiny_dir) -> Path:
    return Path(hf_tiny_dir)


@pytest.fixture(scope="module")
def default_name() -> str:
    """What build_registry() serves when no --weights is given."""
    return build_registry().default


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "UNPICKLED_MARKER"
    yield path
    assert not path.exists(), f"a pickle was unpickled: {path} was created"


@pytest.fixture
def no_unpickling(monkeypatch):
    """Record any call that would unpickle (pickle.load/loads, or torch.load without weights_only=True) while a
    checkpoint loads."""
    calls = []

    def spy(name, real):
        def wrapper(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} was called while loading a checkpoint")
        return wrapper

    def weights_only(real):
        # torch.load is allowed only as weights_only=True: tensors and plain containers, no classes.
        def wrapper(*args, **kwargs):
            if kwargs.get("weights_only") is not True:
                calls.append("torch.load without weights_only=True")
                raise AssertionError("torch.load was called without weights_only=True")
            return real(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(pickle, "load", spy("pickle.load", pickle.load))
    monkeypatch.setattr(pickle, "loads", spy("pickle.loads", pickle.loads))
    monkeypatch.setattr(torch, "load", weights_only(torch.load))
    yield calls
    monkeypatch.undo()
    assert calls == [], f"unpickling was attempted: {calls}"


def copy_of(src: Path, tmp_path: Path, name: str = "ckpt") -> Path:
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def edit_config(folder: Path, **changes) -> None:
    doc = json.loads((folder / CONFIG_FILE).read_text())
    target = doc["config"] if "config" in doc else doc
    target.update(changes)
    (folder / CONFIG_FILE).write_text(json.dumps(doc))


# ---- the broken checkpoints: each builder returns (path to pass, offending file, reason regex) ----

def truncated(good, hf, tmp, marker):
    d = copy_of(good, tmp)
    data = (d / WEIGHTS_FILE).read_bytes()
    (d / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    return d, d / WEIGHTS_FILE, "corrupt or not a safetensors file"


def truncated_header(good, hf, tmp, marker):
    d = copy_of(good, tmp)
    (d / WEIGHTS_FILE).write_bytes((d / WEIGHTS_FILE).read_bytes()[:5])
    return d, d / WEIGHTS_FILE, "corrupt or not a safetensors file"


def empty_weights(good, hf, tmp, marker):
    d = copy_of(good, tmp)
    (d / WEIGHTS_FILE).write_bytes(b"")
    return d, d / WEIGHTS_FILE, "corrupt or not a safetensors file"


def corrupt_header(good, hf, tmp, marker):
    d = copy_of(good, tmp)
    data = bytearray((d / WEIGHTS_FILE).read_bytes())
    data[8:40] = b"\xff" * 32              # the JSON header that names and places every tensor
    (d / WEIGHTS_FILE).write_bytes(bytes(data))
    return d, d / WEIGHTS_FILE, "corrupt or not a safetensors file"


def absurd_header_length(good, hf, tmp, marker):
    d = copy_of(good, tmp)
    data = (d / WEIGHTS_FILE).read_bytes()
    (d / WEIGHTS_FILE).write_bytes(struct.pack("<Q", 2**62) + data[8:])
    return d, d / WEIGHTS_FILE, "corrupt or not a safetensors file"


def random_bytes(good, hf, tmp, marker):
    d = copy_of(good, tmp)
    (d / WEIGHTS_FILE).write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                                 dtype=torch.uint8).numpy().tobytes())
    return d, d / WEIGHTS_FILE, "corrupt or not a safetensors file"


def nan_weights(good, hf, tmp, marker):
    from safetensors.torch import load_file, save_file
    d = copy_of(good, tmp)
    state = load_file(str(d / WEIGHTS_FILE))
    state["blocks.0.attn.c_attn.weight"][0, 0] = float("nan")
    save_file(state, str(d / WEIGHTS_FILE), metadata={"format": "gpt2core"})
    return d, d / WEIGHTS_FILE, "non-finite or non-float values"


def wrong_shape(good, hf, tmp, marker):
    d = copy_of(good, tmp)
    edit_config(d, n_embd=128)              # the tensors are 64 wide
    return d, d / WEIGHTS_FILE, "wrong shapes for the config"


def missing_tensor(good, hf, tmp, marker):
    from safetensors.torch import load_file, save_file
    d = copy_of(good, tmp)
    state = load_file(str(d / WEIGHTS_FILE))
    del state["blocks.1.mlp.c_fc.weight"]
    save_file(state, str(d / WEIGHTS_FILE))
    return d, d / WEIGHTS_FILE, r"tensor names do not match the config: missing \['blocks.1.mlp.c_fc.weight'\]"


def more_layers_than_tensors(good, hf, tmp, marker):
    d = copy_of(good, tmp)
    edit_config(d, n_layer=3)
    return d, d / WEIGHTS_FILE, "tensor names do not match the config: missing"


def config_not_json(good, hf, tmp, marker):
    d = copy_of(good, tmp)
    (d / CONFIG_FILE).write_text('{"format": "gpt2core", "config": {')
    return d, d / CONFIG_FILE, "not valid JSON"


def config_not_utf8(good, hf, tmp, marker):
    d = copy_of(good, tmp)
    (d / CONFIG_FILE).write_bytes(b"\xff\xfe\x00garbage")
    return d, d / CONFIG_FILE, "not valid JSON"


def config_is_a_list(good, hf, tmp, marker):
    d = copy_of(good, tmp)
    (d / CONFIG_FILE).write_text("[1, 2, 3]")
    return d, d / CONFIG_FILE, "expected a JSON object"


def config_unknown_key(good, hf, tmp, marker):
    d = copy_of(good, tmp)
    edit_config(d, n_experts=8)
    return d, d / CONFIG_FILE, "invalid config .*unknown config keys"


def config_heads_do_not_divide(good, hf, tmp, marker):
    d = copy_of(good, tmp)
    edit_config(d, n_head=5)
    return d, d / CONFIG_FILE, r"invalid config .*divisible"


def config_wrong_types(good, hf, tmp, marker):
    d = copy_of(good, tmp)
    edit_config(d, n_layer="2", layer_norm_eps=-1)
    return d, d / CONFIG_FILE, "invalid config"


def config_without_config(good, hf, tmp, marker):
    d = copy_of(good, tmp)
    (d / CONFIG_FILE).write_text(json.dumps({"format": "gpt2core"}))
    return d, d / CONFIG_FILE, "invalid config"


def config_absurdly_large(good, hf, tmp, marker):
    # 10**12 x 64 floats can never be allocated (more than the address space): torch refuses at once.
    d = copy_of(good, tmp)
    edit_config(d, vocab_size=10**12)
    return d, d, r"vocab|too large|does not match|wrong shapes"      # naming the folder or either file


def missing_config(good, hf, tmp, marker):
    d = copy_of(good, tmp)
    (d / CONFIG_FILE).unlink()
    return d, d / CONFIG_FILE, "file not found"


def missing_weights(good, hf, tmp, marker):
    d = copy_of(good, tmp)
    (d / WEIGHTS_FILE).unlink()
    return d, d / WEIGHTS_FILE, "file not found"


def missing_folder(good, hf, tmp, marker):
    d = tmp / "does-not-exist"
    return d, d, "no such checkpoint folder"


def hf_unsupported_variant(good, hf, tmp, marker):
    d = copy_of(hf, tmp)
    edit_config(d, activation_function="relu", n_inner=7)
    return d, d / CONFIG_FILE, r"unsupported GPT-2 variant: n_inner=7 .*activation_function='relu'"


def hf_not_gpt2(good, hf, tmp, marker):
    d = copy_of(hf, tmp)
    edit_config(d, model_type="llama")
    return d, d / CONFIG_FILE, "model_type 'llama' is not gpt2"


def hf_wrong_shape(good, hf, tmp, marker):
    d = copy_of(hf, tmp)
    edit_config(d, n_embd=64)             # the tensors are 32 wide
    return d, d / WEIGHTS_FILE, "wrong shapes for the config"


def hf_truncated(good, hf, tmp, marker):
    d = copy_of(hf, tmp)
    data = (d / WEIGHTS_FILE).read_bytes()
    (d / WEIGHTS_FILE).write_bytes(data[: len(data) - 1000])
    return d, d / WEIGHTS_FILE, "corrupt or not a safetensors file"


# Pickles posing as checkpoints: each would create ``marker`` if anything unpickled it.

def pickle_as_pt_file(good, hf, tmp, marker):
    f = tmp / "model.pt"
    f.write_bytes(pickle.dumps(MakesMarker(marker)))
    return f, f, "refused|not a PyTorch checkpoint"


def pickle_as_bin_file(good, hf, tmp, marker):
    f = tmp / "pytorch_model.bin"
    torch.save({"wte.weight": MakesMarker(marker)}, f)      # what transformers used to write
    return f, f, "refused|not a PyTorch checkpoint"


def pickle_as_ckpt_file(good, hf, tmp, marker):
    f = tmp / "weights.ckpt"
    f.write_bytes(pickle.dumps(MakesMarker(marker)))
    return f, f, "refused|not a PyTorch checkpoint"


def pickle_in_hf_folder(good, hf, tmp, marker):
    # An old-style HF folder: config.json + pytorch_model.bin, no safetensors. No fallback to torch.load.
    d = tmp / "old_hf"
    d.mkdir()
    shutil.copy(hf / CONFIG_FILE, d / CONFIG_FILE)
    torch.save({"transformer.wte.weight": MakesMarker(marker)}, d / "pytorch_model.bin")
    return d, d / WEIGHTS_FILE, "file not found"


def pickle_named_safetensors(good, hf, tmp, marker):
    d = copy_of(good, tmp)
    (d / WEIGHTS_FILE).write_bytes(pickle.dumps(MakesMarker(marker), protocol=2))
    return d, d / WEIGHTS_FILE, "corrupt or not a safetensors file"


def torch_zip_named_safetensors(good, hf, tmp, marker):
    d = copy_of(good, tmp)
    torch.save(MakesMarker(marker), d / WEIGHTS_FILE)
    return d, d / WEIGHTS_FILE, "corrupt or not a safetensors file"


def pickle_named_safetensors_passed_as_file(good, hf, tmp, marker):
    d = copy_of(good, tmp)
    (d / WEIGHTS_FILE).write_bytes(pickle.dumps(MakesMarker(marker)))
    return d / WEIGHTS_FILE, d / WEIGHTS_FILE, "corrupt or not a safetensors file"


def pickle_beside_a_good_checkpoint(good, hf, tmp, marker):
    # A file that is neither config.json nor model.safetensors, in a folder holding a valid checkpoint.
    d = copy_of(good, tmp)
    f = d / "finetuned.safetensors"
    f.write_bytes(pickle.dumps(MakesMarker(marker)))
    return f, f, "finetuned.safetensors"


BUGS: dict[str, str] = {}   # bugs found by these cases and not yet fixed (each an xfail)

CASES = [truncated, truncated_header, empty_weights, corrupt_header, absurd_header_length, random_bytes,
         nan_weights, wrong_shape, missing_tensor, more_layers_than_tensors, config_not_json,
         config_not_utf8, config_is_a_list, config_unknown_key, config_heads_do_not_divide,
         config_wrong_types, config_without_config, config_absurdly_large, missing_config, missing_weights,
         missing_folder, hf_unsupported_variant, hf_not_gpt2, hf_wrong_shape, hf_truncated,
         pickle_as_pt_file, pickle_as_bin_file, pickle_as_ckpt_file, pickle_in_hf_folder,
         pickle_named_safetensors, torch_zip_named_safetensors, pickle_named_safetensors_passed_as_file,
         pickle_beside_a_good_checkpoint]


def case_params(bugs=BUGS):
    for build in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=bugs[build.__name__])] if build.__name__ in bugs else []
        yield pytest.param(build, id=build.__name__, marks=marks)


def check_message(message: str, offending: Path, reason: str) -> None:
    assert str(offending) in message, f"the message does not name {offending}: {message}"
    assert re.search(reason, message), f"{reason!r} not in: {message}"
    assert "Traceback" not in message and len(message) < 1000


def forward_works(registry) -> None:
    entry = registry.get(registry.default)
    ids = prepare_prompt("The default model still works.").ids
    with torch.no_grad():
        logits = entry.model(torch.tensor([ids]))
    assert logits.shape == (1, len(ids), entry.model.config.vocab_size)
    assert torch.isfinite(logits).all()


# ---- tests ---------------------------------------------------------------------------------------

def test_the_pickle_payload_is_live(tmp_path):
    """The marker check can fail: unpickling the payload really does create the marker."""
    path = tmp_path / "marker"
    pickle.loads(pickle.dumps(MakesMarker(path)))
    assert path.exists()


def test_the_good_checkpoint_loads(good_dir):
    """The base the broken variants are cut from is itself fine (else every case would pass trivially)."""
    model = load(good_dir)
    assert model.config == get_config("tiny")
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]]))).all()
    registry = build_registry(weights_arg=str(good_dir))
    assert registry.startup_notice == "" and registry.default == good_dir.name


@pytest.mark.parametrize("build", case_params())
def test_gpt2core_load_names_the_file(build, good_dir, hf_dir, tmp_path, marker, no_unpickling):
    path, offending, reason = build(good_dir, hf_dir, tmp_path, marker)
    with pytest.raises(WeightsError) as info:
        load(path)
    check_message(str(info.value), offending, reason)


@pytest.mark.parametrize("build", case_params())
def test_build_registry_reports_and_keeps_serving(build, good_dir, hf_dir, tmp_path, marker, no_unpickling,
                                                   default_name):
    path, offending, reason = build(good_dir, hf_dir, tmp_path, marker)
    registry = build_registry(weights_arg=str(path))
    notice = registry.startup_notice
    assert notice.startswith(f"Could not load --weights {path}: "), notice
    check_message(notice, offending, reason)
    assert registry.default == default_name
    assert path.name not in registry.names() or path.name == default_name
    forward_works(registry)


def test_the_notice_is_shown_in_the_app(tmp_path, good_dir, hf_dir, marker):
    """The startup notice reaches the page header (elem_id startup-notice), and the app builds."""
    from explorer.app import build_app
    path, offending, _ = pickle_as_pt_file(good_dir, hf_dir, tmp_path, marker)
    registry = build_registry(weights_arg=str(path))
    demo = build_app(registry)
    notices = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "startup-notice"]
    assert len(notices) == 1
    assert str(offending) in notices[0].value and "refused" in notices[0].value


@pytest.mark.parametrize("which", [WEIGHTS_FILE, CONFIG_FILE])
def test_build_registry_accepts_the_files_load_accepts(good_dir, which):
    path = good_dir / which
    assert isinstance(load(path), GPT2)
    registry = build_registry(weights_arg=str(path))
    assert registry.startup_notice == ""
    assert registry.default == good_dir.name or registry.default == which
