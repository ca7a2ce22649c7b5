"""Every tab draws when it is first opened: a fresh page, one click on the tab and nothing else, and then
every plot the tab shows holds data (no empty frames), and no error toast."""
import gradio as gr
import pytest

from explorer.tabs import load_tabs
from tests.conftest import ARTIFACTS, no_error_toast

pytestmark = pytest.mark.browser


def short(tab) -> str:
    return tab.__name__.rsplit(".", 1)[-1].removesuffix("_tab")


@pytest.fixture(scope="module")
def plots_by_tab(registry):
    """tab short name -> elem_ids of the plots it shows on opening (built visible), read from the app."""
    from explorer.app import build_app
    demo = build_app(registry)
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


HAS_DATA = """(id) => {
  const el = document.querySelector(`#${id} .js-plotly-plot`);
  if (!el || !el.data || !el.data.length) return false;
  const n = (v) => (v == null ? 0 : (v.length ?? (v.bdata ? 1 : 0)));
  return el.data.some(t => n(t.x) + n(t.y) + n(t.z) + n(t.values) + n(t.r) > 0);
}"""


@pytest.mark.parametrize("tab", load_tabs(), ids=short)
def test_first_open_draws_every_plot(browser, app_url, plots_by_tab, tab):
    name = short(tab)
    ids = plots_by_tab.get(name, [])
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(app_url, wait_until="load")
        page.locator("#prompt").wait_for(timeout=30_000)
        page.get_by_role("tab", name=tab.TITLE).click()
        page.locator(f"#tab-{name}").wait_for(state="visible", timeout=10_000)
        for plot_id in ids:
            try:
                page.wait_for_function(HAS_DATA, arg=plot_id, timeout=90_000)
            except Exception:
                page.screenshot(path=str(ARTIFACTS / f"first-open-{name}-failed.png"), full_page=True)
                raise AssertionError(f"tab {name}: plot #{plot_id} has no data after the tab's first opening")
        page.wait_for_timeout(500)
        no_error_toast(page)
        page.screenshot(path=str(ARTIFACTS / f"first-open-{name}.png"), full_page=True)
        assert not errors, errors
    finally:
        page.close()
