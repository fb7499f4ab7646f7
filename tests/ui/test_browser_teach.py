"""The teaching views in a real browser (Debian's headless Chromium, Playwright) against ``python app.py`` serving
the shipped faces model: each view opened and used at 1280 and 400 pixels wide.

The screenshots go to test-artifacts/teach/; look at them after a change to the views (the docs' screenshots,
docs/screens/, are taken by scripts/screenshots.py).
"""

from __future__ import annotations

import shutil

import pytest
from conftest import open_tab
from serving import ROOT, serving_app

SHOTS = ROOT / "test-artifacts" / "teach"  # for a person to look at; the docs' are scripts/screenshots.py's
SHOTS.mkdir(parents=True, exist_ok=True)
PHOTO = ROOT / "ddpm_app" / "assets" / "portrait.png"
WEIGHTS = ROOT / "weights"
WAIT = 300_000  # ms: the shipped 12 M-parameter network on a busy 2-core CPU

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("teach-browser")
    weights = root / "weights"
    weights.mkdir()
    shutil.copytree(WEIGHTS / "faces", weights / "faces")  # the shipped model alone (a link out would be refused)
    with serving_app(weights, root / "app.log") as (url, _):
        yield url


def open_app(browser, url: str, width: int):
    page = browser.new_page(viewport={"width": width, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.get_by_role("button", name="Generate", exact=True).wait_for(timeout=60_000)
    return page, errors


@pytest.mark.parametrize("width", [1280, 400])
def test_teaching_views(browser, server, width):
    page, errors = open_app(browser, server, width)
    tag = "" if width == 1280 else "-phone"

    # Training: Algorithm 1 on the photo, the loss curve, then t moved
    open_tab(page, "Training")
    page.locator("#training-tab input[type=file]").first.set_input_files(str(PHOTO))
    page.locator("#train-numbers").get_by_text("noise seed").wait_for(timeout=WAIT)
    page.locator("#train-summary").get_by_text("held-out", exact=False).first.wait_for(timeout=WAIT)
    page.locator("#train-t input[type=range]").focus()
    page.keyboard.press("End")
    page.locator("#train-numbers").get_by_text("t = 1000").wait_for(timeout=WAIT)
    page.wait_for_function("() => !document.querySelector('.wrap.pending, .eta-bar')", timeout=WAIT)
    page.screenshot(path=SHOTS / f"training{tag}.png", full_page=True)

    # Likelihood of the photo: progress, then the bound beside the held-out figure
    open_tab(page, "Likelihood")
    page.locator("#likelihood-tab input[type=file]").first.set_input_files(str(PHOTO))
    page.get_by_role("button", name="Bits/dim of this photo").click()
    page.locator("#lk-status progress").wait_for(timeout=WAIT)
    page.locator("#lk-status").get_by_text("Done").wait_for(timeout=WAIT)
    page.locator("#lk-verdict").get_by_text("Held-out average").first.wait_for(timeout=WAIT)
    page.screenshot(path=SHOTS / f"likelihood{tag}.png", full_page=True)

    # Generate (DDIM, 50 steps, seed 7, clip on), pin it, generate again with clip off, compare
    open_tab(page, "Generate")
    page.get_by_label("Seed (−1 or blank = random)").first.fill("7")
    page.get_by_role("button", name="Generate", exact=True).click()
    page.locator("#gen-status").get_by_text("Done").wait_for(timeout=WAIT)
    page.screenshot(path=SHOTS / f"generate-step{tag}.png", full_page=True)
    open_tab(page, "Compare")
    page.get_by_role("button", name="Pin this run (as A)").click()
    page.locator("#compare-caption").get_by_text("Pinned").wait_for(timeout=WAIT)
    open_tab(page, "Generate")
    page.get_by_label("Clip x̂₀ to [−1, 1]").first.uncheck()
    page.get_by_role("button", name="Generate", exact=True).click()
    open_tab(page, "Frames")
    # the new run has finished: its title, not the first run's (a wait on the progress bar's value missed the
    # short-lived state on a busy machine, where several previews reach the page between two animation frames)
    page.locator("#frame-label").get_by_text("x̂₀ not clipped, seed 7 (finished)").wait_for(timeout=WAIT)
    page.get_by_role("button", name="◀ Previous").click()
    # DDIM-50 from t = 1000 visits …, 42, 21, 1: the label names the step before the last and its t
    page.locator("#frame-label").get_by_text("step 49 of 50 · t = 21").wait_for(timeout=WAIT)
    page.locator("#frame-terms img").wait_for(timeout=WAIT)
    page.wait_for_function("() => !document.querySelector('.wrap.pending, .eta-bar')", timeout=WAIT)
    page.screenshot(path=SHOTS / f"frames-step{tag}.png", full_page=True)
    open_tab(page, "Compare")
    page.locator("#compare-t input[type=range]").focus()
    for _ in range(3):
        page.keyboard.press("PageDown")
    # DDIM-50 visits t = …, 735, 715, 694, …: at t = 700 both runs show their step at t = 715
    page.locator("#compare-caption").get_by_text("at t = 715").first.wait_for(timeout=WAIT)
    page.locator("#compare-image img").wait_for(timeout=WAIT)
    page.screenshot(path=SHOTS / f"compare{tag}.png", full_page=True)

    # Interpolation between two seeds
    open_tab(page, "Interpolate")
    page.get_by_role("button", name="Interpolate", exact=True).click()
    page.locator("#interp-status").get_by_text("Done").wait_for(timeout=WAIT)
    page.screenshot(path=SHOTS / f"interpolate{tag}.png", full_page=True)

    # a slide figure of it
    page.get_by_text("Figures for slides (PNG)").click()
    page.get_by_role("button", name="Export figure").click()
    page.locator("#figure-file a").first.wait_for(timeout=WAIT)
    width_now = page.evaluate("document.documentElement.scrollWidth")
    assert width_now <= width, f"the page scrolls sideways ({width_now} px wide at {width})"
    assert not errors, errors
