"""Issue 15, without a browser: GPT-2 from the local Hugging Face cache with the network blocked,
``python app.py --download gpt2``, the cold start's background download, and ``--device``.

"GPT-2" here is the tiny random HF GPT-2 of the ``hf_tiny_dir`` fixture, put where the Hub client
caches openai-community/gpt2 (models--openai-community--gpt2/{blobs,snapshots/<rev>,refs/main}) under a
temporary HF_HUB_CACHE. Nothing is downloaded: the "downloads" are fakes that copy that folder.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.reliability_util import free_port, sitecustomize_source, wait_for_http

ROOT = Path(__file__).resolve().parents[1]
REPO = "openai-community/gpt2"
REVISION = "607a30d783dfa663caf39e06633721c8d4cfcd7e"   # any 40-hex name: the cache keys snapshots by it
FILES = ("config.json", "model.safetensors")


def place_in_hf_cache(src: Path, cache: Path, names=FILES) -> Path:
    """Lay ``src``'s files out as huggingface_hub's cache does: content-addressed blobs, a snapshot
    folder of symlinks to them, and refs/main naming the snapshot. Returns the snapshot folder."""
    repo_dir = cache / f"models--{REPO.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / REVISION
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name in names:
        data = (src / name).read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(REVISION)
    return snapshot


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty HF cache of this test's own, with HF_HUB_OFFLINE unset: only the code keeps it offline."""
    hub = pytest.importorskip("huggingface_hub")
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(cache))   # read once at import by the client
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    return cache


def offline_client(url: str, monkeypatch):
    """gradio_client for the app under test. Its own Hub client fetches a registry of agents unless the Hub
    is offline, so for it (not for the app) the Hub is switched off again."""
    import huggingface_hub

    from tests.reliability_util import make_client

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return make_client(url)


def logits_of(model, ids=(464, 3797, 3332, 319)) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([list(ids)]))


# ---- 1. GPT-2 from the cache, offline ------------------------------------------------------------

def test_gpt2_in_the_cache_loads_with_the_network_blocked(hf_cache, network_guard, hf_tiny_dir):
    from explorer.session import HUB_NAME, build_registry
    from gpt2core import load_hf
    from gpt2core.reference import weights

    assert weights.cached_hf(REPO) is None
    empty = build_registry("gpt2")                 # not cached, offline: the old clean error stays
    assert empty.default != HUB_NAME and "Could not load GPT-2" in empty.startup_notice
    assert network_guard, "with nothing cached the Hub must be tried (else the guard checked nothing)"
    network_guard.clear()

    snapshot = place_in_hf_cache(hf_tiny_dir, hf_cache)
    assert weights.cached_hf(REPO) == snapshot
    start = time.perf_counter()
    registry = build_registry("gpt2")
    elapsed = time.perf_counter() - start
    print(f"\n[cache] build_registry('gpt2') from the HF cache, network blocked: {elapsed * 1000:.0f} ms")
    assert network_guard == [], f"a cached GPT-2 tried the network: {network_guard}"
    assert registry.default == HUB_NAME and registry.startup_notice == ""
    entry = registry.get(HUB_NAME)
    assert "local Hugging Face cache" in entry.source and "no network" in entry.source
    assert torch.equal(logits_of(entry.model), logits_of(load_hf(hf_tiny_dir)))
    assert elapsed < 10, "a cached model must not wait on the Hub client's retries"


def test_the_model_menu_says_whether_gpt2_is_cached(hf_cache, network_guard, hf_tiny_dir):
    from explorer.session import HUB_NAME, build_registry

    registry = build_registry()
    labels = dict((value, label) for label, value in registry.choices())
    assert labels[HUB_NAME].endswith("not on this machine: downloads from the Hub")
    place_in_hf_cache(hf_tiny_dir, hf_cache)
    labels = dict((value, label) for label, value in registry.choices())
    assert labels[HUB_NAME].endswith("cached on this machine")
    registry.get(HUB_NAME)
    labels = dict((value, label) for label, value in registry.choices())
    assert labels[HUB_NAME].endswith("loaded")
    assert network_guard == []


