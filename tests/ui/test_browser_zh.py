"""The app in Chinese in a real browser: headless Chromium (Debian's) with the locale zh-CN against ``python app.py``.

Every tab is photographed at 1280 and 400 pixels into docs/screens/zh/ for a person to look at; the switch turns
the page to English and back, and remembers the choice on the next visit. A reader's machine has Chinese fonts; a
bare test machine may have none, so this browser is given the one the plots use, from its package (a fontconfig
file that adds the package's folder to the system's fonts), and the screenshots show what a reader sees.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CHROMIUM_ARGS, PATIENCE, open_tab
from serving import ROOT, serving_tiny_model

from ddpm_app.fonts import cjk_font_path

SHOTS = ROOT / "docs" / "screens" / "zh"
PHOTO = ROOT / "ddpm_app" / "assets" / "portrait.png"
PATIENCE_MS = PATIENCE * 1000
TABS = {"generate": "生成", "lab": "二维实验", "frames": "逐帧", "forward": "加噪过程", "denoise": "去噪",
        "training": "训练", "likelihood": "似然", "compare": "对比", "interpolate": "插值", "model": "模型"}

pytestmark = [pytest.mark.browser, pytest.mark.slow]


FONTS_CONF = """<?xml version="1.0"?>
<!DOCTYPE fontconfig SYSTEM "urn:fontconfig:fonts.dtd">
<fontconfig>
  <include ignore_missing="yes">/etc/fonts/fonts.conf</include>
  <dir>{folder}</dir>
  <cachedir>{cache}</cachedir>
</fontconfig>
"""


@pytest.fixture(scope="module")
def browser(chromium, tmp_path_factory):
    """Headless Chromium (Debian's) driven by Playwright, with the CJK font of the ``noto-cjk-sans-otc`` package."""
    import os

    from playwright.sync_api import sync_playwright

    folder = tmp_path_factory.mktemp("fontconfig")
    conf = folder / "fonts.conf"
    conf.write_text(FONTS_CONF.format(folder=Path(cjk_font_path()).parent, cache=folder / "cache"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True,
                                    env={**os.environ, "FONTCONFIG_FILE": str(conf)})
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serving_tiny_model(tmp_path_factory.mktemp("browser_zh"), 50) as (url, _, _):
        yield url


def open_chinese(browser, url: str, width: int):
    """A fresh zh-CN browser context (nothing remembered) on the app, once the Chinese page is there."""
    context = browser.new_context(locale="zh-CN", viewport={"width": width, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.get_by_role("button", name="生成", exact=True).wait_for(timeout=PATIENCE_MS)
    page.locator("#language input[value='zh-CN']:checked").wait_for(timeout=PATIENCE_MS)
    return context, page, errors


@pytest.mark.parametrize("width", [1280, 400])
def test_every_tab_in_chinese(browser, server, width):
    SHOTS.mkdir(parents=True, exist_ok=True)
    context, page, errors = open_chinese(browser, server, width)
    # the model's header is written by the server in the page's language
    page.get_by_text("噪声调度，T = 50").first.wait_for(timeout=PATIENCE_MS)
    # a result in every tab that shows one: a run, a noised photo, a training step, a bound, a pinned run
    page.get_by_role("button", name="生成", exact=True).click()
    page.locator("#gen-status").get_by_text("完成").wait_for(timeout=PATIENCE_MS)
    open_tab(page, TABS["forward"])
    page.locator("button.gallery-item:visible").first.click()
    page.locator("#fwd-numbers").get_by_text("噪声种子").wait_for(timeout=PATIENCE_MS)
    open_tab(page, TABS["training"])
    page.locator("#training-tab button.gallery-item:visible").first.click()
    page.locator("#train-summary").get_by_text("你的图片").wait_for(timeout=PATIENCE_MS)
    open_tab(page, TABS["likelihood"])
    page.locator("#likelihood-tab button.gallery-item:visible").first.click()
    page.get_by_role("button", name="计算这张图片的 bits/dim").click()
    page.locator("#lk-status").get_by_text("完成").wait_for(timeout=PATIENCE_MS)
    open_tab(page, TABS["compare"])
    page.get_by_role("button", name="固定这次运行（作为 A）").click()
    page.locator("#compare-caption").get_by_text("已固定").wait_for(timeout=PATIENCE_MS)
    for key, name in TABS.items():
        open_tab(page, name)
        page.wait_for_timeout(400)  # the tab's pictures settle
        page.screenshot(path=SHOTS / f"{key}-{width}.png", full_page=True)
    # Gradio's footer links to the runs this browser saved (once there is one, on the next visit): in Chinese too
    page.reload()
    footer = page.locator("footer")
    footer.get_by_text("运行记录", exact=True).wait_for(timeout=PATIENCE_MS)
    assert "Runs" not in footer.inner_text()
    context.close()
    assert not errors, errors


def test_the_switch_turns_the_page_to_english_and_is_remembered(browser, server):
    context, page, errors = open_chinese(browser, server, 1280)
    page.locator("#language").get_by_text("English", exact=True).click()
    page.get_by_role("button", name="Generate", exact=True).wait_for(timeout=PATIENCE_MS)
    page.get_by_text("linear schedule, T = 50").first.wait_for(timeout=PATIENCE_MS)  # the server's words too
    page.reload()  # the next visit: English, though the browser says zh-CN
    page.get_by_role("button", name="Generate", exact=True).wait_for(timeout=PATIENCE_MS)
    assert page.locator("#language input[value='en']").is_checked() and page.title() == "DDPM step by step"
    page.locator("#language").get_by_text("简体中文", exact=True).click()
    page.get_by_role("button", name="生成", exact=True).wait_for(timeout=PATIENCE_MS)
    page.get_by_text("噪声调度，T = 50").first.wait_for(timeout=PATIENCE_MS)
    assert page.title() == "DDPM 逐步演示"
    context.close()
    assert not errors, errors
