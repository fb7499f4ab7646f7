"""The 2-D lab in a real browser (Debian's headless Chromium, Playwright) against ``python app.py`` with a tiny
image model: choose a data set, see the forward process, train (the loss figure and the
distance line appear), sample, at 1280 and 400 pixels wide, with no page or console errors and no warning or
traceback in the server's log; a shape drawn with the mouse on the sketchpad becomes the data set (a blank one
gets the message); Stop ends a training run and Continue goes on from where it stopped. Screenshots go to test-artifacts/lab/ (the README's copies are docs/screens/lab*.png).
"""

from __future__ import annotations

import json
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


# counts the page's file uploads in flight: the sketchpad sends its layers again whenever the page changes, and a
# page closed in the middle of one leaves the server a disconnected upload (a line in its log)
COUNT_UPLOADS = """{ const fetch0 = window.fetch; window.uploading = 0;
    window.fetch = (...args) => { if (!String(args[0]?.url ?? args[0]).includes('/upload')) return fetch0(...args);
        window.uploading++; return fetch0(...args).finally(() => window.uploading--); } }"""


def open_lab(browser, url: str, width: int):
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.add_init_script(COUNT_UPLOADS)
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


def test_drawing_is_the_data(browser, server):
    """A stroke drawn with the mouse, across the middle and then up from its right end, gives points along it in
    the lab's coordinates, y pointing up (the stroke is about 0.15 thick there: the brush's width); choosing "my
    drawing" before drawing anything says the drawing is blank."""
    url, log = server
    page, errors = open_lab(browser, url, 1280)
    tab = page.locator("#lab-tab")
    tab.get_by_text("Draw, upload or paste").click()
    tab.get_by_role("radio", name="my drawing").check()
    page.locator(".toast-body").get_by_text("the drawing is blank: draw a shape (a few strokes) first").wait_for(
        timeout=PATIENCE_MS)

    sketch = page.locator("#lab-sketch")
    sketch.get_by_role("button", name="Brush").click()  # the canvas takes strokes once a tool is chosen
    box = sketch.locator("canvas").first.bounding_box()
    x, y = box["x"] + box["width"] / 2 - 90, box["y"] + box["height"] / 2  # the page's middle, 240 px square
    page.mouse.move(x, y)
    page.mouse.down()
    for dx, dy in [(9 * i, 0) for i in range(1, 21)] + [(180, -9 * i) for i in range(1, 7)]:
        page.mouse.move(x + dx, y + dy)
    page.mouse.up()
    sketch.screenshot(path=SHOTS / "lab-drawing.png")
    tab.get_by_role("button", name="Use this data").click()
    page.locator("#lab-data-note").get_by_text("your drawing: 1000 training points").wait_for(timeout=PATIENCE_MS)
    page.locator("#lab-data img").wait_for(timeout=PATIENCE_MS)
    page.locator("#lab-data").screenshot(path=SHOTS / "lab-drawing-data.png")

    steps = page.locator("#lab-steps input[type=number]")  # the points come back with a sample (/toy_sample's JSON)
    steps.fill("100")
    steps.press("Enter")
    tab.get_by_role("button", name="Train", exact=True).click()
    page.locator("#lab-status").get_by_text("step 100 of 100").wait_for(timeout=PATIENCE_MS)
    tab.get_by_role("button", name="Sample", exact=True).click()
    tab.get_by_text("Samples (JSON").click()
    data = json.loads(page.wait_for_function(
        """() => { const el = document.querySelector('#lab-samples-json .json-holder');
                   try { const v = JSON.parse(el.innerText); return v.data.length ? JSON.stringify(v.data) : null }
                   catch { return null } }""", timeout=PATIENCE_MS).json_value())
    page.wait_for_function("() => window.uploading === 0", timeout=PATIENCE_MS)
    page.close()

    assert len(data) == 1000
    xs, ys = [p[0] for p in data], [p[1] for p in data]
    bar = [y for x, y in data if x < 0.5]  # the horizontal stroke, left of the upright one
    upright = [(x, y) for x, y in data if y > max(bar) + 0.05]
    assert min(xs) < -0.95 and max(xs) > 0.95, "the longer side (the horizontal stroke) spans −1…1"
    assert max(bar) - min(bar) < 0.25, f"the horizontal stroke is {max(bar) - min(bar):.2f} thick, not a line"
    assert max(ys) - max(bar) > 0.4, "the upright stroke rises above the horizontal one (y points up)"
    assert min(ys) > min(bar) - 0.05, "nothing lies below the horizontal stroke (y points up)"
    assert min(x for x, _ in upright) > 0.75, "the upright stroke stands at the right end"
    assert not errors, errors
    assert not LOG_TROUBLE.findall(log.read_text()), log.read_text()


STATUS_STEP = re.compile(r"step (\d+) of (\d+)")


def shown_step(page) -> tuple[int, int]:
    """(step, target) of the lab's status line."""
    found = STATUS_STEP.search(page.locator("#lab-status").inner_text())
    assert found, page.locator("#lab-status").inner_text()
    return int(found[1]), int(found[2])


def test_stop_ends_training_and_continue_goes_on_from_there(browser, server):
    """Stop during a long Train: the status stops moving short of the target; Continue then trains the slider's
    steps more from the step it reached, not from zero."""
    url, log = server
    page, errors = open_lab(browser, url, 1280)
    tab = page.locator("#lab-tab")
    page.get_by_role("button", name="Use this data").click()
    page.locator("#lab-data-note").get_by_text("two moons").wait_for(timeout=PATIENCE_MS)
    steps = page.locator("#lab-steps input[type=number]")
    steps.fill("20000")
    steps.press("Enter")
    tab.get_by_role("button", name="Train", exact=True).click()
    page.locator("#lab-status").get_by_text(re.compile(r"step [1-9]\d* of 20000")).wait_for(timeout=PATIENCE_MS)
    tab.get_by_role("button", name="Stop", exact=True).click()
    page.wait_for_function("() => !document.querySelector('#lab-status .eta-bar, #lab-status .wrap.pending')",
                           timeout=PATIENCE_MS)  # the event has ended
    stopped, target = shown_step(page)
    page.wait_for_timeout(3000)  # time for an update that should not come
    assert shown_step(page) == (stopped, target) and 0 < stopped < target == 20000

    steps.fill("300")
    steps.press("Enter")
    tab.get_by_role("button", name="Continue", exact=True).click()
    page.wait_for_function(
        """() => { const m = /step (\\d+) of (\\d+)/.exec(document.querySelector('#lab-status').innerText);
                   return m && m[1] === m[2] && Number(m[2]) < 20000 }""", timeout=PATIENCE_MS)
    done, goal = shown_step(page)
    assert goal >= stopped + 300, (stopped, goal)  # on from where Stop left it (a chunk in flight may add a few)
    assert goal < stopped + 300 + 2000, (stopped, goal)
    page.wait_for_function("() => window.uploading === 0", timeout=PATIENCE_MS)
    page.close()
    assert not errors, errors
    assert not LOG_TROUBLE.findall(log.read_text()), log.read_text()
