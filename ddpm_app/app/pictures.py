"""Model tensors as pictures for the browser: grids, noise, labelled strips."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ..image import from_uint8, grid, to_numpy


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


def label_font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def labelled_strip(images: Sequence[Tensor] | Tensor, labels: Sequence[str], min_size: int = 96) -> np.ndarray:
    """Images (each (C, H, W), float in [−1, 1] or uint8) side by side, each labelled underneath → (H', W', 3).
    Small images are enlarged (nearest neighbour) to at least ``min_size`` pixels so the labels stay legible."""
    tiles = [Image.fromarray(picture(x, nrow=1)).convert("RGB") for x in images]
    scale = max(1, math.ceil(min_size / tiles[0].height))
    w, h = tiles[0].width * scale, tiles[0].height * scale
    pad, text_h = 2, 16
    out = Image.new("RGB", (len(tiles) * (w + pad) - pad, h + text_h + 2), "white")
    draw, font = ImageDraw.Draw(out), label_font(13)
    for i, (tile, label) in enumerate(zip(tiles, labels)):
        out.paste(tile.resize((w, h), Image.NEAREST), (i * (w + pad), 0))
        draw.text((i * (w + pad) + w // 2, h + 2), label, fill="black", font=font, anchor="ma")
    return np.asarray(out)
