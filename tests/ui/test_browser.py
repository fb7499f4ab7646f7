"""The app in a real browser: headless Chromium (Debian's) driven by Playwright against ``python app.py``.

Screenshots go to test-artifacts/browser/ for a person to look at. Without /usr/bin/chromium these tests fail (see
the ``chromium`` fixture in conftest.py); ``-m "not browser"`` leaves them out.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from conftest import PATIENCE, make_tiny_config, open_tab, perturb, seeded_init, wait_for
from serving import ROOT, serving_app

from ddpm_app.diffusion.schedule import ScheduleConfig
from ddpm_app.io.model_folder import DiffusionConfig, save_pretrained
from ddpm_app.models import UNet
from ddpm_app.ui import forward

SHOTS = ROOT / "test-artifacts" / "browser"
SHOTS.mkdir(parents=True, exist_ok=True)
PHOTO = ROOT / "ddpm_app" / "assets" / "portrait.png"
LANDSCAPE = PHOTO.parent / "landscape.png"
T = 1000  # DDPM steps: long enough (seconds) to watch previews arrive and to stop a run part-way
PATIENCE_MS = PATIENCE * 1000  # Playwright's waits, as a guard against a hang only

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on two tiny models: faces (32×32, T = 1000), the one it starts with, and other (16×16, T = 50)."""
    root = tmp_path_factory.mktemp("browser")
    config = DiffusionConfig(make_tiny_config(image_size=32, base_channels=32), ScheduleConfig(timesteps=T),
                             training={"dataset": "noise"})
    save_pretrained(perturb(seeded_init(lambda: UNet(config.model))), config, root / "weights" / "faces")
    other = DiffusionConfig(make_tiny_config(), ScheduleConfig(timesteps=50), training={"dataset": "noise"})
    save_pretrained(perturb(seeded_init(lambda: UNet(other.model), seed=1), seed=1), other, root / "weights" / "other")
    with serving_app(root / "weights", root / "app.log") as (url, _):
        yield url


