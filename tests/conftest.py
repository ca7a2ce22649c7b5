import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP: see explorer/__init__.py
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# The C kernel wherever it can serve, not the choice timed at first use: timed while the suite loads both
# cores, that choice is a coin toss for small shapes, and a test comparing two calls bit for bit must not
# meet a different kernel in each. tests/test_backend.py sets "auto" where it tests the measured choice.
os.environ.setdefault("GPT2_KERNELS", "native")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Tests never touch the network: the Hub client fails fast instead of retrying for 23 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Test models are tiny: one intra-op thread beats two fighting the app server's threads.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def hf_tiny_dir(tmp_path_factory):
    """A tiny random HF GPT2LMHeadModel saved with save_pretrained, LayerNorms and biases perturbed."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=3, n_head=4,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "ln_" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.5)  # away from the (1, 0) defaults
    folder = tmp_path_factory.mktemp("hf_tiny")
    hf.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def registry():
    """The app's models: the bundled checkpoint when present, else the random tiny model."""
    from explorer.session import build_registry
    return build_registry()


@pytest.fixture(scope="session")
def app_url(registry):
    """The whole app served on a free loopback port for the test session."""
    from explorer.app import CSS, build_app
    demo = build_app(registry)
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, css=CSS, quiet=True)
    yield demo.local_url
    demo.close()


CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).parent / "artifacts"   # screenshots, to look at


@pytest.fixture(scope="module")
def browser():
    """Debian's headless chromium, driven by Playwright, one per test module. Skipped without
    /usr/bin/chromium, except under CI (the README's test command installs it)."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: the README's test command installs it")
        pytest.skip(f"{CHROMIUM} not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        # Playwright gives the browser a fresh temporary profile of its own.
        b = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser, app_url):
    """The app in one page of the module's browser, with the page's JavaScript errors in ``page.errors``."""
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(app_url, wait_until="load")
    pg.locator("#prompt").wait_for(timeout=30_000)
    pg.errors = errors
    yield pg
    pg.close()


@pytest.fixture
def network_guard(monkeypatch):
    """Refuse and record every connection that is not to loopback (connect, connect_ex, create_connection,
    getaddrinfo)."""
    import socket

    from tests.reliability_util import guard_namespace

    attempts: list[str] = []
    guard = guard_namespace()["make_guard"](attempts.append)
    monkeypatch.setattr(socket.socket, "connect", guard["connect"])
    monkeypatch.setattr(socket.socket, "connect_ex", guard["connect_ex"])
    monkeypatch.setattr(socket, "create_connection", guard["create_connection"])
    monkeypatch.setattr(socket, "getaddrinfo", guard["getaddrinfo"])
    return attempts


def no_error_toast(page):
    """Gradio shows a handler's error as a toast in the page."""
    assert page.locator(".toast-body.error").count() == 0, page.locator(".toast-body").all_inner_texts()


@pytest.fixture(scope="session")
def client(app_url):
    from gradio_client import Client
    return Client(app_url, verbose=False)


def plot_json(value) -> dict:
    """A gradio_client Plot result as a plotly figure dict, with {dtype, bdata, shape} arrays unpacked."""
    import base64
    import json

    import numpy as np

    if isinstance(value, dict) and "plot" in value:
        value = value["plot"]
    fig = json.loads(value) if isinstance(value, str) else value

    def unpack(obj):
        if isinstance(obj, dict):
            if "bdata" in obj and "dtype" in obj:
                arr = np.frombuffer(base64.b64decode(obj["bdata"]), dtype=np.dtype(obj["dtype"]))
                if "shape" in obj:
                    shape = obj["shape"]
                    arr = arr.reshape([int(s) for s in shape.split(",")] if isinstance(shape, str) else shape)
                return arr.tolist()
            return {k: unpack(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [unpack(v) for v in obj]
        return obj

    return unpack(fig)


def perturbed(cfg, seed: int = 0):
    """A GPT2 of this config with random weights, its LayerNorms and biases moved off (1, 0) and its
    embeddings scaled up, so that every parameter matters to a comparison."""
    from gpt2core import GPT2
    torch.manual_seed(seed)
    m = GPT2(cfg).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "ln_" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.5)
        m.wte.weight.mul_(5)
    return m
