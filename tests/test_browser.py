"""A real browser (Debian's chromium, driven by Playwright) clicks through every tab.

For each tab: open it, press its run button, wait for its figures to draw, and save a
screenshot to tests/artifacts/ to look at. Needs /usr/bin/chromium (the README's test command
installs it); skipped without it, except under CI where a missing browser is a failure.
"""
import os
from pathlib import Path

import pytest

from explorer.tabs import load_tabs

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).parent / "artifacts"

pytestmark = pytest.mark.browser


def short(tab) -> str:
    return tab.__name__.rsplit(".", 1)[-1].removesuffix("_tab")


@pytest.fixture(scope="module")
def page(app_url):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: the README's test command installs it")
        pytest.skip(f"{CHROMIUM} not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        # Playwright gives the browser a fresh temporary profile of its own.
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(app_url, wait_until="load")
        pg.locator("#prompt").wait_for(timeout=30_000)
        pg.errors = errors
        yield pg
        browser.close()


@pytest.mark.parametrize("tab", load_tabs(), ids=short)
def test_tab_draws(page, tab):
    name = short(tab)
    page.get_by_role("tab", name=tab.TITLE).click()
    panel = page.locator(f"#tab-{name}")
    panel.wait_for(state="visible", timeout=10_000)
    run = page.locator(f"#{name}-run")
    if run.count():
        run.first.click()
    plots = panel.locator(".js-plotly-plot")
    plots.first.wait_for(state="visible", timeout=60_000)
    page.wait_for_timeout(800)   # let the last redraws settle before the picture
    # No error toast: gradio shows handler errors as a toast in the page.
    assert page.locator(".toast-body.error").count() == 0, page.locator(".toast-body").all_inner_texts()
    page.screenshot(path=str(ARTIFACTS / f"tab-{name}.png"), full_page=True)
    assert not page.errors, page.errors


def test_empty_prompt_shows_a_message(page):
    page.get_by_role("tab", name="Model").click()
    prompt = page.locator("#prompt textarea")
    prompt.fill("   ")
    first = load_tabs()[0]
    page.get_by_role("tab", name=first.TITLE).click()
    page.locator(f"#{short(first)}-run").first.click()
    toast = page.locator(".toast-body")
    toast.first.wait_for(state="visible", timeout=20_000)
    assert "empty" in " ".join(toast.all_inner_texts()).lower()
    page.screenshot(path=str(ARTIFACTS / "empty-prompt.png"))
    prompt.fill("The app keeps serving after a bad input.")


def test_why_tab_explains_and_scans(page):
    """The Why tab on an example: the lens and attribution draw, then an ablation and a head scan."""
    page.get_by_role("tab", name="Why this token?").click()
    panel = page.locator("#tab-why")
    panel.locator("#why-examples").get_by_text("HAMLET.", exact=False).first.click()
    page.locator("#why-run").click()
    for plot in ("#why-lens", "#why-heads", "#why-layers"):
        panel.locator(f"{plot} .js-plotly-plot").wait_for(state="visible", timeout=60_000)
    page.locator("#why-ablate-heads textarea").fill("0.0, 1.1")
    page.locator("#why-ablate").click()
    page.locator("#why-scan").click()
    for plot in ("#why-ablation", "#why-scan-plot"):
        panel.locator(f"{plot} .js-plotly-plot").wait_for(state="visible", timeout=60_000)
    assert "HAM" in page.locator("#prompt textarea").input_value()
    assert "ablating head 0.0, head 1.1" in page.locator("#why-ablation-summary").inner_text()
    assert "heads" in page.locator("#why-scan-summary").inner_text()
    page.wait_for_timeout(800)
    assert page.locator(".toast-body.error").count() == 0, page.locator(".toast-body").all_inner_texts()
    page.screenshot(path=str(ARTIFACTS / "why-scan.png"), full_page=True)
    assert not page.errors, page.errors
