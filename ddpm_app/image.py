"""Conversions between model tensors in [−1, 1] and pictures, and preparation of arbitrary user images."""

from __future__ import annotations

import base64
import binascii
import math
import urllib.parse
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import make_grid

from ddpm_app.text import CatalogueError

# Pillow refuses (DecompressionBombError) images above 2× this many pixels and warns above it; open_image refuses
# anything above it, from the header alone, before decoding a pixel.
MAX_IMAGE_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
MAX_FILE_BYTES = 20 * 2**20  # larger image files are refused before they are opened (the app's upload limit)
# the decoders Pillow may use on a user's file; no others (EPS would run Ghostscript, and so on). The JPEG decoder
# also opens the multi-picture JPEGs of many cameras.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I", "F")  # 16-bit, 32-bit and float greyscale
EXIF_ORIENTATION = 0x0112


class ImageError(CatalogueError, ValueError):
    """An image could not be used; the message (a catalogue key and its values) says why and what to do."""


def to_uint8(x: Tensor) -> Tensor:
    """[−1, 1] float (…, C, H, W) → uint8 [0, 255], clamping values outside the range: (x + 1)·127.5 computed in
    float32 and rounded half to even, the same level for the same float32 value on every machine."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(x: Tensor) -> Tensor:
    """uint8 [0, 255] (…, C, H, W) → float32 in [−1, 1]."""
    return x.float() / 127.5 - 1.0


def psnr(a: Tensor, b: Tensor) -> float:
    """Peak signal-to-noise ratio in dB between two images (float in [−1, 1] or uint8), peak-to-peak range 2."""
    a, b = (from_uint8(x) if x.dtype == torch.uint8 else x.float() for x in (a, b))
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(4.0 / mse)


def to_pil(x: Tensor) -> Image.Image:
    """One image (C, H, W) in [−1, 1] → an RGB (or L) PIL image."""
    return TF.to_pil_image(to_uint8(x).cpu())


def to_numpy(x: Tensor) -> np.ndarray:
    """One image (C, H, W) in [−1, 1] → an (H, W, C) uint8 array, as Gradio's Image component takes."""
    return to_uint8(x).cpu().permute(1, 2, 0).numpy()


def grid(x: Tensor, nrow: int | None = None, padding: int = 2) -> Tensor:
    """A batch (B, C, H, W) in [−1, 1] → one image (C, H', W') in [−1, 1], laid out ``nrow`` per row."""
    nrow = nrow or max(1, int(len(x) ** 0.5 + 0.5))
    return make_grid(x.detach().float().cpu().clamp(-1, 1), nrow=nrow, padding=padding, pad_value=1.0)


def save_grid(x: Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Save a batch in [−1, 1] as one PNG grid."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(grid(x, nrow)).save(path)
    return path


def _white_level(img: Image.Image, arr: np.ndarray) -> float:
    """The value that means white in a 16-bit, 32-bit or float greyscale image. Floats in 0…1 (as scientific
    TIFFs store them) are taken as such; other float ranges are refused rather than guessed."""
    if img.mode != "F":
        return 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
    if not np.isfinite(arr).all():
        raise ImageError("error.image_not_numbers")
    low, high = float(arr.min()), float(arr.max())
    for white in (1.0, 255.0, 65535.0):
        if 0.0 <= low and high <= white:
            return white
    raise ImageError("error.image_float_range", low=low, high=high)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode → RGB, upright: EXIF rotation applied, transparency composited on white,
    16-bit, 32-bit and float greyscale rescaled to 8 bits (floats in 0…1, 0…255 or 0…65535), palette and
    CMYK converted."""
    img = ImageOps.exif_transpose(img)
    if img.mode in HIGH_BIT_MODES:
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray((arr / _white_level(img, arr) * 255.0).round().clip(0, 255).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    return img.convert("RGB")


def fit(img: Image.Image, size: int) -> Image.Image:
    """Center-crop the largest square, then resize it to size × size (antialiased).

    Cropping first keeps the work bounded for extreme shapes (a 1×30000 strip never becomes 64×1.9M).
    """
    side = min(img.width, img.height)
    img = TF.center_crop(img, [side, side])
    return TF.resize(img, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)


def open_image(source: str | Path | BinaryIO | Image.Image, size: int | None = None) -> Image.Image:
    """Open and decode an image file (its first frame, if animated), turning every problem into an
    :class:`ImageError`. Checked before decoding: the file size (at most :data:`MAX_FILE_BYTES`) and the pixel
    count the header declares (at most :data:`MAX_IMAGE_PIXELS`). Only the decoders in :data:`FORMATS` are tried.
    With ``size``, a JPEG is decoded at the smallest scale (1/2, 1/4, 1/8) that still covers size × size, so a
    large photo costs little."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (str, Path)):
        try:
            nbytes = Path(source).stat().st_size
        except FileNotFoundError:
            raise ImageError("error.file_not_found", path=source) from None
        except OSError as e:
            raise ImageError("error.file_unreadable", path=source, why=e) from None
        check_file_size(nbytes)
    try:
        img = Image.open(source, formats=FORMATS)
        if img.width < 1 or img.height < 1:
            raise ImageError("error.image_empty", width=img.width, height=img.height)
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise Image.DecompressionBombError
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)  # an animated GIF / WebP / APNG: its first frame
        if size is not None and img.format == "JPEG":
            img.draft(img.mode, (size, size))
        img.load()
    except Image.DecompressionBombError:
        raise ImageError("error.image_large", pixels=MAX_IMAGE_PIXELS) from None
    except FileNotFoundError:
        raise ImageError("error.file_not_found", path=source) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        if isinstance(e, ImageError):
            raise
        if isinstance(e, UnidentifiedImageError):  # its text repeats the path
            size = _declared_png_size(source)
            if size is not None and 0 in size:
                raise ImageError("error.image_empty", width=size[0], height=size[1]) from None
            raise ImageError("error.unreadable") from None
        raise ImageError("error.unreadable_because", why=e) from None
    return img


