"""Issue 15 in a real browser: figure downloads (PNG at 2x, SVG, the numbers), a link that reopens a view,
a link's out-of-range value, and presentation mode. Screenshots go to tests/artifacts/lecture-*.png.

Each test opens fresh pages of one browser (a link must work in a page that has never seen the view).
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from tests.conftest import ARTIFACTS, no_error_toast, plot_json, wait_restored
from tests.test_lecture import fake_hub, hf_cache  # noqa: F401 - fixtures: a temporary HF cache, a faked Hub

pytestmark = pytest.mark.browser
HEATMAP = "#attention-heatmap"


def open_page(browser, url: str):
    """A fresh context (no cookies, no storage) on ``url``, with downloads accepted and errors recorded."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    pg = context.new_page()
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.goto(url, wait_until="load")
    wait_restored(pg)
    return pg


def figure(pg, selector: str) -> dict:
    """The numbers a drawn figure holds (the page's own export: what its JSON download contains)."""
    pg.locator(f"{selector} .js-plotly-plot").wait_for(state="visible", timeout=60_000)
    return pg.evaluate(f"() => window.explorer.figureData(document.querySelector('{selector} .js-plotly-plot'))")


def wait_for_title(pg, selector: str, text: str) -> None:
    pg.wait_for_function(
        "([sel, text]) => { const gd = document.querySelector(sel + ' .js-plotly-plot');"
        " return !!gd && window.explorer.figureData(gd).title.includes(text); }", arg=[selector, text],
        timeout=60_000)


def test_png_svg_and_numbers_download_from_the_modebar(browser, app_url, client, registry):
    pg = open_page(browser, f"{app_url}?tab=attention&layer=1&head=2")
    wait_for_title(pg, HEATMAP, "Layer 1, head 2")
    plot = pg.locator(f"{HEATMAP} .js-plotly-plot")
    plot.hover()
    width, height = pg.evaluate(f"() => {{ const l = document.querySelector('{HEATMAP} .js-plotly-plot')._fullLayout;"
                                " return [l.width, l.height]; }")
    with pg.expect_download(timeout=30_000) as info:
        pg.locator(f'{HEATMAP} .modebar-btn[data-title="Download plot as a PNG"]').click()
    png = info.value
    assert png.suggested_filename == "attention_heatmap_L1_H2.png"
    from PIL import Image
    image = Image.open(io.BytesIO(Path(png.path()).read_bytes()))
    # 2x the figure's size on screen (plotly rounds a fractional width to whole pixels)
    assert image.format == "PNG" and abs(image.size[0] - 2 * width) < 1 and abs(image.size[1] - 2 * height) < 1, \
        (image.size, width, height)
    image.save(ARTIFACTS / "lecture-download.png")

    plot.hover()
    with pg.expect_download(timeout=30_000) as info:
        pg.locator(f'{HEATMAP} .modebar-btn[data-title="Download plot as SVG"]').click()
    svg = info.value
    assert svg.suggested_filename == "attention_heatmap_L1_H2.svg"
    assert Path(svg.path()).read_text(encoding="utf-8").lstrip().startswith("<svg")

    plot.hover()
    with pg.expect_download(timeout=30_000) as info:
        pg.locator(f'{HEATMAP} .modebar-btn[data-title="Download the numbers (JSON)"]').click()
    numbers = json.loads(Path(info.value.path()).read_text(encoding="utf-8"))
    assert info.value.suggested_filename == "attention_heatmap_L1_H2.json"
    # The file holds the numbers the server computed for this view (asked again through the API).
    prompt = pg.locator("#prompt textarea").input_value()
    big, *_ = client.predict(prompt, 1, 2, -1, False, registry.default, api_name="/attention_view")
    expected = plot_json(big)["data"][0]["z"]
    assert numbers["title"].startswith("Layer 1, head 2") and numbers["traces"][0]["type"] == "heatmap"
    got = numbers["traces"][0]["z"]

    def same(a, b):   # masked cells: NaN on the server, null in JSON
        return (a is None and (b is None or math.isnan(b))) or (a is not None and abs(a - b) < 1e-6)

    assert len(got) == len(expected) and all(same(a, b) for ra, rb in zip(got, expected) for a, b in zip(ra, rb))
    assert sum(a is not None for row in got for a in row) > len(got)   # real numbers, not only the mask
    no_error_toast(pg)
    assert not pg.errors, pg.errors
    pg.context.close()


