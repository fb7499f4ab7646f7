"""The evaluation end to end on a tiny random model and tiny packs, on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_packs import EMOJI_TEST, EMOJI_TRAIN, UTK_TEST, UTK_TRAIN, emoji_pack, utkface_pack

from ddpm_app.cli.evaluate import main
from ddpm_app.diffusion.likelihood import bits_per_dim
from ddpm_app.io.data import load_pack
from ddpm_app.io.loading import load_pretrained
from ddpm_app.metrics import evaluate as ev
from ddpm_app.metrics.evaluate import EvalConfig, EvalResult, evaluate
from ddpm_app.metrics.features import HEADS, embed, fd_bootstrap_se, feature_fd, load_feature_net
from ddpm_app.metrics.memorisation import nearest_pixels

FAST = ["--num-samples", "64", "--batch-size", "64", "--device", "cpu"]


def rms_to_nearest(queries: torch.Tensor, reference: torch.Tensor, flips: bool = True) -> torch.Tensor:
    """Each uint8 query's RMS distance (values in [0, 1]) to its nearest reference image or, with ``flips``, mirror
    image: every pair compared directly in float64, (Q,)."""
    def distances(ref: torch.Tensor) -> torch.Tensor:
        diff = (queries.double()[:, None] - ref.double()[None]) / 255  # (Q, R, C, H, W)
        return diff.pow(2).mean(dim=(2, 3, 4)).sqrt()

    d = distances(reference)
    if flips:
        d = torch.minimum(d, distances(reference.flip(-1)))
    return d.min(dim=1).values


def grid_tiles(path: Path, count: int, size: int = 16, nrow: int = 8, pad: int = 2) -> torch.Tensor:
    """The first ``count`` tiles of a saved grid, uint8 (count, 3, size, size): the samples exactly as drawn."""
    pixels = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    corners = [(pad + (i // nrow) * (size + pad), pad + (i % nrow) * (size + pad)) for i in range(count)]
    return torch.stack([pixels[:, top:top + size, left:left + size] for top, left in corners])


@pytest.fixture
def face_pack(tmp_path: Path) -> Path:
    return utkface_pack(tmp_path)


def test_cli_end_to_end_on_a_face_pack(tiny_model_dir: Path, face_pack: Path, tmp_path: Path, capsys):
    out = tmp_path / "eval"
    assert main([str(tiny_model_dir), "--data", str(face_pack), "--out", str(out), *FAST]) == 0
    table = capsys.readouterr().out
    for row in ("bits/dim", "prior L_T", "decoder L_0", "FD-UTK samples ↔ test", "FD-UTK train ↔ test (floor)",
                "nearest train, pixels", "nearest train, features"):
        assert row in table, row

    result = json.loads((out / "eval.json").read_text())
    assert result["format"] == "ddpm-app-eval" and result["sampler"] == "ddpm (20 steps)"
    assert result["num_test"] == len(UTK_TEST) and result["num_train"] == len(UTK_TRAIN)
    bpd = result["bpd"]
    assert bpd["exact"] and bpd["timesteps_evaluated"] == 20 and bpd["num_images"] == len(UTK_TEST)
    assert bpd["total"] == pytest.approx(bpd["prior"] + bpd["diffusion"] + bpd["decoder"])
    assert 0 < bpd["total"] < 100 and len(bpd["per_timestep"]) == 20

    faces = result["faces"]
    assert faces["num_samples"] == 64 and faces["num_train_floor"] == len(UTK_TRAIN)
    assert faces["feature_dim"] == 128
    # FD-UTK recomputed from the pictures themselves: the 64 samples are the grid's tiles, the floor is all 12
    # training images (fewer than 64). Fails if either distance compares the wrong sets (e.g. samples ↔ train).
    samples = grid_tiles(out / "samples_ddpm.png", 64)
    train, test = (load_pack(face_pack, 16, split=s).images for s in ("train", "test"))
    net = load_feature_net()
    features = {name: embed(net, x).features for name, x in (("samples", samples), ("train", train), ("test", test))}
    assert faces["fd_samples_test"] == pytest.approx(feature_fd(features["samples"], features["test"]), rel=1e-6)
    assert faces["fd_train_test"] == pytest.approx(feature_fd(features["train"], features["test"]), rel=1e-6)
    # its error bar: the bootstrap over the samples, drawn from seed + 2 after the floor's draw (seed 0 here); the
    # floor holds every training image (12 < 64), so it cannot move between draws
    gen = torch.Generator().manual_seed(2)
    torch.randperm(len(train), generator=gen)
    expected_se = fd_bootstrap_se(features["samples"], features["test"], ev.BOOTSTRAP_DRAWS, gen)
    assert faces["fd_samples_test_se"] == pytest.approx(expected_se, rel=1e-4) and expected_se > 0
    assert faces["fd_train_test_sd"] == 0.0
    assert f"{faces['fd_samples_test']:.3f} ± {expected_se:.3f}" in table
    assert set(faces["coverage"]) == set(HEADS)
    for name, cov in faces["coverage"].items():
        assert cov["classes"] == list(HEADS[name])
        for key in ("samples", "test_predicted", "test_labels"):
            assert sum(cov[key]) == pytest.approx(1.0)
        assert 0 <= cov["total_variation"] <= 1
    # the held-out labels come from the file names
    assert faces["coverage"]["gender"]["test_labels"] == pytest.approx([3 / 6, 3 / 6])

    mem = result["memorisation"]
    assert mem["num_samples"] == 64 and len(mem["neighbours"]) == 64
    assert mem["pixel_ratio"] == pytest.approx(mem["pixel_median"] / mem["pixel_test_median"])
    # medians of nearest-neighbour distances computed pair by pair (fails if the held-out reference used the
    # samples, or the mirror images were left out)
    assert mem["pixel_median"] == pytest.approx(float(np.median(rms_to_nearest(samples, train))), rel=1e-4)
    assert mem["pixel_test_median"] == pytest.approx(float(np.median(rms_to_nearest(test, train))), rel=1e-4)
    assert all(n["pixel_train"] in UTK_TRAIN and n["feature_train"] in UTK_TRAIN for n in mem["neighbours"])
    # a random network makes noise, far from every training face
    assert mem["pixel_ratio"] > 1.0

    side = 8 * (16 + 2) + 2  # 8×8 tiles of 16 px with 2 px padding
    assert Image.open(out / "samples_ddpm.png").size == (side, side)
    # memorisation grid: sample | nearest in pixels | nearest in features, four samples per row, 16 rows
    assert Image.open(out / "memorisation.png").size == (12 * 18 + 2, 16 * 18 + 2)


def test_emoji_pack_skips_the_face_metrics_and_labels_an_estimate(tiny_model_dir: Path, tmp_path: Path):
    pack = emoji_pack(tmp_path)
    config = EvalConfig(num_samples=0, sampler="ddim", steps=5, bpd_timesteps=6, batch_size=32, device="cpu",
                        memorisation_samples=8)
    result = evaluate(tiny_model_dir, pack, config, out_dir=tmp_path / "out")
    assert isinstance(result, EvalResult)
    assert result.faces is None and "not UTKFace" in result.faces_note
    # the bound on the held-out split, its timesteps and noise from seed + 1, x̂₀ clipped: fails if it is measured on
    # the training split, unclipped, or with other noise
    test_images = load_pack(pack, 16, split="test").images
    loaded = load_pretrained(tiny_model_dir)
    expected = bits_per_dim(loaded.model, loaded.schedule, test_images, num_timesteps=6, batch_size=32,
                            generator=torch.Generator().manual_seed(1), clip_x0=True)
    assert not result.bpd.exact and result.bpd.timesteps_evaluated == 6 and result.bpd.clip_x0
    assert result.bpd.num_images == len(EMOJI_TEST)
    assert result.bpd.total == pytest.approx(expected.total, rel=1e-4)
    assert [t for t, _, _ in result.bpd.per_timestep] == [t for t, _, _ in expected.per_timestep]
    assert "estimate" in result.bpd.label
    assert result.sampler == "ddim (5 steps, η = 0)" and result.grid == "samples_ddim5.png"
    assert (tmp_path / "out" / "samples_ddim5.png").is_file()
    mem = result.memorisation
    assert mem.num_samples == 8 and mem.feature_ratio is None and mem.neighbours[0].feature_train is None
    assert all(n.pixel_train in EMOJI_TRAIN for n in mem.neighbours) and mem.num_test == len(EMOJI_TEST)
    assert Image.open(tmp_path / "out" / "memorisation.png").size == (8 * 18 + 2, 2 * 18 + 2)  # pairs, 4 per row
    saved = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert saved["faces"] is None and saved["config"]["sampler"] == "ddim"
    table = ev.format_table(result)  # the numbers it prints are the result's, rounded as stated
    assert f"{result.bpd.total:.4f} ± {result.bpd.stderr:.4f}  on {len(EMOJI_TEST)} held-out images" in table
    assert f"median {mem.pixel_median:.4f} vs test {mem.pixel_test_median:.4f}" in table
    # the seed fixes the samples, the bound's noise and its timesteps: a second run gives the same numbers
    again = evaluate(tiny_model_dir, pack, config, out_dir=tmp_path / "again")
    assert again.bpd == result.bpd and again.memorisation.neighbours == mem.neighbours
    other = evaluate(tiny_model_dir, pack, EvalConfig(**{**config.__dict__, "seed": 1}), out_dir=tmp_path / "other")
    assert other.bpd.total != result.bpd.total


def test_a_model_that_copies_the_training_set_is_flagged(tiny_model_dir: Path, face_pack: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch):
    train = load_pack(face_pack, 16, split="train").images

    def copy_training_images(model, loaded, config, count, device, progress=None):
        picks = torch.arange(count) % len(train)
        flips = (torch.arange(count) // len(train)) % 2 == 1  # every other round mirrored
        return torch.where(flips[:, None, None, None], train[picks].flip(-1), train[picks])

    monkeypatch.setattr(ev, "generate", copy_training_images)
    result = evaluate(tiny_model_dir, face_pack, EvalConfig(num_samples=64, skip_bpd=True, device="cpu"),
                      out_dir=tmp_path / "out")
    mem = result.memorisation
    assert mem.pixel_median == pytest.approx(0.0, abs=1e-3) and mem.pixel_ratio < 0.01
    test, train = (load_pack(face_pack, 16, split=s).images for s in ("test", "train"))
    assert mem.pixel_test_median == pytest.approx(float(np.median(rms_to_nearest(test, train))), rel=1e-4)
    assert any(n.pixel_flipped for n in mem.neighbours) and not all(n.pixel_flipped for n in mem.neighbours)
    assert result.bpd is None


def test_the_seed_architecture_evaluates_too(seed_model, tiny_schedule_config, face_pack: Path, tmp_path: Path):
    from ddpm_app.io.model_folder import DiffusionConfig, save_pretrained

    model_dir = save_pretrained(seed_model, DiffusionConfig(model=seed_model.config, schedule=tiny_schedule_config),
                                tmp_path / "seed-model")
    config = EvalConfig(num_samples=64, sampler="ddim", steps=4, batch_size=64, device="cpu")
    result = evaluate(model_dir, face_pack, config, out_dir=tmp_path / "out")
    assert result.arch == "seed" and result.bpd.exact and result.bpd.timesteps_evaluated == 20
    # the seed net in memory, not the folder: fails if the seed architecture loads into other weights
    test_images = load_pack(face_pack, 16, split="test").images
    expected = bits_per_dim(seed_model, load_pretrained(model_dir).schedule, test_images, batch_size=64,
                            generator=torch.Generator().manual_seed(1), clip_x0=True)
    assert result.bpd.total == pytest.approx(expected.total, rel=1e-4)
    samples = grid_tiles(tmp_path / "out" / "samples_ddim4.png", 64)
    net = load_feature_net()
    assert result.faces.fd_samples_test == pytest.approx(
        feature_fd(embed(net, samples).features, embed(net, test_images).features), rel=1e-6)


def test_nearest_pixels_finds_copies_and_mirror_images():
    g = torch.Generator().manual_seed(0)
    reference = torch.randint(0, 256, (9, 3, 8, 8), generator=g, dtype=torch.uint8)
    queries = torch.stack([reference[3], reference[5].flip(-1), torch.full((3, 8, 8), 128, dtype=torch.uint8)])
    near = nearest_pixels(queries, reference, torch.device("cpu"), chunk=4)  # chunks smaller than the set
    assert near.index[:2].tolist() == [3, 5] and near.flipped[:2].tolist() == [False, True]
    assert near.distance[:2].tolist() == pytest.approx([0.0, 0.0], abs=1e-3)
    # the grey image: RMS distance in [0, 1] units to the nearest reference, computed directly
    assert float(near.distance[2]) == pytest.approx(float(rms_to_nearest(queries[2:], reference)), rel=1e-5)
    # without flips the mirrored copy is as far as its nearest unmirrored image (fails if flips=False is ignored)
    no_flips = nearest_pixels(queries[1:2], reference, torch.device("cpu"), flips=False)
    assert float(no_flips.distance[0]) == pytest.approx(float(rms_to_nearest(queries[1:2], reference, flips=False)),
                                                        rel=1e-5)


def test_config_validation_and_cli_errors(tiny_model_dir: Path, tmp_path: Path, capsys):
    with pytest.raises(ValueError):
        EvalConfig(bpd_timesteps=1)
    with pytest.raises(ValueError):
        EvalConfig(num_samples=10, memorisation_samples=100)
    assert main([str(tmp_path / "no-model"), "--data", str(tmp_path / "no.zip")]) == 2
    assert "error:" in capsys.readouterr().err
    assert main([str(tiny_model_dir), "--data", str(tmp_path / "no.zip"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
