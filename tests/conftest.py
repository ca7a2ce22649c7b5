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
def app(registry):
    """The whole app (gr.Blocks) served on a free loopback port for the test session."""
    from explorer.app import CSS, build_app
    demo = build_app(registry)
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, css=CSS, quiet=True)
    yield demo
    demo.close()


@pytest.fixture(scope="session")
def app_url(app):
    return app.local_url


CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).parent / "artifacts"   # screenshots, to look at


@pytest.fixture(scope="session")
def browser():
    """Debian's headless chromium, driven by Playwright, one for the test session (each test module opens
    pages or contexts of its own). Skipped without /usr/bin/chromium, except under CI (the README's test
    command installs it)."""
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
    wait_restored(pg)
    pg.errors = errors
    yield pg
    pg.close()


def wait_restored(pg, timeout: int = 30_000) -> None:
    """Wait until the page is up and has applied its link (explorer.lecture sets ``window.explorer.restored``):
    a click made before that can be undone by the link's own tab and values."""
    pg.locator("#prompt").wait_for(timeout=timeout)
    pg.wait_for_function("() => window.explorer && window.explorer.restored === true", timeout=timeout)


def tab_short(tab) -> str:
    return tab.__name__.rsplit(".", 1)[-1].removesuffix("_tab")


# True when the plot in element #id holds data (not an empty frame).
PLOT_HAS_DATA = """(id) => {
  const el = document.querySelector(`#${id} .js-plotly-plot`);
  if (!el || !el.data || !el.data.length) return false;
  const n = (v) => (v == null ? 0 : (v.length ?? (v.bdata ? 1 : 0)));
  return el.data.some(t => n(t.x) + n(t.y) + n(t.z) + n(t.values) + n(t.r) > 0);
}"""


def plots_shown_on_opening(demo) -> dict[str, list[str]]:
    """tab short name -> elem_ids of the plots it shows on opening (built visible), read from the app."""
    import gradio as gr
    found = {}
    for block in demo.blocks.values():
        if not isinstance(block, gr.Plot) or not block.visible:
            continue
        parent = block.parent
        while parent is not None and not isinstance(parent, gr.Tab):
            parent = parent.parent
        assert block.elem_id, f"a plot without an elem_id in tab {parent and parent.id}"
        if parent is not None:
            found.setdefault(parent.id, []).append(block.elem_id)
    return found


@pytest.fixture(scope="session")
def tab_walk(browser, app):
    """One fresh page opens every tab in turn, as a student would, and records for each tab:
    - ``first_open``: the plots the tab shows on opening that had no data after its first opening (one click on
      the tab and nothing else; the tab's own first draw), and the error toasts then (screenshot
      first-open-NAME.png);
    - ``run``: after its run button (where it has one), whether a figure drew, and the error toasts (screenshot
      tab-NAME.png);
    - ``modebar``: each drawn figure's download settings (PNG at 2x named for the figure, SVG, numbers);
    - ``errors``: the page's JavaScript errors while the tab was open.
    test_browser_tabs.py asserts on this record, one test per tab, so the tabs are opened and drawn once for
    its three kinds of test."""
    from explorer.tabs import load_tabs

    plots = plots_shown_on_opening(app)
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(app.local_url, wait_until="load")
    wait_restored(pg)
    walk = {}
    for tab in load_tabs():
        name, seen = tab_short(tab), len(errors)
        rec = walk[name] = {"plots": plots.get(name, []), "first_open": [], "first_open_toasts": [],
                            "run": None, "run_toasts": [], "modebar": [], "errors": []}
        pg.get_by_role("tab", name=tab.TITLE).click()
        pg.locator(f"#tab-{name}").wait_for(state="visible", timeout=10_000)
        for plot_id in rec["plots"]:
            try:
                pg.wait_for_function(PLOT_HAS_DATA, arg=plot_id, timeout=90_000)
            except Exception:  # noqa: BLE001 - recorded, asserted by the tab's own test
                rec["first_open"].append(plot_id)
        pg.wait_for_timeout(500)
        rec["first_open_toasts"] = pg.locator(".toast-body.error").all_inner_texts()
        pg.screenshot(path=str(ARTIFACTS / f"first-open-{name}.png"), full_page=True)
        run = pg.locator(f"#{name}-run")
        try:
            if run.count():
                run.first.click()
            pg.locator(f"#tab-{name} .js-plotly-plot").first.wait_for(state="visible", timeout=60_000)
            pg.wait_for_timeout(800)   # let the last redraws settle before the picture
            rec["run"] = "drawn"
        except Exception as e:  # noqa: BLE001
            rec["run"] = f"no figure drew: {e}"
        rec["run_toasts"] = pg.locator(".toast-body.error").all_inner_texts()
        pg.screenshot(path=str(ARTIFACTS / f"tab-{name}.png"), full_page=True)
        rec["modebar"] = pg.evaluate(f"""() => [...document.querySelectorAll('#tab-{name} .js-plotly-plot')].map(gd => ({{
            holder: gd.parentElement.closest('[id]').id, png: gd._context.toImageButtonOptions,
            buttons: [...gd.querySelectorAll('.modebar-btn')].map(b => b.getAttribute('data-title'))}}))""")
        rec["errors"] = errors[seen:]
    pg.close()
    return walk


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


# The two longest modules (about 110 s each here: the bad-input battery, the tab walk), then the other slow and
# browser modules, then the rest: pytest-xdist (--dist loadfile) hands out files in this order, so the long ones
# start first and the short ones fill in beside them, instead of one long file running alone at the end.
LONGEST_FIRST = ("test_reliability_inputs.py", "test_browser_tabs.py")


def pytest_collection_modifyitems(config, items):
    slow_modules = {item.path.name for item in items
                    if item.get_closest_marker("slow") or item.get_closest_marker("browser")}

    def rank(item):
        name = item.path.name
        return (LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
                if name in slow_modules else len(LONGEST_FIRST) + 1)

    items.sort(key=rank)   # stable: each module's own order is kept
