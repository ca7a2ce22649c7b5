"""A real browser on the reading views: the BPE merge table, a scored text, the compare view, and
Generate's "Score this text". Screenshots go to tests/artifacts/ to look at (same launch as test_browser.py)."""
import pytest

from tests.conftest import ARTIFACTS, no_error_toast, wait_restored
ROMEO = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun."

pytestmark = pytest.mark.browser



def test_merge_table(page):
    page.locator("#prompt textarea").fill(ROMEO)
    page.get_by_role("tab", name="Tokenizer").click()
    chunk = page.locator("#tokenizer-chunk input")
    chunk.fill("-1")
    page.locator("#tokenizer-merges-run").click()
    page.locator("#tokenizer-merges-info").get_by_text("merges never cross a chunk").wait_for(timeout=30_000)
    ladder = page.locator("#tokenizer-merge-ladder .js-plotly-plot")
    ladder.wait_for(state="visible", timeout=30_000)
    table = page.locator("#tokenizer-merges")
    assert "rank in vocab.bpe" in table.inner_text()
    assert "Wherefore" not in page.locator("#tokenizer-merges-info").inner_text()   # ROMEO text has no such chunk
    page.wait_for_timeout(800)
    no_error_toast(page)
    page.locator("#tokenizer-chunks").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "reading-merges.png"), full_page=False)
    table.screenshot(path=str(ARTIFACTS / "reading-merge-table.png"))
    page.locator("#tokenizer-merge-ladder").screenshot(path=str(ARTIFACTS / "reading-merge-ladder.png"))
    # a chunk number out of range gives a message, and the page keeps working
    chunk.fill("300")   # allowed by the box (up to 511), but this prompt has fewer chunks
    page.locator("#tokenizer-merges-run").click()
    toast = page.locator(".toast-body")
    toast.first.wait_for(state="visible", timeout=20_000)
    assert "does not exist" in " ".join(toast.all_inner_texts())
    assert not page.errors, page.errors
    page.reload(wait_until="load")     # a fresh page: no toast left for the next test
    wait_restored(page)


def test_scored_text(page):
    page.reload(wait_until="load")
    wait_restored(page)
    page.locator("#prompt textarea").fill(ROMEO)
    page.get_by_role("tab", name="Score").click()
    page.locator("#score-run").click()
    page.locator("#score-summary").get_by_text("tokens scored").wait_for(timeout=30_000)
    page.locator("#score-ranks .js-plotly-plot").wait_for(state="visible", timeout=30_000)
    spans = page.locator("#score-text span[title]")
    assert spans.count() > 20
    assert "model's top 5" in spans.nth(3).get_attribute("title")
    page.wait_for_timeout(800)
    no_error_toast(page)
    page.screenshot(path=str(ARTIFACTS / "reading-score.png"), full_page=True)
    page.locator("#score-mode").get_by_text("surprisal (bits)").click()
    page.locator("#score-text").get_by_text("bits", exact=False).first.wait_for(timeout=10_000)
    page.wait_for_timeout(800)
    page.locator("#score-text").screenshot(path=str(ARTIFACTS / "reading-score-surprisal.png"))
    assert not page.errors, page.errors


def test_compare_view(page):
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-run").click()
    page.locator("#compare-summary").get_by_text("Total variation distance").wait_for(timeout=30_000)
    page.locator("#compare-difference .js-plotly-plot").wait_for(state="visible", timeout=30_000)
    page.wait_for_timeout(800)
    no_error_toast(page)
    page.screenshot(path=str(ARTIFACTS / "reading-compare.png"), full_page=True)
    assert not page.errors, page.errors


def test_generate_then_score(page):
    page.locator("#prompt textarea").fill("ROMEO:")
    page.get_by_role("tab", name="Generate").click()
    page.locator("#generate-run").click()
    page.locator("#generate-summary").get_by_text("new tokens").wait_for(timeout=60_000)
    page.locator("#generate-to-score").click()
    page.locator("#tab-score").wait_for(state="visible", timeout=10_000)
    page.locator("#score-summary").get_by_text("tokens scored").wait_for(timeout=30_000)
    prompt = page.locator("#prompt textarea").input_value()
    assert prompt.startswith("ROMEO:") and len(prompt) > len("ROMEO:")
    page.wait_for_timeout(800)
    no_error_toast(page)
    page.screenshot(path=str(ARTIFACTS / "reading-generate-to-score.png"), full_page=True)
    assert not page.errors, page.errors
