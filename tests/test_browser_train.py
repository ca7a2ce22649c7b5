"""A real browser (Debian's chromium, driven by Playwright) runs the Train tab's instruction tuning.

It fine-tunes for 10 steps, waits for the loss curve and the answers after training, checks the
masked example, and saves tests/artifacts/train-instruct.png to look at. Launched as in
tests/test_browser.py: skipped without /usr/bin/chromium, except under CI.
"""
import pytest

from tests.conftest import ARTIFACTS, no_error_toast

pytestmark = [pytest.mark.browser, pytest.mark.slow]



def test_instruction_tuning_shows_the_mask_the_curve_and_the_answers(page):
    page.get_by_role("tab", name="Train").click()
    panel = page.locator("#tab-train")
    panel.wait_for(state="visible", timeout=10_000)
    example = page.locator("#train-instruct-example")
    example.scroll_into_view_if_needed()
    assert example.locator(".tok-trained").count() > 0 and example.locator(".tok-ignored").count() > 0
    steps = page.locator("#train-instruct-steps input[type=number]")
    steps.fill("10")
    steps.press("Enter")
    page.locator("#train-instruct-run").click()
    page.locator("#train-instruct-curve .js-plotly-plot").wait_for(state="visible", timeout=120_000)
    page.wait_for_function("() => (document.querySelector('#train-instruct-answers') || {innerText: ''})"
                           ".innerText.includes('after.')", timeout=120_000)
    answers = page.locator("#train-instruct-answers").inner_text()
    # One row per task (its instruction in the first column); a model that copies may echo it in an answer.
    assert "Exact match on 24 held-out records" in answers
    assert sum(row.startswith("Reverse the order") for row in answers.splitlines()) == 1
    assert "step 10 / 10" in page.locator("#train-instruct-status").inner_text()
    page.wait_for_timeout(800)   # let the last redraws settle before the picture
    no_error_toast(page)
    page.locator("#train-instruct-example").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "train-instruct.png"), full_page=True)
    assert not page.errors, page.errors
