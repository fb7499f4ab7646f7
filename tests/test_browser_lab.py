"""The 2-D lab in a real browser (Debian's headless Chromium, Playwright) against ``python app.py`` with a tiny
image model: choose the data, see the forward process, train, sample, at 1280 and 400 pixels wide, with no page
errors. Screenshots go to test-artifacts/lab/ (the README's copies are docs/screens/lab*.png)."""

from __future__ import annotations

import pytest
from conftest import open_tab
from test_app_server import ROOT, serving_tiny_model

SHOTS = ROOT / "test-artifacts" / "lab"
SHOTS.mkdir(parents=True, exist_ok=True)
WAIT = 300_000  # ms: a busy 2-core CPU

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serving_tiny_model(tmp_path_factory.mktemp("lab-browser"), 20) as (url, _, _):
        yield url


@pytest.mark.parametrize("width", [1280, 400])
def test_lab_tab(browser, server, width):
    page = browser.new_page(viewport={"width": width, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server)
    page.get_by_role("button", name="Generate", exact=True).wait_for(timeout=WAIT)
    open_tab(page, "2-D lab")
    page.get_by_role("button", name="Use this data").click()
    page.locator("#lab-data-note").get_by_text("training points").wait_for(timeout=WAIT)
    page.locator("#lab-forward img").wait_for(timeout=WAIT)
    steps = page.locator("#lab-tab input[type=number]").nth(3)  # the Steps slider's number box
    steps.fill("300")
    steps.press("Enter")
    page.locator("#lab-tab").get_by_role("button", name="Train", exact=True).click()
    page.locator("#lab-quality").get_by_text("Energy distance").wait_for(timeout=WAIT)
    page.locator("#lab-tab").get_by_role("button", name="Sample", exact=True).click()
    page.locator("#lab-sample-quality").get_by_text("Energy distance").wait_for(timeout=WAIT)
    page.locator("#lab-paths img").wait_for(timeout=WAIT)
    page.locator("#lab-tab").screenshot(path=SHOTS / f"lab{'' if width == 1280 else '-phone'}.png")
    assert not [e for e in errors if "custom_component" in e or "svelte" in e.lower()], errors
    page.close()
