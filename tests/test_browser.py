"""The app in a real browser: headless Chromium (Debian's) driven by Playwright against ``python app.py``.

Screenshots go to test-artifacts/browser/ for a person to look at. Without /usr/bin/chromium these tests fail (see
the ``chromium`` fixture in conftest.py); ``-m "not browser"`` leaves them out.
"""

from __future__ import annotations

import pytest
from conftest import CHROMIUM_ARGS, PATIENCE, make_tiny_config, perturb, seeded_init, wait_for
from test_app_server import ROOT, serving_app

from ddpm_app.model_folder import DiffusionConfig, save_pretrained
from ddpm_app.models import UNet
from ddpm_app.schedule import ScheduleConfig

SHOTS = ROOT / "test-artifacts" / "browser"
PHOTO = ROOT / "ddpm_app" / "assets" / "portrait.png"
T = 1000  # DDPM steps: long enough (seconds) to watch previews arrive and to stop a run part-way
PATIENCE_MS = PATIENCE * 1000  # Playwright's waits, as a guard against a hang only

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    config = DiffusionConfig(make_tiny_config(image_size=32, base_channels=32), ScheduleConfig(timesteps=T),
                             training={"dataset": "noise"})
    save_pretrained(perturb(seeded_init(lambda: UNet(config.model))), config, root / "weights" / "faces")
    with serving_app(root / "weights", root / "app.log") as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def open_app(browser, url: str, width: int = 1280):
    page = browser.new_page(viewport={"width": width, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.get_by_role("button", name="Generate", exact=True).wait_for(timeout=PATIENCE_MS)
    return page, errors


def image_src(block) -> str | None:
    img = block.locator("img")
    return img.first.get_attribute("src") if img.count() else None


def test_forward_tab_upload_and_t_slider(browser, server):
    page, errors = open_app(browser, server)
    page.get_by_role("tab", name="Forward").click()
    page.locator("input[type=file]").first.set_input_files(str(PHOTO))
    numbers = page.locator("#fwd-numbers")
    numbers.get_by_text("noise seed").wait_for(timeout=PATIENCE_MS)
    x_t = page.locator("#fwd-xt")
    x_t.locator("img").wait_for(timeout=PATIENCE_MS)
    before = image_src(x_t)
    page.screenshot(path=SHOTS / "forward_photo.png", full_page=True)

    page.locator("#t-slider input[type=range]").focus()
    page.keyboard.press("End")  # t = T − 1
    numbers.get_by_text(f"t = {T - 1}", exact=True).wait_for(timeout=PATIENCE_MS)
    page.wait_for_function("([el, old]) => { const i = el.querySelector('img'); return i && i.src !== old; }",
                           arg=[x_t.element_handle(), before], timeout=PATIENCE_MS)
    assert image_src(x_t) != before
    page.screenshot(path=SHOTS / "forward_t_end.png", full_page=True)
    assert not errors, errors


def test_generate_streams_previews_and_stop_keeps_frames(browser, server):
    page, errors = open_app(browser, server)
    page.get_by_text("DDPM (all T steps)").click()
    page.get_by_role("button", name="Generate", exact=True).click()
    progress = page.locator("#gen-status progress")
    seen: set[str] = set()

    def step() -> str | None:  # noting each step shown on the way
        value = progress.first.get_attribute("value") if progress.count() else None
        seen.add(value)
        return value

    wait_for(lambda: page.locator("#gen-status").get_by_text("Done").count(), "the run to finish", poll=0.05,
             progress=step)
    shown = sorted(seen - {None})
    assert len(set(shown) - {str(T)}) >= 2, f"expected several streamed previews before the end, saw {shown}"
    assert image_src(page.locator("#gen-xt")) and image_src(page.locator("#gen-x0")), "no images shown"
    page.screenshot(path=SHOTS / "generate_done.png", full_page=True)

    # a second run, stopped part-way: the frames tab shows what was computed
    page.get_by_role("button", name="Generate", exact=True).click()
    page.wait_for_function(f"() => document.querySelector('#gen-status progress')?.value < {T}", timeout=PATIENCE_MS)
    page.get_by_role("button", name="Stop", exact=True).first.click()
    page.get_by_role("tab", name="Frames").click()
    page.get_by_role("button", name="Next ▶").click()  # the scrubber renders the stored frames
    page.locator("#frame-label").get_by_text("stopped after").wait_for(timeout=PATIENCE_MS)
    page.screenshot(path=SHOTS / "frames_after_stop.png", full_page=True)
    assert not errors, errors


def test_phone_width_layout(browser, server):
    page, errors = open_app(browser, server, width=400)
    tabs = page.get_by_role("tab")  # nine tabs: those that do not fit on the line are under "More tabs"
    assert tabs.count() == 9 or (tabs.count() >= 3 and page.get_by_role("button", name="More tabs").count())
    page.get_by_role("tab", name="Forward").click()
    page.locator("input[type=file]").first.set_input_files(str(PHOTO))
    page.locator("#fwd-numbers").get_by_text("noise seed").wait_for(timeout=PATIENCE_MS)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 400, f"the page scrolls sideways on a phone ({width} px wide)"
    page.screenshot(path=SHOTS / "phone_forward.png", full_page=True)
    assert not errors, errors
