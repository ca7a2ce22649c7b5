"""A real browser (Debian's chromium, driven by Playwright) opens every tab, as a student would.

conftest's tab_walk opens the tabs of one fresh page in turn and records each; the tests here read that
record, one test per tab and check:
- first opening: one click on the tab and nothing else, then every plot the tab shows holds data (no empty
  frames) and no error toast (a tab's first opening is its own, whatever the tabs before it did);
  screenshot first-open-NAME.png;
- its run button draws its figures with no error; screenshot tab-NAME.png;
- every drawn figure offers the slide downloads (PNG at 2x named for the figure, SVG, the numbers).
They share one file so that pytest-xdist (--dist loadfile) walks the tabs once, on one worker.
Needs /usr/bin/chromium (the README's test command installs it); skipped without it, except under CI.
"""
import pytest

from explorer.tabs import load_tabs
from tests.conftest import tab_short

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("tab", load_tabs(), ids=tab_short)
def test_first_open_draws_every_plot(tab_walk, tab):
    name = tab_short(tab)
    rec = tab_walk[name]
    assert rec["first_open"] == [], (f"tab {name}: plots {rec['first_open']} have no data after the tab's first "
                                     f"opening (tests/artifacts/first-open-{name}.png)")
    assert rec["first_open_toasts"] == [], rec["first_open_toasts"]
    assert not rec["errors"], rec["errors"]


@pytest.mark.parametrize("tab", load_tabs(), ids=tab_short)
def test_tab_draws(tab_walk, tab):
    """Open the tab, press its run button: its figures draw with no error."""
    rec = tab_walk[tab_short(tab)]
    assert rec["run"] == "drawn", rec["run"]
    assert rec["run_toasts"] == [], rec["run_toasts"]
    assert not rec["errors"], rec["errors"]


def test_every_drawn_figure_offers_the_slide_downloads(tab_walk):
    """Every tab's figures, once drawn, carry the configured modebar: a PNG at 2x named for the figure,
    the SVG and the numbers buttons. (Train draws only after a training run: test_browser_train's job.)"""
    checked = {}
    for name, rec in tab_walk.items():
        if name == "train":
            continue
        configs = rec["modebar"]
        for c in configs:
            assert c["png"]["format"] == "png" and c["png"]["scale"] == 2, c
            assert c["png"]["filename"].startswith(c["holder"].replace("-", "_")), c
            assert {"Download plot as a PNG", "Download plot as SVG", "Download the numbers (JSON)"} <= set(c["buttons"]), c
        checked[name] = len(configs)
    print(f"\n[figures] modebar downloads configured on {sum(checked.values())} figures: {checked}")
    assert len(checked) == len(tab_walk) - 1 and all(checked.values())
