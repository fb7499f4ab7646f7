"""The 2-D lab in a real browser (Debian's headless Chromium, Playwright) against ``python app.py`` with a tiny
image model: choose a data set, see the forward process, train (the loss figure and the
distance line appear), sample, at 1280 and 400 pixels wide, with no page or console errors and no warning or
traceback in the server's log. Screenshots go to test-artifacts/lab/ (the README's copies are docs/screens/lab*.png).
"""

from __future__ import annotations

import re

import pytest
from conftest import PATIENCE, open_tab
from serving import ROOT, serving_tiny_model

from ddpm_app.ui.lab import PICTURE_MIN_WIDTH

SHOTS = ROOT / "test-artifacts" / "lab"
SHOTS.mkdir(parents=True, exist_ok=True)
PATIENCE_MS = PATIENCE * 1000  # Playwright's waits, as a guard against a hang only
STEPS = 300
# what a healthy server never writes: Python's warnings, Gradio's complaints about a handler's outputs, tracebacks
LOG_TROUBLE = re.compile(r"Traceback|Warning|warning|too many output values|too few output values|Error")

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serving_tiny_model(tmp_path_factory.mktemp("lab-browser"), 20) as (url, _, log):
        yield url, log


def open_lab(browser, url: str, width: int):
    page = browser.new_page(viewport={"width": width, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.goto(url)
    page.get_by_role("button", name="Generate", exact=True).wait_for(timeout=PATIENCE_MS)
    open_tab(page, "2-D lab")
    return page, errors


def natural_width(page, selector: str) -> int:
    img = page.locator(f"{selector} img")
    img.wait_for(timeout=PATIENCE_MS)
    page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=img.element_handle(), timeout=PATIENCE_MS)
    return img.evaluate("el => el.naturalWidth")


@pytest.mark.parametrize("width", [1280, 400])
def test_lab_tab(browser, server, width):
    url, log = server
    page, errors = open_lab(browser, url, width)
    tab = page.locator("#lab-tab")
    page.get_by_role("button", name="Use this data").click()
    page.locator("#lab-data-note").get_by_text("two moons: 1000 training points").wait_for(timeout=PATIENCE_MS)
    assert natural_width(page, "#lab-forward") >= 500 and natural_width(page, "#lab-marginal") >= 500

    steps = page.locator("#lab-steps input[type=number]")
    steps.fill(str(STEPS))
    steps.press("Enter")
    tab.get_by_role("button", name="Train", exact=True).click()
    page.locator("#lab-status").get_by_text(f"step {STEPS} of {STEPS}").wait_for(timeout=PATIENCE_MS)
    quality = page.locator("#lab-quality")
    quality.get_by_text("Energy distance").wait_for(timeout=PATIENCE_MS)
    assert re.search(r"samples \d\.\d{4} · N\(0, I\) \d\.\d{4} · held-out data -?\d\.\d{4}", quality.inner_text())
    assert natural_width(page, "#lab-loss") >= 500 and natural_width(page, "#lab-preview") >= 500

    tab.get_by_role("button", name="Sample", exact=True).click()
    page.locator("#lab-sample-quality").get_by_text("Energy distance").wait_for(timeout=PATIENCE_MS)
    for picture in ("#lab-paths", "#lab-field", "#lab-x0"):
        assert natural_width(page, picture) >= 500
    page.wait_for_function("() => !document.querySelector('#lab-tab .wrap.pending, #lab-tab .eta-bar')",
                           timeout=PATIENCE_MS)

    shown = [page.locator(f"{p} img").bounding_box()["width"] for p in ("#lab-loss", "#lab-paths", "#lab-x0")]
    assert min(shown) >= PICTURE_MIN_WIDTH - 40, f"the figures are squeezed to {shown} px"  # one per line on a phone
    assert page.evaluate("document.documentElement.scrollWidth") <= width, "the page scrolls sideways"
    tab.screenshot(path=SHOTS / f"lab{'' if width == 1280 else '-phone'}.png")
    page.close()
    assert not errors, errors
    assert not LOG_TROUBLE.findall(log.read_text()), log.read_text()
