"""What every figure shares (explorer.figures.common): the template they carry."""
import re
from pathlib import Path

import plotly.io as pio

from explorer.figures import common

FIGURES = Path(common.__file__).parent


def test_template_is_plotly_white_for_what_the_figures_draw():
    """The app's template is plotly_white's own entries, less trace types and subplot kinds no figure draws, so
    every figure looks as it would under plotly_white."""
    ours, white = pio.templates[pio.templates.default].to_plotly_json(), pio.templates["plotly_white"].to_plotly_json()
    assert pio.templates.default == "explorer"
    assert ours["data"] == {k: white["data"][k] for k in common.TRACE_TYPES}
    assert ours["layout"] == {k: v for k, v in white["layout"].items() if k not in common.UNUSED_LAYOUT}
    assert set(common.UNUSED_LAYOUT) <= set(white["layout"])
    source = "\n".join(p.read_text() for p in FIGURES.glob("*.py"))
    drawn = {t.lower() for t in re.findall(r"\bgo\.([A-Z]\w*)\(", source)} - {"figure"}
    assert drawn and drawn <= set(common.TRACE_TYPES), f"trace types drawn but not in the template: {drawn}"
    for kind in common.UNUSED_LAYOUT:
        assert not re.search(rf"\b{kind}\w*\s*=", source), f"a figure draws a {kind} subplot"