def test_download_hf_answers_from_the_cache_first(hf_cache, network_guard, hf_tiny_dir):
    from gpt2core.reference.weights import download_hf

    snapshot = place_in_hf_cache(hf_tiny_dir, hf_cache)
    calls = []
    assert download_hf(REPO, progress=lambda f, m: calls.append((f, m))) == snapshot
    assert calls == [(1.0, f"{REPO} found in the local Hugging Face cache ({snapshot})")]
    assert network_guard == []


class FakeHub:
    """Stands in for huggingface_hub.hf_hub_download: copies the tiny model into the cache, driving the
    caller's tqdm class in ``chunks`` steps; with ``gate`` set it stops half way until the gate opens."""

    def __init__(self, src: Path, cache: Path, chunks: int = 4, gate: threading.Event | None = None):
        self.src, self.cache, self.chunks, self.gate = src, cache, chunks, gate
        self.halfway = threading.Event()
        self.calls: list[str] = []

    def __call__(self, repo_id, filename, tqdm_class=None, **kwargs):
        assert repo_id == REPO
        self.calls.append(filename)
        size = (self.src / filename).stat().st_size
        bar = tqdm_class(total=size, unit="B", disable=True) if tqdm_class else None
        for i in range(self.chunks):
            if bar is not None:
                bar.update(size // self.chunks + (size % self.chunks if i == self.chunks - 1 else 0))
            if filename == "model.safetensors" and i == self.chunks // 2 - 1 and self.gate is not None:
                self.halfway.set()
                assert self.gate.wait(60), "the test never opened the gate"
        return str(place_in_hf_cache(self.src, self.cache, [filename]) / filename)


@pytest.fixture
def fake_hub(monkeypatch, hf_cache, hf_tiny_dir):
    import huggingface_hub

    from gpt2core.reference import weights

    fake = FakeHub(hf_tiny_dir, hf_cache)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    monkeypatch.setattr(weights, "_check_hub_reachable", lambda: None)   # the fake needs no network
    return fake


def test_download_reports_bytes_then_loads_from_the_cache(fake_hub, network_guard, capsys):
    import app

    calls = []
    from gpt2core.reference.weights import download_hf
    folder = download_hf(REPO, progress=lambda f, m: calls.append((round(f, 4), m)))
    assert fake_hub.calls == list(FILES) and (folder / "model.safetensors").is_file()
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    size = (fake_hub.src / "model.safetensors").stat().st_size
    messages = [m for _, m in calls]
    assert f"downloading {REPO}/model.safetensors: {size // 4 * 2 / 1e6:,.1f} of {size / 1e6:,.1f} MB" in messages, messages
    # Once it is there, --download says so and touches nothing.
    assert app.download("gpt2") == 0
    assert "already in the local Hugging Face cache" in capsys.readouterr().out
    assert fake_hub.calls == list(FILES)
    assert network_guard == []


def test_cli_download_fetches_into_the_cache(fake_hub, network_guard, capsys):
    import app

    from gpt2core.reference import weights

    assert app.download("gpt2") == 0
    out = capsys.readouterr().out
    assert fake_hub.calls == list(FILES) and weights.cached_hf(REPO) is not None
    assert f"{REPO}: " in out and "now loads it with no network" in out
    assert app.download("gpt-3") == 2
    assert "only 'gpt2'" in capsys.readouterr().err


def _plain_env(tmp_path: Path, cache: Path) -> tuple[dict, Path]:
    """A subprocess environment with no HF_HUB_OFFLINE, this test's cache, and the socket guard."""
    attempts = tmp_path / "attempts.txt"
    site_dir = tmp_path / "site"
    site_dir.mkdir(exist_ok=True)
    (site_dir / "sitecustomize.py").write_text(sitecustomize_source(attempts), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "SPACE_ID")}
    env.update(PYTHONPATH=str(site_dir), PYTHONUNBUFFERED="1", HF_HUB_CACHE=str(cache))
    return env, attempts


