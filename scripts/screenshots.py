"""Screenshots of every tab of the app at desktop and phone width, for the README: ``docs/app/<tab>-<width>.png``.

    python scripts/screenshots.py                 # starts app.py on weights/ and drives Debian's chromium
    python scripts/screenshots.py --url http://127.0.0.1:7860/ --out /tmp/shots

Each tab is shown in use: Generate after a DDIM run with ε̂ shown, Frames on that run, Forward with the portrait
example, Denoise after a run from the noised portrait, Model with the faces model. The pictures are saved as
palette PNGs (256 colours) to keep them small.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "ddpm_app" / "assets" / "portrait.png"
WIDTHS = (1280, 400)
TABS = ("Generate", "Frames", "Forward", "Denoise", "Model")

sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run from anywhere: the package and the test helpers
from conftest import open_tab  # noqa: E402  (the browser tests' way through "More tabs")


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


def tour(browser, url: str, width: int, out: Path) -> None:
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.goto(url)
    page.get_by_role("button", name="Generate", exact=True).wait_for(timeout=120_000)

    page.get_by_text("Show predicted noise ε̂").click()
    page.get_by_role("button", name="Generate", exact=True).click()
    page.locator("#gen-status").get_by_text("Done").wait_for(timeout=300_000)
    shoot(page, out / f"generate-{width}.png")

    open_tab(page, "Frames")
    page.locator("#frame-label").get_by_text("finished").wait_for(timeout=60_000)
    shoot(page, out / f"frames-{width}.png")

    open_tab(page, "Forward")
    page.locator("input[type=file]").first.set_input_files(str(PHOTO))
    page.locator("#fwd-numbers").get_by_text("noise seed").wait_for(timeout=60_000)
    page.locator("#fwd-strip img").wait_for(timeout=60_000)
    shoot(page, out / f"forward-{width}.png")

    open_tab(page, "Denoise")
    page.get_by_role("button", name="Denoise", exact=True).click()
    page.locator("#sd-status").get_by_text("Done").wait_for(timeout=300_000)
    shoot(page, out / f"denoise-{width}.png")

    open_tab(page, "Model")
    page.locator("#model-summary table").wait_for(timeout=60_000)
    samples = page.locator("#model-samples img")
    samples.scroll_into_view_if_needed()  # a lazy image loads once in view
    samples.evaluate("img => img.decode()")
    shoot(page, out / f"model-{width}.png")
    page.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="an app already running (default: start app.py on --weights)")
    p.add_argument("--weights", type=Path, default=ROOT / "weights")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "app")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    args = p.parse_args(argv)
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(served(args.weights))
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, headless=True,
                                         args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            for width in WIDTHS:
                tour(browser, url, width, args.out)
            browser.close()


if __name__ == "__main__":
    main()