def open_app(browser, url: str, width: int = 1280):
    page = browser.new_page(viewport={"width": width, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.get_by_role("button", name="Generate", exact=True).wait_for(timeout=PATIENCE_MS)
    return page, errors


def wait_until_said(page, selector: str, word: str) -> None:
    """Wait for ``word`` in the element ``selector``; a time-out says what the element said instead."""
    try:
        page.locator(selector).get_by_text(word).wait_for(timeout=PATIENCE_MS)
    except PlaywrightTimeout:
        pytest.fail(f"{selector} did not say {word!r} in {PATIENCE} s; it says {page.locator(selector).inner_text()!r}")


def image_src(block) -> str | None:
    img = block.locator("img")
    return img.first.get_attribute("src") if img.count() else None


def test_forward_tab_upload_and_t_slider(browser, server):
    page, errors = open_app(browser, server)
    open_tab(page, "Forward")
    page.locator("input[type=file]").first.set_input_files(str(PHOTO))
    numbers = page.locator("#fwd-numbers")
    numbers.get_by_text("noise seed").wait_for(timeout=PATIENCE_MS)
    x_t = page.locator("#fwd-xt")
    x_t.locator("img").wait_for(timeout=PATIENCE_MS)
    before = image_src(x_t)
    page.screenshot(path=SHOTS / "forward_photo.png", full_page=True)

    page.locator("#t-slider input[type=range]").focus()
    page.keyboard.press("End")  # the paper's t = T
    numbers.get_by_text(f"t = {T}", exact=True).wait_for(timeout=PATIENCE_MS)
    page.wait_for_function("([el, old]) => { const i = el.querySelector('img'); return i && i.src !== old; }",
                           arg=[x_t.element_handle(), before], timeout=PATIENCE_MS)
    assert image_src(x_t) != before
    page.screenshot(path=SHOTS / "forward_t_end.png", full_page=True)
    assert not errors, errors


def test_forward_tab_example_photo(browser, server):
    """An example photo reaches the photo input as a file in Gradio's cache, which the input reads."""
    page, errors = open_app(browser, server)
    open_tab(page, "Forward")
    page.locator("button.gallery-item:visible").first.click()
    page.locator("#fwd-numbers").get_by_text("noise seed").wait_for(timeout=PATIENCE_MS)
    page.locator("#fwd-xt img").wait_for(timeout=PATIENCE_MS)
    page.screenshot(path=SHOTS / "forward_example.png", full_page=True)
    assert not page.get_by_text("other paths are not read").count()
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
    open_tab(page, "Frames")
    # no Next needed: after Stop the slider and the pictures are at the last stored frame, numbered as the label
    page.locator("#frame-label").get_by_text("stopped after").wait_for(timeout=PATIENCE_MS)
    label = page.locator("#frame-label")
    label.get_by_text(re.compile(r"frame (\d+)/\1:")).wait_for(timeout=PATIENCE_MS)  # the last stored frame
    count = re.search(r"frame (\d+)/", label.inner_text()).group(1)
    slider = page.locator("#frame-slider input[type=range]")
    assert slider.input_value() == slider.get_attribute("max") == count, (slider.input_value(), label.inner_text())
    page.wait_for_timeout(1000)  # and nothing moves it away afterwards
    assert re.search(rf"frame {count}/{count}:", label.inner_text()) and slider.input_value() == count
    page.screenshot(path=SHOTS / "frames_after_stop.png", full_page=True)
    assert not errors, errors


def test_a_photo_dropped_into_forward_is_carried_to_denoise_training_and_likelihood(browser, server):
    """Forward's photo reaches Denoise's start, and Training's and Likelihood's photo inputs when they are opened;
    a photo the user put into one of them stays there when Forward gets another."""
    page, errors = open_app(browser, server)
    open_tab(page, "Forward")
    page.locator("input[type=file]").first.set_input_files(str(PHOTO))
    page.locator("#fwd-numbers").get_by_text("noise seed").wait_for(timeout=PATIENCE_MS)
    open_tab(page, "Denoise")
    page.locator("#sd-start img").wait_for(timeout=PATIENCE_MS)
    open_tab(page, "Training")
    assert "portrait" in page.locator("#train-photo img").get_attribute("src", timeout=PATIENCE_MS)
    page.locator("#train-numbers").get_by_text("noise seed").wait_for(timeout=PATIENCE_MS)  # and used at once
    open_tab(page, "Likelihood")
    assert "portrait" in page.locator("#lk-photo img").get_attribute("src", timeout=PATIENCE_MS)
    page.get_by_role("button", name="Bits/dim of this photo").click()
    wait_until_said(page, "#lk-status", "Done")
    page.screenshot(path=SHOTS / "carried_likelihood.png", full_page=True)

    page.locator("#lk-photo button[aria-label='Remove Image']").click()  # the user's own photo there instead
    page.locator("#lk-photo input[type=file]").set_input_files(str(LANDSCAPE))
    page.locator("#lk-photo img").wait_for(timeout=PATIENCE_MS)
    open_tab(page, "Forward")
    page.locator("button.gallery-item:visible").nth(2).click()  # another example: shapes
    page.locator("#fwd-numbers").get_by_text("noise seed").wait_for(timeout=PATIENCE_MS)
    open_tab(page, "Training")
    page.wait_for_function("() => document.querySelector('#train-photo img')?.src.includes('shapes')",
                           timeout=PATIENCE_MS)  # it held Forward's last photo: it takes the new one
    open_tab(page, "Likelihood")
    page.wait_for_timeout(1000)  # time for a carry that should not come
    assert "landscape" in page.locator("#lk-photo img").get_attribute("src")
    assert not errors, errors


def test_a_model_switch_says_what_it_does_and_frames_names_the_runs_model(browser, server):
    """Picking another model: the header says at once that it is loading, then names the new model; the slider
    ranges follow it; Frames still shows the earlier run and names its model."""
    page, errors = open_app(browser, server)
    page.get_by_role("button", name="Generate", exact=True).click()  # DDIM on faces
    wait_until_said(page, "#gen-status", "Done")
    header = page.locator("#page-header")
    header.evaluate("""el => { window.headerSaid = [];
        new MutationObserver(() => window.headerSaid.push(el.innerText))
            .observe(el, {subtree: true, childList: true, characterData: true}); }""")
    open_tab(page, "Model")
    page.get_by_label("Models in the weights folder").click()
    page.get_by_role("option", name="other").click()
    header.get_by_text("Model: other —").wait_for(timeout=PATIENCE_MS)
    said = page.evaluate("window.headerSaid")
    assert any(re.search(r"faces → (loading|switching to) other", text) for text in said), said
    page.locator("#model-summary").get_by_text("Loaded other").wait_for(timeout=PATIENCE_MS)
    page.wait_for_function(  # the loading note goes once the switch has finished (an event after the summary's)
        "() => document.querySelector('#model-note').innerText.trim() === ''", timeout=PATIENCE_MS)
    open_tab(page, "Forward")
    page.locator("#t-slider").get_by_text("50").first.wait_for(timeout=PATIENCE_MS)  # T = 50: the paper's t in 1…50
    open_tab(page, "Frames")
    label = page.locator("#frame-label")
    label.get_by_text("not the one selected now").wait_for(timeout=PATIENCE_MS)
    assert "Model: faces, not the one selected now (other)" in label.inner_text()
    page.screenshot(path=SHOTS / "frames_after_switch.png", full_page=True)
    assert not errors, errors


PLOT_TEXT = 10 * 100 / 72  # px: the smallest text of the app's plots, 10 pt at 100 dpi


def shown_scale(img) -> float:
    """How much the browser shrinks (or enlarges) a picture: its width on the page over its own."""
    return img.evaluate("img => img.getBoundingClientRect().width / img.naturalWidth")


def test_phone_width_layout(browser, server):
    page, errors = open_app(browser, server, width=400)
    tabs = page.get_by_role("tab")  # all ten in view, wrapped onto more lines: none kept under a menu
    assert tabs.count() == 10 and not page.get_by_role("button", name="More tabs").count()
    for i in range(tabs.count()):
        box = tabs.nth(i).bounding_box()
        assert tabs.nth(i).is_visible() and 0 <= box["x"] and box["x"] + box["width"] <= 400, tabs.nth(i).inner_text()
    open_tab(page, "Forward")
    page.locator("input[type=file]").first.set_input_files(str(PHOTO))
    page.locator("#fwd-numbers").get_by_text("noise seed").wait_for(timeout=PATIENCE_MS)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 400, f"the page scrolls sideways on a phone ({width} px wide)"
    # t right above x_t, so x_t stays in view while t moves
    slider, x_t = page.locator("#t-slider").bounding_box(), page.locator("#fwd-xt").bounding_box()
    gap = x_t["y"] - (slider["y"] + slider["height"])
    assert 0 <= gap < 60, f"x_t is {gap:.0f} px below the t slider"
    # the strip's captions drawn at a legible size once the strip is scaled to the phone's width
    strip = page.locator("#fwd-strip img")
    page.locator("#fwd-strip").scroll_into_view_if_needed()  # the browser loads a picture far below only then
    strip.wait_for(timeout=30_000)
    assert forward.STRIP_FONT_SIZE * shown_scale(strip) >= 10, "the strip's captions are too small on a phone"
    assert PLOT_TEXT * shown_scale(page.locator("#fwd-plot img")) >= 8.5, "the schedule plot's text is too small"
    page.screenshot(path=SHOTS / "phone_forward.png", full_page=True)
    open_tab(page, "Training")  # the photo comes along: its step and loss curve
    page.locator("#train-curve").scroll_into_view_if_needed()
    curve = page.locator("#train-curve img")
    curve.wait_for(timeout=PATIENCE_MS)
    assert PLOT_TEXT * shown_scale(curve) >= 8.5, "the loss curve's text is too small on a phone"

    open_tab(page, "Generate")  # a DDPM step's equation, the widest, fits the phone's width
    page.get_by_text("DDPM (all T steps)").click()
    page.get_by_role("button", name="Generate", exact=True).click()
    open_tab(page, "Frames")
    page.locator("#frame-label").get_by_text(re.compile(r"DDPM, 1000 steps.*finished")).wait_for(timeout=PATIENCE_MS)
    page.get_by_role("button", name="◀ Previous").click()
    page.locator("#frame-label").get_by_text("step 999 of 1000").wait_for(timeout=PATIENCE_MS)
    widths = page.locator("#frame-update .katex-display").evaluate_all("els => els.map(e => [e.scrollWidth, e.clientWidth])")
    assert widths and all(scroll <= client for scroll, client in widths), f"an equation is cut off: {widths}"

    open_tab(page, "Model")
    table = page.locator("#model-summary table")
    table.wait_for(timeout=30_000)
    assert table.bounding_box()["width"] >= 300, "the model table is squeezed"
    lines = table.locator("td:first-child").evaluate_all("""cells => cells.map(td => {
        const range = document.createRange(); range.selectNodeContents(td);
        return new Set([...range.getClientRects()].map(r => Math.round(r.top))).size; })""")
    assert lines and max(lines) == 1, f"property names break over lines: {lines}"
    height = page.evaluate("document.documentElement.scrollHeight")
    assert height < 2200, f"the Model tab is {height} px tall on a phone"
    page.screenshot(path=SHOTS / "phone_model.png", full_page=True)
    assert not errors, errors


# -- waiting, exports -----------------------------------------------------------------------------------------


def test_a_second_user_sees_the_queue_position_while_waiting(browser, server):
    first, errors_1 = open_app(browser, server)
    second, errors_2 = open_app(browser, server)
    first.get_by_text("DDPM (all T steps)").click()
    first.get_by_role("button", name="Generate", exact=True).click()
    first.wait_for_function("() => document.querySelector('#gen-status progress')?.value < 500", timeout=60_000)
    second.get_by_role("button", name="Generate", exact=True).click()
    queue = second.locator("#gen-status [data-testid=status-tracker]").get_by_text(re.compile(r"queue: \d+/\d+"))
    queue.wait_for(timeout=60_000)
    tracker = second.locator("#gen-status [data-testid=status-tracker]")
    # drawn, not hidden: the tracker fades in, so wait for the fade rather than read its opacity mid-way
    second.wait_for_function("""() => [...document.querySelectorAll('#gen-status [data-testid=status-tracker]')]
        .some(e => parseFloat(getComputedStyle(e).opacity) > 0.5)""", timeout=10_000)
    assert re.search(r"queue: 1/\d+ \| [\d.]+(/[\d.]+)?s", tracker.inner_text()), tracker.inner_text()
    second.screenshot(path=SHOTS / "second_user_waiting.png")
    first.get_by_role("button", name="Stop", exact=True).first.click()
    second.locator("#gen-status").get_by_text("Done").wait_for(timeout=600_000)
    assert not errors_1 and not errors_2, errors_1 + errors_2


WATCH_TRACKER = """el => {
    window.trackerShown = false;
    const look = () => { const t = el.querySelector('[data-testid=status-tracker]');
                         if (t && !t.classList.contains('hide') && getComputedStyle(t).opacity > 0.5) window.trackerShown = true; };
    new MutationObserver(look).observe(el, {subtree: true, childList: true, attributes: true, characterData: true});
}"""


def test_export_shows_progress_is_named_by_the_run_and_a_new_run_clears_it(browser, server):
    page, errors = open_app(browser, server)
    page.get_by_role("button", name="Generate", exact=True).click()  # DDIM, 50 steps
    page.locator("#gen-status").get_by_text("Done").wait_for(timeout=600_000)
    seed = page.get_by_label("Seed used").input_value()
    open_tab(page, "Frames")
    download = page.locator("#export-file")
    download.evaluate(WATCH_TRACKER)
    page.get_by_role("button", name="Export GIF").click()
    name = f"ddim-50steps-eta0_seed{seed}.gif"
    download.locator(f'[aria-label="{name}"]').wait_for(timeout=600_000)
    assert page.evaluate("window.trackerShown"), "no progress was shown while the GIF was written"
    page.screenshot(path=SHOTS / "export_done.png", full_page=True)
    open_tab(page, "Generate")
    page.get_by_role("button", name="Generate", exact=True).click()
    open_tab(page, "Frames")
    download.locator(f'[aria-label="{name}"]').wait_for(state="detached", timeout=60_000)  # the old file is gone
    open_tab(page, "Generate")
    page.locator("#gen-status").get_by_text("Done").wait_for(timeout=600_000)
    assert not errors, errors


# -- layout -----------------------------------------------------------------------------------------------------

# For every picture shown: its label's box, the box of the picture drawn in it (object-fit: contain), the box of
# its buttons, and whether the label's text is cut off.
PICTURE_BOXES = """() => [...document.querySelectorAll('.ddpm-picture, .ddpm-photo')].filter(b => b.offsetParent && b.querySelector('img'))
  .map(b => {
    const box = r => r && {x: r.left, y: r.top, r: r.right, b: r.bottom};
    const label = b.querySelector('label[data-testid=block-label]:not(.sr-only)');
    const img = b.querySelector('img'), ir = img.getBoundingClientRect();
    const k = Math.min(ir.width / img.naturalWidth, ir.height / img.naturalHeight);
    const w = img.naturalWidth * k, h = img.naturalHeight * k;
    const drawn = {x: ir.left + (ir.width - w) / 2, y: ir.top + (ir.height - h) / 2,
                   r: ir.left + (ir.width + w) / 2, b: ir.top + (ir.height + h) / 2};
    const buttons = b.querySelector('.icon-button-wrapper');
    return {id: b.id || (label && label.innerText), label: label && box(label.getBoundingClientRect()),
            picture: drawn, buttons: buttons && box(buttons.getBoundingClientRect()),
            labelCut: !!label && label.scrollWidth > label.clientWidth + 1};
  })"""


def overlap(a: dict | None, b: dict | None) -> bool:
    return bool(a and b) and a["x"] < b["r"] - 1 and b["x"] < a["r"] - 1 and a["y"] < b["b"] - 1 and b["y"] < a["b"] - 1


def assert_labels_clear(page) -> None:
    """No picture's label covers its picture or runs under its buttons, and none is cut off."""
    boxes = page.evaluate(PICTURE_BOXES)
    assert boxes
    for p in boxes:
        assert not overlap(p["label"], p["picture"]), f"the label of {p['id']} covers its picture"
        assert not overlap(p["label"], p["buttons"]), f"the label of {p['id']} runs under its buttons"
        assert not p["labelCut"], f"the label of {p['id']} is cut off"


@pytest.mark.parametrize("width", [1280, 400])
def test_picture_labels_never_cover_pictures(browser, server, width):
    page, errors = open_app(browser, server, width=width)
    page.get_by_text("Show predicted noise ε̂").click()
    page.get_by_role("button", name="Generate", exact=True).click()
    page.locator("#gen-status").get_by_text("Done").wait_for(timeout=600_000)
    page.locator("#gen-eps img").wait_for(timeout=30_000)
    assert_labels_clear(page)
    open_tab(page, "Forward")
    page.locator("input[type=file]").first.set_input_files(str(PHOTO))
    page.locator("#fwd-numbers").get_by_text("noise seed").wait_for(timeout=PATIENCE_MS)
    page.locator("#fwd-strip").scroll_into_view_if_needed()  # the browser loads a picture far below only then
    page.locator("#fwd-strip img").wait_for(timeout=60_000)
    assert_labels_clear(page)  # also the photo's (its buttons beside it) and the schedule plot's
    page.screenshot(path=SHOTS / f"labels_{width}.png", full_page=True)
    assert not errors, errors
