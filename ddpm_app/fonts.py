"""The fonts pictures and plots write in: DejaVu Sans, which matplotlib ships and which has every symbol the labels
use (Greek, x̂₀'s combining hat, subscripts), and for Chinese, which it lacks, Noto Sans CJK SC from the
``noto-cjk-sans-otc`` package (requirements.txt), so a fresh machine or a Space draws Chinese without fetching
anything.

Pillow has no font fallback: :func:`draw_text` splits a text into runs of Chinese and of everything else and draws
each run in its font. Matplotlib falls back glyph by glyph when a text's family lists both fonts
(:func:`set_plot_fonts`), except in mathtext, which sets the words outside ``$…$`` in the first font alone: a text
that mixes Chinese with ``$…$`` is set in the CJK font (math keeps its own fonts). English texts are left as they
were.
"""

from __future__ import annotations

import re
from functools import lru_cache

from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import ImageDraw, ImageFont

LATIN_FAMILY = "DejaVu Sans"
CJK_FAMILY = "Noto Sans CJK SC"  # the Simplified Chinese face of the Noto Sans CJK collection
CJK_FACE = 2  # its index in NotoSansCJK-Regular.ttc (JP, KR, SC, TC, HK, then the Mono faces)
# CJK radicals…ideographs, compatibility ideographs, vertical and fullwidth forms (，：（）)
CJK_CHARACTERS = re.compile(r"[\u2e80-\u9fff\uf900-\ufaff\ufe10-\ufe1f\ufe30-\ufe4f\uff00-\uffef]")


def has_cjk(text: str) -> bool:
    return CJK_CHARACTERS.search(text) is not None


def runs(text: str) -> list[tuple[str, bool]]:
    """``text`` cut into maximal runs, each with whether it is Chinese: "x_t 在 t = 5" → [("x_t ", False),
    ("在", True), (" t = 5", False)]."""
    return [(m.group(), has_cjk(m.group())) for m in re.finditer(f"(?:{CJK_CHARACTERS.pattern})+|"
                                                                 f"(?:(?!{CJK_CHARACTERS.pattern}).)+", text, re.S)]


@lru_cache(maxsize=1)
def cjk_font_path() -> str:
    from noto_cjk_sans_otc import FONT_PATH

    return str(FONT_PATH)


@lru_cache(maxsize=1)
def latin_font_path() -> str:
    """DejaVu Sans, as matplotlib ships it (Pillow's built-in font draws η as a box)."""
    from matplotlib import font_manager

    return font_manager.findfont(font_manager.FontProperties(family=LATIN_FAMILY), fallback_to_default=False)


@lru_cache(maxsize=16)
def pillow_font(size: int, cjk: bool = False) -> ImageFont.FreeTypeFont:
    if cjk:
        return ImageFont.truetype(cjk_font_path(), size, index=CJK_FACE)
    return ImageFont.truetype(latin_font_path(), size)


def text_width(text: str, size: int) -> float:
    """How wide :func:`draw_text` draws ``text`` at ``size``, in pixels."""
    return sum(pillow_font(size, cjk).getlength(part) for part, cjk in runs(text))


def draw_text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, size: int, fill: str = "black",
              centred: bool = False) -> None:
    """``text`` with its top at y and its left edge (or, ``centred``, its middle) at x, each run in its font.
    A text without Chinese is one call in DejaVu Sans, exactly as before there were two fonts."""
    x, y = xy
    parts = runs(text)
    if not any(cjk for _, cjk in parts):
        draw.text((x, y), text, fill=fill, font=pillow_font(size), anchor="ma" if centred else "la")
        return
    if centred:
        x -= text_width(text, size) / 2
    baseline = y + max(pillow_font(size, cjk).getmetrics()[0] for _, cjk in parts)
    for part, cjk in parts:
        font = pillow_font(size, cjk)
        draw.text((x, baseline), part, fill=fill, font=font, anchor="ls")
        x += font.getlength(part)


@lru_cache(maxsize=1)
def _registered() -> str:
    """The CJK family, added to matplotlib's font list (once)."""
    from matplotlib import font_manager

    font_manager.fontManager.addfont(cjk_font_path())
    return CJK_FAMILY


def set_plot_fonts(fig: Figure) -> None:
    """Let the texts of ``fig`` that hold Chinese draw it (call before drawing): DejaVu Sans falling back to the CJK
    font glyph by glyph, or the CJK font alone for a text with ``$…$`` math. Other texts are not touched."""
    for item in fig.findobj(Text):
        content = item.get_text()
        if has_cjk(content):
            family = _registered()
            item.set_fontfamily([family] if "$" in content else [LATIN_FAMILY, family])
