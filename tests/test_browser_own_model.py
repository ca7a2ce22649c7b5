"""A real browser opens a character-level nanoGPT model with the header's **Open your own model** and looks at it
in three tabs: the Tokenizer shows one chip per character, the Attention tab draws the model's 3 heads over
characters, the Embeddings tab projects its letters. Screenshots tests/artifacts/own-model-header.png,
own-model-tokenizer.png, own-model-attention.png and own-model-embeddings.png to look at."""
import pytest

from tests.conftest import ARTIFACTS, no_error_toast
from tests.test_own_model import nanogpt_char_checkpoint

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_upload_a_char_model_and_see_it_in_two_tabs(page, tmp_path):
    _, ckpt, meta = nanogpt_char_checkpoint(tmp_path)
    page.get_by_text("Open your own model").click()
    page.locator("#own-files input[type=file]").set_input_files([str(ckpt), str(meta)])
    page.locator("#own-open").click()
    page.wait_for_function("() => (document.querySelector('#own-status') || {innerText: ''})"
                           ".innerText.includes('is open in every tab')", timeout=60_000)
    status = page.locator("#own-status").inner_text()
    assert "nanoGPT checkpoint" in status and "characters" in status
    assert "ckpt.pt · yours" in page.locator("#model-choice input").input_value()
    page.wait_for_function("() => (document.querySelector('#model-status') || {innerText: ''})"
                           ".innerText.includes('ckpt.pt · yours')", timeout=30_000)   # the menu's change event
    assert "ckpt.pt" not in page.locator("#own-files").inner_text()    # emptied: the files left the server
    page.locator("#own-model").screenshot(path=str(ARTIFACTS / "own-model-header.png"))

    page.get_by_role("tab", name="Tokenizer").click()
    page.locator("#tokenizer-run").click()
    # The prompt as characters: a chip for "T", one for "o", ... (GPT-2's BPE makes "To" one token).
    prompt = page.locator("#prompt textarea").input_value()
    chips = "#tokenizer-tokens span[title^='token #'] > span:first-child"
    page.wait_for_function(f"() => document.querySelectorAll(\"{chips}\").length === {len(prompt)}", timeout=30_000)
    shown = page.locator(chips).all_inner_texts()
    assert "".join(shown) == prompt.replace(" ", "␣").replace("\n", "↵")
    page.locator("#tokenizer-merges-info").scroll_into_view_if_needed()
    page.wait_for_function("() => (document.querySelector('#tokenizer-merges-info') || {innerText: ''})"
                           ".innerText.includes('has no merges to show')", timeout=30_000)   # the button's last step
    no_error_toast(page)
    page.locator("#tab-tokenizer").screenshot(path=str(ARTIFACTS / "own-model-tokenizer.png"))

    page.get_by_role("tab", name="Attention").click()
    page.locator("#attention-run").click()
    page.locator("#tab-attention .js-plotly-plot .xtick").first.wait_for(state="attached", timeout=30_000)
    page.wait_for_timeout(800)   # let the last redraws settle before the picture
    ticks = page.evaluate("() => [...document.querySelectorAll('#tab-attention .xtick text')].map(t => t.textContent)")
    # Each axis labels a character with its position: 0:T, 1:o, 2:␣, ...
    assert ticks[:4] == ["0:T", "1:o", "2:␣", "3:b"], ticks[:8]
    no_error_toast(page)
    page.locator("#tab-attention").screenshot(path=str(ARTIFACTS / "own-model-attention.png"))

    # The model switch fitted the Embeddings tab's token and word list to the 63 characters, and redrew it.
    page.get_by_role("tab", name="Embeddings").click()
    page.locator("#embeddings-run").click()
    page.wait_for_function("() => [...document.querySelectorAll('#embeddings-projection .textpoint text, "
                           "#embeddings-projection text')].some(t => t.textContent.trim() === 'e')", timeout=30_000)
    page.wait_for_timeout(800)
    no_error_toast(page)
    page.locator("#tab-embeddings").screenshot(path=str(ARTIFACTS / "own-model-embeddings.png"))
    assert not page.errors, page.errors
