"""experiments/colour_casts.py: samples whose mean colour lies outside the held-out images' range."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_packs import UTK_TEST, utkface_pack

from ddpm_app.io.data import load_pack

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
import colour_casts  # noqa: E402


def write_grid(path: Path, tiles: list[np.ndarray], cols: int, pad: int = 2) -> Path:
    """A sample grid laid out as the evaluator writes it: tiles with ``pad`` pixels around each."""
    rows, tile = len(tiles) // cols, tiles[0].shape[0]
    grid = np.full((pad + rows * (tile + pad), pad + cols * (tile + pad), 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        grid[pad + r * (tile + pad):pad + r * (tile + pad) + tile, pad + c * (tile + pad):pad + c * (tile + pad) + tile] = t
    Image.fromarray(grid).save(path)
    return path


def test_chroma_is_blue_minus_red_and_green_minus_red_of_the_mean_colour():
    img = np.zeros((1, 4, 4, 3))
    img[0, :2, :, 0] = 0.8  # half the pixels red
    img[0, :, :, 1] = 0.3
    img[0, :, :, 2] = 0.1
    np.testing.assert_allclose(colour_casts.chroma(img), [[0.1 - 0.4, 0.3 - 0.4]])


def test_the_normal_range_holds_the_central_share_of_the_reference():
    ref = np.stack([np.arange(1001.0), -np.arange(1001.0)], axis=1)
    low, high = colour_casts.normal_range(ref, 0.9)
    np.testing.assert_allclose(low, [50, -950])
    np.testing.assert_allclose(high, [950, -50])
    flags = colour_casts.cast(np.array([[500, -500], [960, -500], [500, -990], [49, -10]]), low, high)
    assert flags.tolist() == [False, True, True, True]


def test_tinted_tiles_of_a_grid_are_found_and_only_those(tmp_path, capsys):
    pack = utkface_pack(tmp_path)
    held_out = load_pack(pack, 64, "test").images.permute(0, 2, 3, 1).numpy()
    # the held-out images whose chroma is inside the range on both figures (the others set its ends)
    inner = [held_out[i] for i in (0, 1, 5)]
    tiles = [inner[i % 3] for i in range(8)]
    for i in (1, 6):  # a strong blue cast on two tiles
        t = tiles[i].astype(np.int16)
        t[..., 2] = np.minimum(t[..., 2] + 120, 255)
        t[..., 0] //= 3
        tiles[i] = t.astype(np.uint8)
    grid = write_grid(tmp_path / "grid.png", tiles, cols=4)
    assert colour_casts.main([str(pack), str(grid), "--coverage", "1.0"]) == 0
    out = capsys.readouterr().out
    assert f"{len(UTK_TEST)} test images; 100% range" in out
    assert f"{grid}: 2 of 8 outside (tiles [1, 6])" in out


def test_a_picture_that_is_not_such_a_grid_is_refused(tmp_path):
    path = tmp_path / "odd.png"
    Image.new("RGB", (100, 70)).save(path)
    with pytest.raises(ValueError, match="not a grid of 64-pixel tiles"):
        colour_casts.grid_tiles(path, 64, 2)
