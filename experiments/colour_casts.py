"""How many sample images carry a colour cast: a mean colour outside the range of the held-out images' own.

    python experiments/colour_casts.py PACK.zip GRID.png [GRID.png ...] [--coverage 0.99] [--tile 64] [--pad 2]

Each image's mean colour is reduced to two chroma figures, blue − red and green − red (a cast toward blue, teal,
green or yellow moves one of them; a change of brightness moves neither much). The box that holds ``--coverage``
of the pack's held-out (``test/``) images along each figure is the normal range; a sample outside it on either
figure counts as cast. The grids are the sample grids the evaluator writes (``samples_ddpm.png``): square tiles of
``--tile`` pixels with ``--pad`` pixels around each. Held-out images themselves fall outside about 1 − coverage of
the time on each figure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ddpm_app.io.data import load_pack


def chroma(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) RGB in [0, 1] → (N, 2): the mean colour's blue − red and green − red."""
    mean = images.reshape(len(images), -1, 3).mean(axis=1)
    return np.stack([mean[:, 2] - mean[:, 0], mean[:, 1] - mean[:, 0]], axis=1)


def normal_range(reference: np.ndarray, coverage: float) -> tuple[np.ndarray, np.ndarray]:
    """The per-figure interval holding the central ``coverage`` share of the reference chroma."""
    tail = 100 * (1 - coverage) / 2
    return np.percentile(reference, tail, axis=0), np.percentile(reference, 100 - tail, axis=0)


def cast(samples: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Whether each sample's chroma lies outside [low, high] on either figure."""
    return ((samples < low) | (samples > high)).any(axis=1)


def grid_tiles(path: str | Path, tile: int, pad: int) -> np.ndarray:
    """The tiles of a sample grid as (N, tile, tile, 3) in [0, 1], row by row."""
    grid = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255
    step = tile + pad
    rows, cols = (grid.shape[0] - pad) // step, (grid.shape[1] - pad) // step
    if rows * step + pad != grid.shape[0] or cols * step + pad != grid.shape[1]:
        raise ValueError(f"{path}: {grid.shape[1]}×{grid.shape[0]} is not a grid of {tile}-pixel tiles with "
                         f"{pad}-pixel padding; pass --tile and --pad")
    return np.stack([grid[pad + r * step:pad + r * step + tile, pad + c * step:pad + c * step + tile]
                     for r in range(rows) for c in range(cols)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", help="image pack (.zip or folder) with a test/ split")
    p.add_argument("grids", nargs="+", help="sample grids (PNG)")
    p.add_argument("--split", default="test")
    p.add_argument("--coverage", type=float, default=0.99)
    p.add_argument("--tile", type=int, default=64)
    p.add_argument("--pad", type=int, default=2)
    args = p.parse_args(argv)
    held_out = load_pack(args.data, args.tile, args.split).images.permute(0, 2, 3, 1).numpy() / 255.0
    low, high = normal_range(chroma(held_out), args.coverage)
    print(f"{len(held_out)} {args.split} images; {args.coverage:.0%} range of blue − red {low[0]:+.3f} … "
          f"{high[0]:+.3f}, green − red {low[1]:+.3f} … {high[1]:+.3f}")
    for path in args.grids:
        outside = cast(chroma(grid_tiles(path, args.tile, args.pad)), low, high)
        print(f"{path}: {outside.sum()} of {len(outside)} outside (tiles {np.flatnonzero(outside).tolist()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