def test_cli_download_offline_is_a_plain_error(tmp_path, hf_cache):
    env, attempts = _plain_env(tmp_path, hf_cache)
    start = time.monotonic()
    out = subprocess.run([sys.executable, "app.py", "--download", "gpt2"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr.startswith("--download gpt2: the Hugging Face Hub") and "can't be reached" in out.stderr
    assert "Traceback" not in out.stderr and elapsed < 60
    assert "huggingface.co" in attempts.read_text()   # it did try, and the guard refused


def test_python_app_py_weights_gpt2_serves_the_cached_model_offline(tmp_path, hf_cache, hf_tiny_dir, monkeypatch):
    """The lecture hall: ``python app.py --weights gpt2`` with the network blocked and GPT-2 in the cache."""
    place_in_hf_cache(hf_tiny_dir, hf_cache)
    env, attempts = _plain_env(tmp_path, hf_cache)
    port = free_port()
    log = tmp_path / "app.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "app.py", "--weights", "gpt2", "--device", "auto",
                                 "--host", "127.0.0.1", "--port", str(port)],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        assert wait_for_http(f"http://127.0.0.1:{port}/", 90, proc) is not None, log.read_text()[-3000:]
        text = log.read_text()
        assert "found in the local Hugging Face cache" in text and "serving model: gpt2 (OpenAI" in text
        assert "on cpu" in text
        status, _ = offline_client(f"http://127.0.0.1:{port}/", monkeypatch).predict(
            "gpt2 (OpenAI, from the Hub)", api_name="/select_model")
        assert "local Hugging Face cache" in status and "on cpu" in status
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    blocked = attempts.read_text() if attempts.exists() else ""
    assert blocked == "", f"the app tried the network with GPT-2 cached:\n{blocked}"


# ---- 4. the cold start -----------------------------------------------------------------------------

def test_cold_start_serves_at_once_and_switches_when_gpt2_is_ready(fake_hub, network_guard, monkeypatch):
    from explorer.app import CSS, build_app, download_notice
    from explorer.inputs import InputError
    from explorer.session import HUB_NAME, build_registry

    fake_hub.gate = threading.Event()
    registry = build_registry("gpt2", background_download=True)
    bundled = registry.default
    assert bundled != HUB_NAME and registry.hub_download is not None
    assert fake_hub.halfway.wait(30)
    download = registry.hub_download
    assert download.state == "downloading" and 0.02 < download.fraction < 1
    with pytest.raises(InputError, match=r"GPT-2 is still downloading \(\d+%"):
        registry.get(HUB_NAME)
    demo = build_app(registry)
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, css=CSS, quiet=True)
    try:
        client = offline_client(demo.local_url, monkeypatch)   # the page answers while the download waits
        status, _ = client.predict(bundled, api_name="/select_model")
        assert bundled in status
        assert download_notice(download).startswith(f"⏳ **GPT-2 is downloading: {download.fraction:.0%}**")
        fake_hub.gate.set()
        deadline = time.monotonic() + 30
        while download.state == "downloading" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert download.state == "ready", download.error
        assert registry.default == HUB_NAME
        status, _ = client.predict(HUB_NAME, api_name="/select_model")
        assert "downloaded into the local cache at start-up" in status
    finally:
        demo.close()
    assert network_guard == []


def test_cold_start_failure_keeps_the_bundled_model(monkeypatch, hf_cache, network_guard):
    from explorer.app import download_notice
    from explorer.session import HUB_NAME, build_registry

    said = []
    registry = build_registry("gpt2", progress=lambda f, m: said.append(m), background_download=True)
    registry.hub_thread.join(60)
    assert registry.hub_download.state == "failed" and registry.default != HUB_NAME
    assert said == [f"GPT-2 could not be downloaded: {registry.hub_download.error}; serving {registry.default}"]
    assert download_notice(registry.hub_download).startswith("⚠️ **GPT-2 could not be downloaded:** the Hugging Face Hub")


# ---- 5. the device ---------------------------------------------------------------------------------

def test_device_auto_falls_back_to_the_cpu(monkeypatch):
    from explorer.session import build_registry, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    device = resolve_device("auto")
    assert device == torch.device("cpu")
    registry = build_registry(device=device)
    assert next(registry.get(None).model.parameters()).device == device