def test_a_copied_link_reopens_the_same_view(browser, app_url):
    pg = open_page(browser, app_url)
    pg.get_by_role("tab", name="Attention").click()
    pg.locator("#prompt textarea").fill("Alice gave Bob the book, and then Bob gave it back.")
    for slider, value in (("#attention-layer", "2"), ("#attention-head", "3")):
        box = pg.locator(f"{slider} input[type=number]")
        box.fill(value)
        box.press("Enter")
    pg.locator("#attention-run").click()
    wait_for_title(pg, HEATMAP, "Layer 2, head 3")
    pg.locator("#attention-query input[type=number]").fill("4")
    pg.locator("#attention-query input[type=number]").press("Enter")
    pg.locator("#attention-run").click()
    pg.wait_for_function("() => document.querySelector('#attention-info')?.innerText.includes('token 4 ')",
                         timeout=60_000)
    shown = {sel: figure(pg, sel) for sel in (HEATMAP, "#attention-average", "#attention-query-heads")}
    pg.locator("#copy-link").click()
    pg.wait_for_function("() => document.querySelector('#share-link textarea, #share-link input')?.value"
                         ".includes('tab=attention')", timeout=10_000)
    link = pg.locator("#share-link textarea, #share-link input").first.input_value()
    assert pg.evaluate("() => navigator.clipboard.readText()") == link
    assert pg.url == link                              # the address bar holds it too
    query = parse_qs(urlparse(link).query)
    assert query["tab"] == ["attention"] and query["layer"] == ["2"] and query["head"] == ["3"]
    assert query["query"] == ["4"] and query["prompt"] == ["Alice gave Bob the book, and then Bob gave it back."]
    pg.screenshot(path=str(ARTIFACTS / "lecture-link-source.png"), full_page=False)
    pg.context.close()

    fresh = open_page(browser, link)
    wait_for_title(fresh, HEATMAP, "Layer 2, head 3")
    fresh.wait_for_function("() => document.querySelector('#attention-info')?.innerText.includes('token 4 ')",
                            timeout=60_000)
    for sel, numbers in shown.items():
        assert figure(fresh, sel) == numbers, f"{sel} differs in the reopened page"
    assert fresh.locator("#prompt textarea").input_value() == query["prompt"][0]
    assert fresh.locator("#attention-layer input[type=number]").input_value() == "2"
    no_error_toast(fresh)
    fresh.screenshot(path=str(ARTIFACTS / "lecture-link-reopened.png"), full_page=False)
    assert not fresh.errors, fresh.errors
    fresh.context.close()


def test_an_out_of_range_value_in_a_link_gets_the_controls_message(browser, app_url, registry):
    n_layer = registry.get(None).model.config.n_layer
    pg = open_page(browser, f"{app_url}?tab=attention&layer=99&head=1&present=maybe")
    toast = pg.locator(".toast-body")
    toast.first.wait_for(state="visible", timeout=30_000)
    wait_for_title(pg, HEATMAP, "Layer 0, head 1")     # the rest of the link still applies
    texts = " ".join(toast.all_inner_texts())
    assert f"Layer must be between 0 and {n_layer - 1}, got 99." in texts
    assert "Presentation mode must be 1 or 0" in texts
    pg.screenshot(path=str(ARTIFACTS / "lecture-link-out-of-range.png"), full_page=False)
    assert not pg.errors, pg.errors
    pg.context.close()


def test_presentation_mode_is_in_the_link_and_enlarges_the_fonts(browser, app_url):
    pg = open_page(browser, f"{app_url}?tab=attention")
    wait_for_title(pg, HEATMAP, "Layer 0, head 0")
    font = "() => document.querySelector('#attention-heatmap .js-plotly-plot')._fullLayout.font.size"
    normal = pg.evaluate(font)
    pg.locator("#presentation input").check()
    pg.wait_for_function(f"() => ({font})() > {normal}", timeout=10_000)
    assert pg.evaluate(font) == round(normal * 1.7)
    assert pg.evaluate("() => document.body.classList.contains('presentation')")
    assert "present=1" in pg.url
    link = pg.url
    pg.context.close()

    fresh = open_page(browser, link)
    wait_for_title(fresh, HEATMAP, "Layer 0, head 0")
    fresh.wait_for_function(f"() => ({font})() === {round(normal * 1.7)}", timeout=20_000)
    assert fresh.locator("#presentation input").is_checked()
    fresh.locator(HEATMAP).scroll_into_view_if_needed()
    fresh.wait_for_timeout(500)
    fresh.screenshot(path=str(ARTIFACTS / "lecture-presentation.png"), full_page=False)
    assert not fresh.errors, fresh.errors
    fresh.context.close()


def test_a_cold_start_shows_the_download_and_switches_to_gpt2(browser, fake_hub, monkeypatch):
    """A Space's first start, faked: GPT-2 "downloads" (a copy of the tiny HF model, held half way by a gate)
    while the page already serves the bundled model, shows the progress, then switches to GPT-2."""
    import threading

    import huggingface_hub

    from explorer.app import CSS, build_app
    from explorer.session import HUB_NAME, build_registry

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)   # gradio's own Hub calls stay off
    fake_hub.gate = threading.Event()
    registry = build_registry("gpt2", background_download=True)
    assert fake_hub.halfway.wait(30)
    demo = build_app(registry)
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, css=CSS, quiet=True)
    try:
        pg = open_page(browser, demo.local_url)
        notice = pg.locator("#hub-download")
        notice.get_by_text("GPT-2 is downloading:").wait_for(timeout=20_000)
        percent = f"{registry.hub_download.fraction:.0%}"
        assert percent in notice.inner_text() and "bundled model" in notice.inner_text()
        pg.locator("#tokenizer-run").click()             # the tabs work meanwhile, on the bundled model
        pg.locator("#tab-tokenizer .js-plotly-plot").first.wait_for(state="visible", timeout=60_000)
        assert registry.default in pg.locator("#model-status").inner_text()
        pg.screenshot(path=str(ARTIFACTS / "lecture-cold-start.png"), full_page=False)
        fake_hub.gate.set()
        notice.get_by_text("GPT-2 is ready").wait_for(timeout=30_000)
        pg.locator("#model-status").get_by_text("downloaded into the local cache at start-up").wait_for(timeout=30_000)
        assert pg.locator("#model-choice input").input_value().startswith(HUB_NAME)
        no_error_toast(pg)
        pg.screenshot(path=str(ARTIFACTS / "lecture-cold-start-ready.png"), full_page=False)
        assert not pg.errors, pg.errors
        pg.context.close()
    finally:
        demo.close()
