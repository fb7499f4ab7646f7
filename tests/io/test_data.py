"""Training data on the way into the loss: which files a pack trains on, how they are decoded, the random flip
mirrors left–right, and pixels map to [−1, 1]."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from tiny_packs import UTK_TEST, UTK_TRAIN, utkface_pack
from tiny_runs import shapes, write_folder

from ddpm_app.image import from_uint8
from ddpm_app.io import data
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


def test_small_and_large_files_decode_alike_whichever_way_they_are_read(tmp_path, monkeypatch):
    """A pack of small files is decoded in one thread, one of large photos in several (data.SMALL_FILE_BYTES): the
    same pixels, the same order and the same skipped files either way."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(5):  # noise photos: a JPEG of them is far larger than SMALL_FILE_BYTES
        Image.fromarray(rng.integers(0, 256, (160 + 8 * i, 200, 3), dtype=np.uint8)).save(folder / f"p{i}.jpg",
                                                                                        quality=95)
    (folder / "p2b.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    threads = []
    monkeypatch.setattr(data.ThreadPoolExecutor, "__init__", counting(data.ThreadPoolExecutor.__init__, threads))
    large = load_pack(folder, 16)
    assert len(threads) == 1  # decoded in threads
    monkeypatch.setattr(data, "SMALL_FILE_BYTES", 10**9)  # now every file counts as small
    small = load_pack(folder, 16)
    assert len(threads) == 1  # decoded in this thread
    assert large.names == small.names == [f"p{i}.jpg" for i in range(5)]
    assert large.skipped == small.skipped == ["p2b.jpg"]
    assert torch.equal(large.images, small.images) and large.images.shape == (5, 3, 16, 16)


def counting(init, calls: list):
    def counted(self, *args, **kwargs):
        calls.append(1)
        init(self, *args, **kwargs)
    return counted