def test_a_cuda_device_serves_on_cuda_and_the_status_line_names_it(monkeypatch):
    """The views run on the model's device (tests/test_device.py), so CUDA serves on CUDA: no CPU fallback."""
    from types import SimpleNamespace

    from explorer import session
    from explorer.app import model_status

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)       # a GPU machine, as far as --device knows
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    for asked in ("auto", "cuda"):
        assert session.resolve_device(asked) == torch.device("cuda")
    assert not hasattr(session, "serving_device")
    on_cuda = SimpleNamespace(parameters=lambda: iter([SimpleNamespace(device=torch.device("cuda"))]),
                              num_params=lambda: 124_439_808)
    text, _ = model_status(SimpleNamespace(name="gpt2", model=on_cuda, source="the cache", trained=True))
    assert "on cuda (NVIDIA H200)" in text
    assert session.resolve_device("cpu") == torch.device("cpu")


def test_device_cuda_without_one_stops_the_app_with_a_plain_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = subprocess.run([sys.executable, "app.py", "--device", "cuda", "--port", str(free_port())], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--device cuda: no CUDA device is available here" in out.stderr
    env = {**os.environ, "GPT2_EXPLORER_DEVICE": "cuda"}         # the Space's variable, same answer
    out = subprocess.run([sys.executable, "app.py", "--port", str(free_port())], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "no CUDA device is available here" in out.stderr


# ---- 2. what a link sets (the browser tests open real links) ----------------------------------------

def test_a_links_values_are_checked_as_the_controls_check_them(registry):
    from types import SimpleNamespace

    import gradio as gr

    from explorer.components import Slider
    from explorer.lecture import UrlState, restore_updates

    with gr.Blocks():
        prompt = gr.Textbox("default prompt")
        layer = Slider(0, 5, value=0, step=1, label="Layer")
        temperature = Slider(0, 2, value=1.0, step=0.05, label="Temperature (0 = greedy)")
        scores = gr.Checkbox(False, label="Show raw scores")
        colour = gr.Radio(["rank", "surprisal"], value="rank", label="Colour each token by")
    url = UrlState()
    url.add("attention", {"layer": layer, "scores": scores}, limits=lambda entry, text: {"layer": (0, 3)})
    url.add("sampling", {"temperature": temperature})
    url.add("score", {"colour": colour})
    ctx = SimpleNamespace(prompt=prompt, url=url, model=registry.get)
    tabs = ["attention", "sampling", "score"]

    updates, messages = restore_updates({"tab": "attention", "prompt": "Hi there", "layer": "3", "scores": "1",
                                         "temperature": "0.5"}, ctx, tabs)
    prompt_u, model_u, tabs_u, present_u, layer_u, scores_u, temp_u, colour_u = updates
    assert messages == [] and prompt_u["value"] == "Hi there" and tabs_u.selected == "attention"
    assert layer_u["value"] == 3 and layer_u["maximum"] == 3 and scores_u["value"] is True
    assert "value" not in temp_u                       # another tab's key: not this link's view

    updates, messages = restore_updates({"tab": "attention", "layer": "4", "scores": "yes", "model": "nope"},
                                        ctx, tabs)
    assert messages[0].startswith("From the link: Unknown model 'nope'. Choose one of:")
    assert "From the link: Layer must be between 0 and 3, got 4." in messages      # the tab's own range
    assert "From the link: Show raw scores must be 1 or 0 (on or off), got 'yes'." in messages
    assert all("value" not in u for u in updates[4:])

    updates, messages = restore_updates({"tab": "sampling", "temperature": "2.5", "present": "1"}, ctx, tabs)
    assert messages == ["From the link: Temperature (0 = greedy) must be between 0 and 2, got 2.5."]
    assert updates[3]["value"] is True
    updates, messages = restore_updates({"tab": "score", "colour": "loudness"}, ctx, tabs)
    assert messages == ["From the link: Colour each token by must be one of rank, surprisal, got 'loudness'."]
    updates, messages = restore_updates({"tab": "nowhere", "prompt": "still applies"}, ctx, tabs)
    assert messages == ["From the link: there is no tab 'nowhere'; the tabs are attention, sampling, score."]
    assert updates[0]["value"] == "still applies"
