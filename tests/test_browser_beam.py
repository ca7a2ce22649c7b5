"""The Generate tab's beam search in a real browser: run it, the tree plot holds the search, Compare fills
three continuations, and a bad width gives a message, not a traceback. Screenshots to tests/artifacts/."""
import pytest

from tests.conftest import ARTIFACTS, no_error_toast

pytestmark = pytest.mark.browser

TREE_DATA = """() => {
  const el = document.querySelector('#beam-tree .js-plotly-plot');
  if (!el || !el.data) return null;
  const named = el.data.filter(t => t.name);
  return {traces: named.map(t => t.name), points: named.reduce((n, t) => n + (t.x ? t.x.length : 0), 0),
          best: (el.data.find(t => t.name === 'best path') || {x: []}).x.length};
}"""


def open_generate(page):
    page.get_by_role("tab", name="Generate").click()
    page.locator("#tab-generate").wait_for(state="visible", timeout=10_000)


def test_beam_search_draws_its_tree(page):
    open_generate(page)
    page.locator("#prompt textarea").fill("Once upon a time")
    page.locator("#beam-run").click()
    # The tab's first opening ran beam search on the default prompt: wait for this prompt's result.
    page.wait_for_function("() => document.querySelector('#beam-text')?.innerText.startsWith('Once upon a time')",
                           timeout=60_000)
    page.wait_for_function(f"() => {{ const d = ({TREE_DATA})(); return d && d.best > 0; }}", timeout=30_000)
    data = page.evaluate(TREE_DATA)
    assert data["best"] == 8, data                    # the winner's path: one node per new token (no EOS here)
    assert {"best path", "kept as a beam", "finished (ended)"} <= set(data["traces"]), data
    assert data["points"] > 3 * 8, data
    assert "Searched 8 steps" in page.locator("#beam-summary").inner_text()
    # Hover the winner's last node: the hover names its token and the text so far, as text.
    hover = page.evaluate("""() => {
      const el = document.querySelector('#beam-tree .js-plotly-plot');
      const curve = el.data.findIndex(t => t.name === 'best path');
      Plotly.Fx.hover(el, [{curveNumber: curve, pointNumber: el.data[curve].x.length - 1}]);
      return el.data[curve].hovertext[el.data[curve].x.length - 1];
    }""")
    page.wait_for_timeout(300)
    shown = page.evaluate("""() => [...document.querySelectorAll('#beam-tree .hovertext text.nums > tspan.line')]
                                   .map(t => t.textContent).join('\\n')""")
    assert "text so far: Once upon a time" in shown and "cumulative log-prob" in shown, shown
    assert shown.split("\n")[0].startswith(hover.split("<b>")[1].split("</b>")[0].replace("&amp;", "&"))
    page.locator("#beam-tree").screenshot(path=str(ARTIFACTS / "beam-tree-hover.png"))
    page.locator("#beam-compare").click()
    cards = page.locator("#beam-compare-output .beam-compare > div")
    cards.first.wait_for(timeout=60_000)
    assert cards.count() == 3
    assert [c.split("\n")[0] for c in cards.all_inner_texts()] == ["greedy", "sampling", "beam search"]
    page.wait_for_timeout(800)
    no_error_toast(page)
    page.locator("#beam-explanation").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "beam-tree-page.png"), full_page=True)
    page.locator("#beam-tree").screenshot(path=str(ARTIFACTS / "beam-tree.png"))
    assert not page.errors, page.errors