def check_file_size(nbytes: int) -> None:
    """Refuse an empty file, or one over :data:`MAX_FILE_BYTES`, before anything reads it."""
    if nbytes == 0:
        raise ImageError("error.file_empty")
    if nbytes > MAX_FILE_BYTES:
        raise ImageError("error.file_large", size=nbytes / 2**20, most=MAX_FILE_BYTES // 2**20)


def _declared_png_size(source: str | Path | BinaryIO) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, which Pillow will not open when either is 0; None if not a PNG."""
    try:
        if isinstance(source, (str, Path)):
            with open(source, "rb") as f:
                head = f.read(24)
        else:
            source.seek(0)
            head = source.read(24)
    except OSError:
        return None
    if len(head) < 24 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def read_data_url(url: str) -> bytes:
    """The bytes of a ``data:`` URL (base64 or percent-encoded), with the same size limit as a file: its size is
    worked out from the URL's length and checked before anything is decoded."""
    header, comma, payload = url.partition(",")
    if not header.startswith("data:") or not comma:
        raise ImageError("error.not_data_url")
    if header.endswith(";base64"):
        check_file_size(len(payload) * 3 // 4 - payload[-2:].count("="))
        try:
            return base64.b64decode(payload, validate=True)
        except binascii.Error:
            raise ImageError("error.data_url_base64") from None
    if len(payload) > 3 * MAX_FILE_BYTES:  # percent-encoding at most triples the length
        check_file_size(len(payload) // 3)
    data = urllib.parse.unquote_to_bytes(payload)
    check_file_size(len(data))
    return data


def load_image(source: str | Path | BinaryIO | Image.Image, size: int) -> Tensor:
    """Any user image → (3, size, size) float tensor in [−1, 1]: upright RGB, resized and center-cropped."""
    img = fit(to_rgb(shrink_high_bit(open_image(source, size), size)), size)
    return from_uint8(TF.pil_to_tensor(img))


def shrink_high_bit(img: Image.Image, size: int) -> Image.Image:
    """A 16-bit, 32-bit or float greyscale image, upright and box-averaged by the largest whole factor that keeps
    its short side at least 2·``size``; any other image as it is.

    :func:`to_rgb` rescales such images through float64 arrays, 8 bytes a pixel: for a float TIFF of 6,300²
    pixels (a 252 KB file, inside the pixel limit) that was about 1 GB and seconds of the device thread per
    request. Averaging first leaves it a few thousand pixels. (A large JPEG is decoded reduced already.)"""
    factor = min(img.width, img.height) // (2 * size)
    if img.mode not in HIGH_BIT_MODES or factor < 2:
        return img
    if img.getexif().get(EXIF_ORIENTATION, 1) != 1:  # the averaged image carries no EXIF: turn it upright first
        img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I;16"):  # Pillow averages 32-bit integers and floats only
        img = img.convert("I")
    return img.reduce(factor)
