"""Screenshots of every tab of the app at desktop and phone width, for the docs: ``docs/screens/<tab>-<width>.png``
(the Chinese page's are taken by ``tests/ui/test_browser_zh.py`` into ``docs/screens/zh/``).

    python scripts/screenshots.py                 # starts app.py on weights/ and drives Debian's chromium
    python scripts/screenshots.py --url http://127.0.0.1:7860/ --out /tmp/shots

Each tab is shown in use: Generate after a DDIM run (seed 7) with ε̂ shown, Frames on the step before the last of
that run again with clipping off, Compare with the first run pinned, Forward, Denoise, Training and Likelihood on
the portrait example, Interpolate after a run, the 2-D lab as it opens and Model with the faces model. The pictures
are saved as palette PNGs (256 colours) to keep them small.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "ddpm_app" / "assets" / "portrait.png"
WIDTHS = (1280, 400)
WAIT = 600_000  # ms: the shipped networks on a busy 2-core CPU
# the system's fonts and the plots' CJK font, so that the language switch's "中文" shows as a reader sees it
CJK_FONTS = ('<?xml version="1.0"?><fontconfig><include ignore_missing="yes">/etc/fonts/fonts.conf</include>'
             '<dir>{folder}</dir></fontconfig>')

sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run from anywhere: the package and the test helpers
from conftest import open_tab  # noqa: E402  (the browser tests' way through "More tabs")

from ddpm_app.fonts import cjk_font_path  # noqa: E402


@contextlib.contextmanager
def served(weights: Path):
    """``python app.py`` on a free localhost port until the block ends; yields its URL."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    weights = os.path.relpath(weights, ROOT)  # the Model tab shows the folder as given: weights/faces
    proc = subprocess.Popen([sys.executable, "app.py", "--weights", weights, "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"app.py exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait()


def shoot(page, path: Path) -> None:
    page.wait_for_timeout(800)  # let images and fonts settle
    page.screenshot(path=path, full_page=True)
    Image.open(path).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"{path}  {path.stat().st_size // 1024} KiB")


def settled(page) -> None:
    """Wait until no output is pending (Gradio's spinners and time bars gone)."""
    page.wait_for_function("() => !document.querySelector('.wrap.pending, .eta-bar')", timeout=WAIT)


def tour(browser, url: str, width: int, out: Path) -> None:
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.goto(url)
    page.get_by_role("button", name="Generate", exact=True).wait_for(timeout=120_000)

    page.get_by_text("Show predicted noise ε̂").click()
    page.get_by_label("Seed (−1 or blank = random)").first.fill("7")
    page.get_by_role("button", name="Generate", exact=True).click()
    page.locator("#gen-status").get_by_text("Done").wait_for(timeout=WAIT)
    shoot(page, out / f"generate-{width}.png")

    open_tab(page, "Compare")  # pin this run, then run it again with clipping off
    page.get_by_role("button", name="Pin this run (as A)").click()
    page.locator("#compare-caption").get_by_text("Pinned").wait_for(timeout=WAIT)
    open_tab(page, "Generate")
    page.get_by_label("Clip x̂₀ to [−1, 1]").first.uncheck()
    page.get_by_role("button", name="Generate", exact=True).click()

    open_tab(page, "Frames")
    page.locator("#frame-label").get_by_text("x̂₀ not clipped, seed 7 (finished)").wait_for(timeout=WAIT)
    page.get_by_role("button", name="◀ Previous").click()
    page.locator("#frame-label").get_by_text("step 49 of 50").wait_for(timeout=WAIT)
    page.locator("#frame-terms img").wait_for(timeout=WAIT)
    settled(page)
    shoot(page, out / f"frames-{width}.png")

    open_tab(page, "Compare")
    slider = page.locator("#compare-t input[type=range]")
    for _ in range(3):  # t = 1000 → 700, where DDIM-50 is at its step t = 715
        slider.press("PageDown")
    page.locator("#compare-caption").get_by_text("at t = 715").first.wait_for(timeout=WAIT)
    page.locator("#compare-image img").wait_for(timeout=WAIT)
    settled(page)
    shoot(page, out / f"compare-{width}.png")

    open_tab(page, "Forward")
    page.locator("#fwd-photo input[type=file]").set_input_files(str(PHOTO))
    page.locator("#fwd-numbers").get_by_text("noise seed").wait_for(timeout=WAIT)
    page.locator("#fwd-strip").scroll_into_view_if_needed()  # a lazy image far down a phone's page loads once near
    page.locator("#fwd-strip img").wait_for(timeout=WAIT)
    shoot(page, out / f"forward-{width}.png")

    open_tab(page, "Denoise")
    page.get_by_role("button", name="Denoise", exact=True).click()
    page.locator("#sd-status").get_by_text("Done").wait_for(timeout=WAIT)
    shoot(page, out / f"denoise-{width}.png")

    open_tab(page, "Training")  # the photo comes along from Forward
    page.locator("#train-numbers").get_by_text("noise seed").wait_for(timeout=WAIT)
    page.locator("#train-summary").get_by_text("held-out", exact=False).first.wait_for(timeout=WAIT)
    settled(page)
    shoot(page, out / f"training-{width}.png")

    open_tab(page, "Likelihood")
    page.get_by_role("button", name="Bits/dim of this photo").click()
    page.locator("#lk-status").get_by_text("Done").wait_for(timeout=WAIT)
    page.locator("#lk-verdict").get_by_text("Held-out average").first.wait_for(timeout=WAIT)
    shoot(page, out / f"likelihood-{width}.png")

    open_tab(page, "Interpolate")
    page.get_by_role("button", name="Interpolate", exact=True).click()
    page.locator("#interp-status").get_by_text("Done").wait_for(timeout=WAIT)
    shoot(page, out / f"interpolate-{width}.png")

    open_tab(page, "2-D lab")
    shoot(page, out / f"lab-{width}.png")

    open_tab(page, "Model")
    page.locator("#model-summary table").wait_for(timeout=WAIT)
    samples = page.locator("#model-samples img")
    samples.scroll_into_view_if_needed()  # a lazy image loads once in view
    samples.evaluate("img => img.decode()")
    shoot(page, out / f"model-{width}.png")
    page.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="an app already running (default: start app.py on --weights)")
    p.add_argument("--weights", type=Path, default=ROOT / "weights")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "screens")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--width", type=int, action="append", help=f"a page width in pixels (default: {WIDTHS})")
    args = p.parse_args(argv)
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(served(args.weights))
        fonts = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "fonts.conf"
        fonts.write_text(CJK_FONTS.format(folder=Path(cjk_font_path()).parent))
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, headless=True,
                                         args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
                                         env={**os.environ, "FONTCONFIG_FILE": str(fonts)})
            for width in args.width or WIDTHS:
                tour(browser, url, width, args.out)
            browser.close()


if __name__ == "__main__":
    main()
