"""Tensors ↔ pictures, and arbitrary user images turned into (3, size, size) tensors in [−1, 1]."""

import io
import random

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_app.image import ImageError, from_uint8, grid, load_image, save_grid, to_numpy, to_pil, to_uint8

SIZE = 16
WHITE, BLACK = 1.0, -1.0


def png_bytes(img: Image.Image, fmt: str = "PNG", **kwargs) -> io.BytesIO:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    buf.seek(0)
    return buf


def assert_valid(x: torch.Tensor, size: int = SIZE) -> None:
    assert x.shape == (3, size, size) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1


def uniform_colour(x: torch.Tensor) -> list[float]:
    """The single colour of a uniform image, checking that it is uniform."""
    flat = x.flatten(1)
    assert (flat.max(1).values - flat.min(1).values).max() < 1e-6
    return flat[:, 0].tolist()


# --- tensors ↔ pixels ------------------------------------------------------------------------------------

def test_uint8_round_trip():
    pixels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(2, 3, 16, 16)
    x = from_uint8(pixels)
    assert x.dtype == torch.float32
    assert x.min() == -1 and x.max() == 1
    assert torch.equal(to_uint8(x), pixels)


def test_to_uint8_clamps_and_rounds():
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 7.0]).view(1, 1, 5)
    assert to_uint8(x).flatten().tolist() == [0, 0, 128, 255, 255]  # 127.5 rounds half to even → 128


def test_to_pil_and_numpy():
    x = torch.zeros(3, 4, 5)
    x[0] = 1.0  # red channel full
    img = to_pil(x)
    assert img.size == (5, 4) and img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 128, 128)


def test_to_numpy_and_to_pil_put_each_value_at_its_row_column_and_channel():
    """Pixel (channel c, row h, column w) = 100·c + 10·h + w lands at arr[h, w, c] and PIL's (w, h): fails on a
    transposed image (rows ↔ columns) or reversed channels (BGR)."""
    pixels = torch.tensor([[[100 * c + 10 * h + w for w in range(3)] for h in range(2)] for c in range(3)])
    x = from_uint8(pixels.to(torch.uint8))
    expected = np.array([[[0, 100, 200], [1, 101, 201], [2, 102, 202]],
                         [[10, 110, 210], [11, 111, 211], [12, 112, 212]]], dtype=np.uint8)  # (H, W, C) by hand
    arr = to_numpy(x)
    assert arr.dtype == np.uint8
    np.testing.assert_array_equal(arr, expected)
    img = to_pil(x)
    assert img.getpixel((2, 1)) == (12, 112, 212) and img.getpixel((0, 1)) == (10, 110, 210)


def test_grid_and_save_grid(tmp_path):
    batch = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    g = grid(batch, nrow=3, padding=2)
    assert g.shape == (3, 2 + 2 * (8 + 2), 2 + 3 * (8 + 2))
    # row-major: image i at row i // 3, column i % 3, each 8×8 tile 10 px from the next (fails if laid out by column)
    for i in range(5):
        top, left = 2 + (i // 3) * 10, 2 + (i % 3) * 10
        torch.testing.assert_close(g[:, top:top + 8, left:left + 8], batch[i])
    assert torch.all(g[:, 0, :] == 1.0)  # white padding
    assert torch.all(g[:, 12:20, 22:30] == 1.0)  # the sixth place, left empty, is white too
    path = save_grid(batch, tmp_path / "sub" / "grid.png", nrow=3)
    assert Image.open(path).size == (32, 22)
    # the file holds the grid rounded to 8 bits as to_uint8 states: (v + 1)·127.5 in float32, rounded half to even
    # (in float64 a value within float32 rounding of a half level can round the other way)
    expected = np.rint((g.numpy() + np.float32(1)) * np.float32(127.5)).astype(np.uint8).transpose(1, 2, 0)
    np.testing.assert_array_equal(np.array(Image.open(path)), expected)


# --- user images -----------------------------------------------------------------------------------------

def test_rgba_transparency_is_composited_on_white():
    transparent = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    assert uniform_colour(load_image(png_bytes(transparent), SIZE)) == [WHITE, WHITE, WHITE]
    opaque = Image.new("RGBA", (20, 20), (255, 0, 0, 255))
    assert uniform_colour(load_image(png_bytes(opaque), SIZE)) == [WHITE, BLACK, BLACK]
    half_black = load_image(png_bytes(Image.new("RGBA", (20, 20), (0, 0, 0, 128))), SIZE)
    assert uniform_colour(half_black) == pytest.approx([from_uint8(torch.tensor(127)).item()] * 3, abs=1 / 127.5)


def test_greyscale_becomes_three_equal_channels():
    ramp = Image.fromarray(np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1)), mode="L")
    x = load_image(png_bytes(ramp), SIZE)
    assert_valid(x)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    # input column i holds 8·i; halving the width averages symmetrically around input position 2j + ½, and a
    # symmetric filter reproduces a linear ramp, so output column j holds 8·(2j + ½) = 16j + 4 away from the edges
    # (fails for a mirrored image, a rescaled grey level, or a non-linear transfer)
    expected = (16 * torch.arange(2, 14) + 4) / 127.5 - 1
    torch.testing.assert_close(x[0, 8, 2:14], expected, rtol=0, atol=1.01 / 127.5)


