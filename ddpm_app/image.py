"""Conversions between model tensors in [−1, 1] and pictures, and preparation of arbitrary user images."""

from __future__ import annotations

import math
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import make_grid

# Pillow refuses (DecompressionBombError) images above 2× this many pixels and warns above it; open_image refuses
# anything above it, from the header alone, before decoding a pixel.
MAX_IMAGE_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
MAX_FILE_BYTES = 20 * 2**20  # larger image files are refused before they are opened (the app's upload limit)


class ImageError(ValueError):
    """An image could not be used; the message says why and what to do."""


def to_uint8(x: Tensor) -> Tensor:
    """[−1, 1] float (…, C, H, W) → uint8 [0, 255], clamping values outside the range."""
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


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode → RGB, upright: EXIF rotation applied, transparency composited on white,
    16-bit and float greyscale rescaled to 8 bits, palette and CMYK converted."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray((arr / hi * 255.0).clip(0, 255).astype(np.uint8), mode="L")
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
    count the header declares (at most :data:`MAX_IMAGE_PIXELS`). With ``size``, a JPEG is decoded at the
    smallest scale (1/2, 1/4, 1/8) that still covers size × size, so a large photo costs little."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (str, Path)):
        try:
            nbytes = Path(source).stat().st_size
        except FileNotFoundError:
            raise ImageError(f"file not found: {source}") from None
        except OSError as e:
            raise ImageError(f"cannot read {source} ({e})") from None
        if nbytes == 0:
            raise ImageError("the file is empty; use a PNG, JPEG, WebP, BMP or TIFF file")
        if nbytes > MAX_FILE_BYTES:
            raise ImageError(f"the file is too large ({nbytes / 2**20:.1f} MB; at most {MAX_FILE_BYTES // 2**20} MB)")
    try:
        img = Image.open(source)
        if img.width < 1 or img.height < 1:
            raise ImageError(f"the image is empty ({img.width}×{img.height} pixels)")
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise Image.DecompressionBombError
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)  # an animated GIF / WebP / APNG: its first frame
        if size is not None and img.format == "JPEG":
            img.draft(img.mode, (size, size))
        img.load()
    except Image.DecompressionBombError:
        raise ImageError(f"the image is too large (over {MAX_IMAGE_PIXELS:,} pixels); use a smaller picture") from None
    except FileNotFoundError:
        raise ImageError(f"file not found: {source}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        if isinstance(e, ImageError):
            raise
        reason = "unknown format" if isinstance(e, UnidentifiedImageError) else e  # its text repeats the path
        raise ImageError(f"not a readable image ({reason}); use a PNG, JPEG, WebP, BMP or TIFF file") from None
    return img


def load_image(source: str | Path | BinaryIO | Image.Image, size: int) -> Tensor:
    """Any user image → (3, size, size) float tensor in [−1, 1]: upright RGB, resized and center-cropped."""
    img = fit(to_rgb(open_image(source, size)), size)
    return from_uint8(TF.pil_to_tensor(img))
