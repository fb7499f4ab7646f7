"""Draws the example pictures shipped with the app (python -m ddpm_app.assets.draw_examples). No downloads."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

SIZE = 128
HERE = Path(__file__).parent


def gradient(top: tuple[int, int, int], bottom: tuple[int, int, int], size: int = SIZE) -> Image.Image:
    img = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(img)
    for y in range(size):
        a = y / (size - 1)
        draw.line([(0, y), (size, y)], fill=tuple(round(t + (b - t) * a) for t, b in zip(top, bottom)))
    return img


def portrait() -> Image.Image:
    img = gradient((120, 150, 190), (60, 80, 120))
    d = ImageDraw.Draw(img)
    d.ellipse([22, 96, 106, 160], fill=(70, 90, 140))  # shoulders
    d.rectangle([54, 80, 74, 104], fill=(214, 170, 140))  # neck
    d.ellipse([30, 14, 98, 60], fill=(70, 45, 30))  # hair
    d.ellipse([36, 26, 92, 96], fill=(224, 180, 150))  # face
    d.chord([34, 16, 94, 56], 180, 360, fill=(70, 45, 30))  # fringe
    for x in (50, 78):
        d.ellipse([x - 6, 50, x + 6, 58], fill="white")
        d.ellipse([x - 3, 51, x + 3, 57], fill=(60, 40, 30))
        d.line([(x - 7, 45), (x + 6, 44)], fill=(70, 45, 30), width=2)
    d.line([(64, 58), (61, 72), (66, 73)], fill=(180, 130, 110), width=2)  # nose
    d.arc([52, 70, 76, 86], 20, 160, fill=(170, 70, 70), width=3)  # smile
    return img.filter(ImageFilter.GaussianBlur(0.6))


def landscape() -> Image.Image:
    img = gradient((90, 160, 230), (200, 225, 245))
    d = ImageDraw.Draw(img)
    d.ellipse([86, 14, 112, 40], fill=(255, 220, 90))  # sun
    d.polygon([(0, 86), (30, 48), (58, 80), (84, 40), (128, 84), (128, 128), (0, 128)], fill=(110, 120, 140))
    d.polygon([(24, 56), (30, 48), (37, 56)], fill="white")
    d.polygon([(77, 50), (84, 40), (92, 50)], fill="white")
    for i in range(4):  # rolling hills
        y0 = 86 + i * 10
        pts = [(x, y0 + 6 * math.sin(x / 14 + i)) for x in range(0, SIZE + 8, 8)]
        d.polygon(pts + [(SIZE, SIZE), (0, SIZE)], fill=(60 + 20 * i, 150 - 10 * i, 60))
    d.rectangle([24, 84, 28, 100], fill=(90, 60, 30))
    d.ellipse([14, 66, 38, 90], fill=(40, 110, 50))
    return img


def shapes() -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE), (245, 240, 230))
    d = ImageDraw.Draw(img)
    d.rectangle([12, 14, 58, 60], fill=(220, 60, 60))
    d.ellipse([66, 10, 118, 62], fill=(50, 110, 210))
    d.polygon([(16, 116), (40, 70), (64, 116)], fill=(250, 190, 40))
    d.regular_polygon((94, 94, 24), 6, fill=(60, 170, 110))
    return img


def smiley() -> Image.Image:
    img = gradient((40, 40, 90), (20, 20, 50))
    d = ImageDraw.Draw(img)
    d.ellipse([14, 14, 114, 114], fill=(255, 205, 60), outline=(200, 140, 20), width=3)
    d.ellipse([40, 40, 54, 60], fill=(60, 40, 20))
    d.ellipse([74, 40, 88, 60], fill=(60, 40, 20))
    d.arc([34, 50, 94, 96], 20, 160, fill=(60, 40, 20), width=5)
    return img


EXAMPLES = {"portrait": portrait, "landscape": landscape, "shapes": shapes, "smiley": smiley}


def main() -> None:
    for name, draw in EXAMPLES.items():
        draw().save(HERE / f"{name}.png", optimize=True)


if __name__ == "__main__":
    main()
