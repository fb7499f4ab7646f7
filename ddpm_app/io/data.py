"""Training data: image folders and zip packs, decoded once into one uint8 tensor.

Decoding and resizing 64×64 images costs far more than a training step of a small U-Net, so a dataset is
decoded once (large files in parallel) into a (N, 3, H, W) uint8 tensor that stays in memory — or on the GPU — and
batches are drawn from it by indexing. Random horizontal flips are applied per batch on the device.
"""

from __future__ import annotations

import io
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from ddpm_app.image import ImageError, fit, open_image, to_rgb

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
# Files this small on average are decoded one after another: their time goes to Python, which holds the GIL, so
# threads only fight over it (a pack of small images loads several times slower in 8 threads than in one).
# Larger files spend their time in the decoder, which lets go of the GIL, and are decoded in threads.
SMALL_FILE_BYTES = 32 * 1024


class DatasetError(ValueError):
    """The dataset could not be used (missing, empty, or no readable images)."""


@dataclass
class ImagePack:
    """Decoded images and the names they came from."""

    images: Tensor  # (N, 3, H, W) uint8
    names: list[str]  # relative paths inside the folder or zip, same order
    skipped: list[str]  # files that could not be decoded

    def __len__(self) -> int:
        return len(self.names)


def _is_image(name: str) -> bool:
    base = PurePosixPath(name).name
    return name.lower().endswith(IMAGE_EXTENSIONS) and not base.startswith(".") and "__MACOSX" not in name


def _in_split(name: str, split: str | None) -> bool:
    return split is None or split in PurePosixPath(name).parts[:-1]


def resolve_split(names: list[str], split: str | None) -> str | None:
    """``"auto"`` → ``"train"`` when some image lies below a folder named train (a pack), else None (all)."""
    if split != "auto":
        return split or None
    return "train" if any(_in_split(n, "train") for n in names) else None


def list_images(path: str | Path, split: str | None = None) -> list[str]:
    """Relative names of the image files under a folder (recursively) or inside a zip, sorted.

    ``split`` keeps only files below a folder of that name (e.g. ``train`` or ``test``); ``"auto"`` means
    ``train`` for a pack that has such a folder and every image otherwise.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if path.is_dir():
        names = [p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()]
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = [i.filename for i in zf.infolist() if not i.is_dir()]
    else:
        raise DatasetError(f"{path}: not a folder or a .zip archive of images")
    images = [n for n in names if _is_image(n)]
    split = resolve_split(images, split)
    names = sorted(n for n in images if _in_split(n, split))
    if not names:
        if images:  # e.g. a flat folder of images and split "train"
            raise DatasetError(f"{path}: no images in a folder named {split!r}, but {len(images)} elsewhere; "
                               f"use split \"\" (train.py --split \"\") to take all of them")
        where = f" in split {split!r}" if split else ""
        raise DatasetError(f"{path}: no images{where} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return names


def _decode(data: bytes, size: int) -> Tensor | None:
    try:
        return TF.pil_to_tensor(fit(to_rgb(open_image(io.BytesIO(data))), size))
    except (ImageError, OSError, ValueError):
        return None


def _read_or_none(read) -> bytes | None:
    """The file's bytes, or None if it cannot be read (I/O error, a damaged zip member)."""
    try:
        return read()
    except (OSError, zipfile.BadZipFile, EOFError):
        return None


def load_pack(path: str | Path, image_size: int, split: str | None = None, limit: int | None = None,
              workers: int = 8) -> ImagePack:
    """Decode every image under ``path`` (folder or zip) to (3, image_size, image_size) uint8.

    Unreadable files are skipped and listed in ``skipped``; no readable image at all is a :class:`DatasetError`.
    """
    path = Path(path)
    names = list_images(path, split)[:limit]
    if path.is_dir():
        blobs = [_read_or_none(lambda n=n: (path / n).read_bytes()) for n in names]
    else:
        with zipfile.ZipFile(path) as zf:
            blobs = [_read_or_none(lambda n=n: zf.read(n)) for n in names]

    def decode(blob: bytes | None) -> Tensor | None:
        return None if blob is None else _decode(blob, image_size)

    sizes = [len(b) for b in blobs if b is not None]
    if sum(sizes) < SMALL_FILE_BYTES * max(1, len(sizes)):  # small files: one thread is faster (SMALL_FILE_BYTES)
        decoded = [decode(b) for b in blobs]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            decoded = list(pool.map(decode, blobs))
    kept = [(n, x) for n, x in zip(names, decoded) if x is not None]
    skipped = [n for n, x in zip(names, decoded) if x is None]
    if not kept:
        raise DatasetError(f"{path}: none of the {len(names)} image files could be read")
    return ImagePack(torch.stack([x for _, x in kept]), [n for n, _ in kept], skipped)


def random_flip(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Mirror each image of a batch (B, C, H, W) left–right with probability ½."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)
