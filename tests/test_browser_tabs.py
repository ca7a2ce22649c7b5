"""Every tab draws when it is first opened: one click on the tab and nothing else, and then every plot the
tab shows holds data (no empty frames), and no error toast. conftest's tab_walk opens the tabs of one fresh
page in turn (a tab's first opening is its own, whatever the tabs before it did) and keeps a screenshot
first-open-NAME.png of each."""
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
