"""A real browser trains the Train tab's genre head and classifies a line.

It trains the head for 50 steps, waits for the curve and the accuracy, checks that the class
probabilities and the last token's attention are drawn by the new head, and saves
tests/artifacts/classify.png to look at. Launched as in tests/test_browser.py.
"""
import pytest

from tests.conftest import ARTIFACTS, no_error_toast

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_genre_head_trains_then_classifies_a_line(page):
    page.get_by_role("tab", name="Train").click()
    page.locator("#tab-train").wait_for(state="visible", timeout=10_000)
    section = page.locator("#classify")
    section.scroll_into_view_if_needed()
    # Before any training the bundled head scores the example line.
    page.locator("#classify-probs .js-plotly-plot").wait_for(state="visible", timeout=30_000)
    assert "majority-class baseline" in page.locator("#classify-status").inner_text()
    steps = page.locator("#classify-steps input[type=number]")
    steps.fill("50")
    steps.press("Enter")
    page.locator("#classify-run").click()
    # The run itself takes about 3 s; the wait is long because the head shares the "train" queue with the
    # other trainings of this worker's app (explorer.scheduling), one at a time.
    try:
        page.wait_for_function("() => (document.querySelector('#classify-status') || {innerText: ''})"
                               ".innerText.includes('step 50 / 50')", timeout=150_000)
    except Exception as e:  # noqa: BLE001 - say what the page showed instead
        raise AssertionError(f"the head's training did not finish: status {page.locator('#classify-status').inner_text()!r}, "
                             f"toasts {page.locator('.toast-body').all_inner_texts()}") from e
    page.locator("#classify-curve .js-plotly-plot").wait_for(state="visible", timeout=10_000)
    status = page.locator("#classify-status").inner_text()
    assert "held-out accuracy" in status and "majority-class baseline" in status
    # The new head scores the line at once (the training's success event).
    page.wait_for_function("() => (document.querySelector('#classify-note') || {innerText: ''})"
                           ".innerText.includes('your head')", timeout=30_000)
    note = page.locator("#classify-note").inner_text()
    assert "Scored by your head (fresh, 50 steps)" in note and "the last token looks most at" in note
    # A typed line, another head: both figures redraw for it.
    page.locator("#classify-text textarea").fill("Now is the winter of our discontent")
    page.locator("#classify-go").click()
    page.wait_for_function("() => (document.querySelector('#classify-note') || {innerText: ''})"
                           ".innerText.includes('Most likely')", timeout=30_000)
    page.wait_for_function("() => [...document.querySelectorAll('#classify-attention .xtick text, "
                           "#classify-attention .ytick text')].some(t => t.textContent.includes('winter'))",
                           timeout=30_000)
    page.wait_for_timeout(800)   # let the last redraws settle before the picture
    no_error_toast(page)
    section.screenshot(path=str(ARTIFACTS / "classify.png"))
    assert not page.errors, page.errors
