"""A real browser opens the Walkthrough tab, follows a token and expands another block by clicking it.

Screenshots go to tests/artifacts/ to look at. Needs /usr/bin/chromium (see tests/test_browser.py).
"""
import os
from pathlib import Path

import pytest

from tests.test_browser import ARGS, ARTIFACTS, CHROMIUM

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def page(app_url):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: the README's test command installs it")
        pytest.skip(f"{CHROMIUM} not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(app_url, wait_until="load")
        pg.locator("#prompt").wait_for(timeout=30_000)
        pg.errors = errors
        yield pg
        browser.close()


def test_walkthrough_expands_a_clicked_block(page):
    page.locator("#prompt textarea").fill("To be, or not to be, that is the question:")
    page.get_by_role("tab", name="Walkthrough").click()
    panel = page.locator("#tab-walkthrough")
    panel.wait_for(state="visible", timeout=10_000)
    page.locator("#walkthrough-run").click()
    title = page.locator("#walkthrough-block-title")
    title.get_by_text("Block 0:").wait_for(timeout=60_000)
    page.locator("#walkthrough-final-2-plot .js-plotly-plot").wait_for(state="visible", timeout=30_000)
    assert "ln_1" in page.locator("#walkthrough-block-0-text").inner_text()
    page.wait_for_timeout(800)
    page.screenshot(path=str(ARTIFACTS / "walkthrough-block0.png"), full_page=True)

    blocks = page.locator("#walkthrough-blocks")
    labels = blocks.locator("label")
    assert labels.count() >= 2 and "‖x‖" in labels.nth(1).inner_text()   # one line each, with the norms
    labels.nth(labels.count() - 1).click()                              # expand the last block
    last = labels.count() - 1
    title.get_by_text(f"Block {last}:").wait_for(timeout=30_000)
    first_step = page.locator("#walkthrough-block-0-text").inner_text()
    assert first_step.startswith("4. ln_1")
    page.wait_for_timeout(800)
    assert page.locator(".toast-body.error").count() == 0, page.locator(".toast-body").all_inner_texts()
    page.locator("#walkthrough-blocks").screenshot(path=str(ARTIFACTS / "walkthrough-block-list.png"))
    page.screenshot(path=str(ARTIFACTS / f"walkthrough-block{last}.png"), full_page=True)
    log = page.locator("#walkthrough-log").inner_text()
    assert "[block 0]" in log
    assert not page.errors, page.errors
