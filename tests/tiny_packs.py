"""Tiny data packs written on the fly: zips laid out like utkface-64.zip and emoji-64.zip (train/ and test/)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

UTK_TRAIN = [f"train/{age}_{gender}_{race}_2017010{i % 10}1200000{i:02d}.jpg"
             for i, (age, gender, race) in enumerate([(3, 0, 0), (15, 1, 1), (25, 0, 2), (33, 1, 3), (45, 0, 4),
                                                       (70, 1, 0), (8, 1, 1), (22, 0, 0), (28, 1, 2), (51, 0, 3),
                                                       (64, 1, 0), (36, 0, 1)])]
UTK_TEST = [f"test/{age}_{gender}_{race}_2017011{i % 10}1300000{i:02d}.jpg"
            for i, (age, gender, race) in enumerate([(4, 1, 0), (18, 0, 2), (27, 1, 1), (38, 0, 0), (55, 1, 3),
                                                      (80, 0, 4)])]
EMOJI_TRAIN = [f"train/{vendor}-1f6{i:02x}.png" for vendor in ("google", "twitter") for i in range(5)]
EMOJI_TEST = [f"test/google-1f9{i:02x}.png" for i in range(4)]


def picture(seed: int, size: int = 64) -> Image.Image:
    """A smooth random colour blob picture, so JPEG keeps it recognisable."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.zeros((size, size, 3))
    for c in range(3):
        cx, cy, r = rng.uniform(0.2, 0.8, 3)
        img[..., c] = 255 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (0.1 + 0.2 * r))
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def write_pack(path: Path, names: list[str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for i, name in enumerate(names):
            buf = io.BytesIO()
            picture(i).save(buf, format="JPEG" if name.endswith(".jpg") else "PNG")
            zf.writestr(name, buf.getvalue())
    return path


def utkface_pack(directory: Path) -> Path:
    return write_pack(directory / "utk-tiny.zip", UTK_TRAIN + UTK_TEST)


def emoji_pack(directory: Path) -> Path:
    return write_pack(directory / "emoji-tiny.zip", EMOJI_TRAIN + EMOJI_TEST)
