"""Training data on the way into the loss: which files a pack trains on, the random flip mirrors left–right, and
pixels map to [−1, 1]."""

from __future__ import annotations

import torch
from tiny_packs import UTK_TEST, UTK_TRAIN, utkface_pack
from tiny_runs import shapes, write_folder

from ddpm_app.image import from_uint8
from ddpm_app.io.data import list_images, load_pack, random_flip, resolve_split


def test_the_default_split_is_a_pack_s_train_folder_and_a_flat_folder_whole(tmp_path):
    """split "auto": a pack with train/ and test/ trains on train/ only (its test images stay unseen)."""
    pack = utkface_pack(tmp_path)
    assert resolve_split(UTK_TRAIN + UTK_TEST, "auto") == "train"
    assert list_images(pack, "auto") == sorted(UTK_TRAIN)
    assert load_pack(pack, 16, "auto").names == sorted(UTK_TRAIN)
    assert list_images(pack, None) == sorted(UTK_TRAIN + UTK_TEST)
    flat = write_folder(tmp_path / "flat", n=3)
    assert resolve_split(["a.png", "b/c.png"], "auto") is None
    assert list_images(flat, "auto") == ["img_00.png", "img_01.png", "img_02.png"]


def test_random_flip_mirrors_left_right_about_half_the_time():
    x = torch.arange(64 * 3 * 4 * 5, dtype=torch.float32).reshape(64, 3, 4, 5)  # no two pixels alike
    out = random_flip(x, torch.Generator().manual_seed(0))
    mirrored = [torch.equal(out[i], x[i, :, :, torch.arange(4, -1, -1)]) for i in range(len(x))]
    kept = [torch.equal(out[i], x[i]) for i in range(len(x))]
    assert all(m or k for m, k in zip(mirrored, kept))  # every image is itself or its left–right mirror
    assert 20 <= sum(mirrored) <= 44  # p = ½: 64 draws land here with probability > 0.99
    assert out[mirrored.index(True), 0, 0, 0] == x[mirrored.index(True), 0, 0, 4]  # the first column is the last


def test_random_flip_is_decided_by_the_generator_alone():
    x = shapes(16).float()
    a = random_flip(x, torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    b = random_flip(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, random_flip(x, torch.Generator().manual_seed(4)))


def test_uint8_pixels_map_to_minus_one_to_one():
    x = torch.tensor([0, 1, 127, 128, 254, 255], dtype=torch.uint8)
    expected = torch.tensor([-1.0, -1 + 2 / 255, -1 + 254 / 255, -1 + 256 / 255, 1 - 2 / 255, 1.0])
    torch.testing.assert_close(from_uint8(x), expected, rtol=0, atol=1e-6)