def test_palette_with_transparency():
    img = Image.new("P", (20, 20), 0)
    img.putpalette([0, 0, 255] + [255, 0, 0] * 255)
    img.info["transparency"] = 0
    assert uniform_colour(load_image(png_bytes(img, transparency=0), SIZE)) == [WHITE, WHITE, WHITE]
    opaque_index = Image.new("P", (20, 20), 1)
    opaque_index.putpalette([0, 0, 255] + [255, 0, 0] * 255)
    assert uniform_colour(load_image(png_bytes(opaque_index, transparency=0), SIZE)) == [WHITE, BLACK, BLACK]


@pytest.mark.parametrize("value, expected", [(65535, WHITE), (0, BLACK), (32896, 0.0)])
def test_16_bit_greyscale_is_rescaled(value, expected):
    img = Image.fromarray(np.full((20, 20), value, dtype=np.uint16))
    assert img.mode == "I;16"
    colour = uniform_colour(load_image(png_bytes(img), SIZE))
    assert colour == pytest.approx([expected] * 3, abs=1 / 127.5)


def test_cmyk():
    white = Image.new("CMYK", (20, 20), (0, 0, 0, 0))
    from_jpeg = load_image(png_bytes(white, "JPEG", quality=100), SIZE)
    assert uniform_colour(from_jpeg) == pytest.approx([WHITE] * 3, abs=0.02)
    cyan = load_image(Image.new("CMYK", (20, 20), (255, 0, 0, 0)), SIZE)
    assert uniform_colour(cyan) == [BLACK, WHITE, WHITE]


def test_exif_orientation_is_applied():
    # stored: top half black, bottom half white; orientation 6 means "rotate 90° clockwise to display",
    # which puts the stored top on the right
    stored = np.zeros((32, 32, 3), dtype=np.uint8)
    stored[16:] = 255
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6
    x = load_image(png_bytes(img, "JPEG", exif=exif.tobytes(), quality=95), 32)
    assert_valid(x, 32)
    left, right = x[:, :, :12].mean(), x[:, :, -12:].mean()
    top, bottom = x[:, :12, :].mean(), x[:, -12:, :].mean()
    assert left > 0.9 and right < -0.9
    assert abs(top - bottom) < 0.05


@pytest.mark.parametrize("size", [(5000, 1), (1, 3000), (1, 1), (3, 7)])
def test_extreme_aspect_ratios(size):
    img = Image.new("RGB", size, (0, 255, 0))
    x = load_image(png_bytes(img), SIZE)
    assert_valid(x)
    assert uniform_colour(x) == [BLACK, WHITE, BLACK]


@pytest.mark.parametrize("mode, same_as, tolerance", [
    ("1", "1", 0), ("L", "L", 0), ("LA", "L", 0), ("I", "L", 0), ("F", "L", 0), ("P", "P", 0), ("RGB", "RGB", 0),
    ("RGBA", "RGB", 0), ("CMYK", "RGB", 0), ("YCbCr", "RGB", 4 / 127.5), ("I;16", None, None)])
def test_every_mode_shows_the_picture_pillow_shows(mode, same_as, tolerance):
    """A random picture converted to ``mode`` loads as Pillow's own RGB rendering of the same picture in
    ``same_as`` (an 8-bit grey image stored as 32-bit "I" or float "F" keeps its 0…255 grey levels; YCbCr within 4
    levels, as Pillow's own RGB → YCbCr → RGB round trip moves values by up to 3). Fails if a mode is rescaled,
    inverted or loses its colours; I;16 (16-bit, so an 8-bit picture comes out nearly black) is only checked for
    range."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))
    x = load_image(rgb.convert(mode), SIZE)
    assert_valid(x)
    if same_as is not None:
        reference = load_image(rgb.convert(same_as).convert("RGB"), SIZE)
        torch.testing.assert_close(x, reference, rtol=0, atol=tolerance)


def test_load_from_path(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (0, 0, 255)).save(path)
    assert uniform_colour(load_image(path, SIZE)) == [BLACK, BLACK, WHITE]
    assert uniform_colour(load_image(str(path), 8)) == [BLACK, BLACK, WHITE]


@pytest.mark.parametrize("content", [b"", b"definitely not an image", random.Random(0).randbytes(2048),
                                     b"\x89PNG\r\n\x1a\n" + bytes(64)], ids=["empty", "text", "random", "bad-png"])
def test_non_images_raise_image_error(tmp_path, content):
    path = tmp_path / "upload.png"
    path.write_bytes(content)
    with pytest.raises(ImageError):
        load_image(path, SIZE)
    with pytest.raises(ImageError):
        load_image(io.BytesIO(content), SIZE)


def test_truncated_image_raises_image_error():
    data = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))).read()
    with pytest.raises(ImageError):
        load_image(io.BytesIO(data[: len(data) // 2]), SIZE)


def test_missing_file_raises_image_error(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.jpg", SIZE)
