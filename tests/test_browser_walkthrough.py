"""A real browser opens the Walkthrough tab, follows a token and expands another block by clicking it.

Screenshots go to tests/artifacts/ to look at. Needs /usr/bin/chromium (see tests/test_browser.py).
"""
import pytest

from tests.conftest import ARTIFACTS, no_error_toast

pytestmark = pytest.mark.browser



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
    no_error_toast(page)
    page.locator("#walkthrough-blocks").screenshot(path=str(ARTIFACTS / "walkthrough-block-list.png"))
    page.screenshot(path=str(ARTIFACTS / f"walkthrough-block{last}.png"), full_page=True)
    log = page.locator("#walkthrough-log").inner_text()
    assert "[block 0]" in log
    assert not page.errors, page.errors
