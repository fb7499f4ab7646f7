"""Conversions between model tensors in [−1, 1] and pictures, and preparation of arbitrary user images."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import make_grid

# Pillow refuses (DecompressionBombError) images above 2× this many pixels and warns above it.
MAX_IMAGE_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


class ImageError(ValueError):
    """An image could not be used; the message says why and what to do."""


def to_uint8(x: Tensor) -> Tensor:
    """[−1, 1] float (…, C, H, W) → uint8 [0, 255], clamping values outside the range."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(x: Tensor) -> Tensor:
    """uint8 [0, 255] (…, C, H, W) → float32 in [−1, 1]."""
    return x.float() / 127.5 - 1.0


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
    return TF.resize(img, [size, size], interpolation=T.InterpolationMode.BICUBIC, antialias=True)


def open_image(source: str | Path | BinaryIO | Image.Image) -> Image.Image:
    """Open and fully decode an image file, turning every decoder failure into an :class:`ImageError`."""
    if isinstance(source, Image.Image):
        return source
    try:
        img = Image.open(source)
        img.load()
    except Image.DecompressionBombError:
        raise ImageError(f"the image is too large (over {2 * MAX_IMAGE_PIXELS:,} pixels); "
                         "use a smaller picture") from None
    except FileNotFoundError:
        raise ImageError(f"file not found: {source}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"not a readable image ({e}); use a PNG, JPEG, WebP, BMP or TIFF file") from None
    if img.width < 1 or img.height < 1:
        raise ImageError(f"the image is empty ({img.width}×{img.height} pixels)")
    return img


def load_image(source: str | Path | BinaryIO | Image.Image, size: int) -> Tensor:
    """Any user image → (3, size, size) float tensor in [−1, 1]: upright RGB, resized and center-cropped."""
    img = fit(to_rgb(open_image(source)), size)
    return from_uint8(TF.pil_to_tensor(img))
