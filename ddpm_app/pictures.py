"""Model tensors as pictures for the browser: grids, noise, labelled strips."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ddpm_app.fonts import draw_text, pillow_font, text_width
from ddpm_app.image import from_uint8, grid, to_numpy


def picture(x: Tensor, nrow: int | None = None) -> np.ndarray:
    """An image (C, H, W) or a batch (B, C, H, W), float in [−1, 1] or uint8, → one (H', W', C) uint8 grid."""
    if x.dtype == torch.uint8:
        x = from_uint8(x)
    if x.dim() == 3:
        x = x[None]
    return to_numpy(grid(x.float(), nrow=nrow))


def noise_picture(eps: Tensor, nrow: int | None = None) -> np.ndarray:
    """ε (≈ N(0, I)) shown as ε/2, so ±2σ spans the grey range."""
    return picture(eps / 2, nrow)


def label_font(size: int) -> ImageFont.FreeTypeFont:
    """The labels' font: DejaVu Sans (see :mod:`ddpm_app.fonts`, which adds a CJK font for Chinese)."""
    return pillow_font(size)


def fitting_size(text: str, size: int, width: int, smallest: int = 8) -> int:
    """``size``, or smaller (down to ``smallest``) until ``text`` fits in ``width`` pixels."""
    while size > smallest and text_width(text, size) > width:
        size -= 1
    return size


def labelled_strip(images: Sequence[Tensor] | Tensor, labels: Sequence[str], min_size: int = 96,
                   columns: int | None = None, font_size: int | None = None, title: str | None = None) -> np.ndarray:
    """Images (each (C, H, W), float in [−1, 1] or uint8) in rows of ``columns`` (all in one row by default),
    each labelled underneath → (H', W', 3). Small images are enlarged (nearest neighbour) to at least
    ``min_size`` pixels so the labels stay legible; the label font (by default) grows with them, so a 512-pixel
    strip is a slide figure, and ``title`` goes on top."""
    tiles = [Image.fromarray(picture(x, nrow=1)).convert("RGB") for x in images]
    columns = columns or len(tiles)
    rows = math.ceil(len(tiles) / columns)
    scale = max(1, math.ceil(min_size / tiles[0].height))
    w, h = tiles[0].width * scale, tiles[0].height * scale
    size = font_size or max(13, min(h // 16, 36))
    font = label_font(size)
    # room below the baseline too: the underscore of "x_0" sits there
    pad, text_h = (2, size + 6) if font_size else (max(2, size // 6), sum(font.getmetrics()) + 4)
    top = text_h + pad if title else 0
    cell_h = h + text_h
    out = Image.new("RGB", (min(columns, len(tiles)) * (w + pad) - pad, top + rows * cell_h), "white")
    draw = ImageDraw.Draw(out)
    if title:
        draw_text(draw, (out.width // 2, 0), title, size, centred=True)
    for i, (tile, label) in enumerate(zip(tiles, labels)):
        x, y = (i % columns) * (w + pad), top + (i // columns) * cell_h
        out.paste(tile.resize((w, h), Image.NEAREST), (x, y))
        draw_text(draw, (x + w // 2, y + h + 2), label, fitting_size(label, size, w), centred=True)
    return np.asarray(out)
