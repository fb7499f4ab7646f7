"""The face-attribute CNN: UTKFace labels, the network and its weights file, training, and the Fréchet distance."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from tiny_packs import utkface_pack

from ddpm_app.cli.features import main
from ddpm_app.metrics.features import (
    AGE_GROUPS,
    DEFAULT_WEIGHTS,
    HEADS,
    FaceFeatureNet,
    FaceLabels,
    FaceNetConfig,
    FeatureTrainConfig,
    GaussianStats,
    attribute_accuracy,
    augment,
    class_fractions,
    embed,
    fd_bootstrap_se,
    fd_floor_spread,
    feature_fd,
    frechet_distance,
    gaussian_stats,
    is_utkface,
    label_names,
    load_feature_net,
    metadata_path,
    parse_utkface_name,
    save_feature_net,
    sqrtm_psd,
    total_variation,
    train_feature_net,
)

UTKFACE_PACK = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "utkface-64.zip"


@pytest.fixture
def tiny_face_pack(tmp_path: Path) -> Path:
    return utkface_pack(tmp_path)


# --- labels ---------------------------------------------------------------------------------------------


def test_parse_utkface_names():
    assert parse_utkface_name("train/26_0_2_20170104023102422.jpg") == FaceLabels(26, 0, 2)
    assert parse_utkface_name("1_1_4_20161221193016140.jpg.chip.jpg") == FaceLabels(1, 1, 4)
    for malformed in ("train/39_1_20170116174525125.jpg",  # race missing (real UTKFace file)
                      "61_3_20170109150557335.jpg", "26_2_0_20170104023102422.jpg",  # gender 2
                      "26_0_5_20170104023102422.jpg", "x_0_1_2.jpg", "google-0023-fe0f-20e3.png", ""):
        assert parse_utkface_name(malformed) is None, malformed


@pytest.mark.parametrize("age, group", [(0, 0), (9, 0), (10, 1), (19, 1), (20, 2), (39, 3), (40, 4), (59, 4),
                                        (60, 5), (116, 5)])
def test_age_groups(age, group):
    assert FaceLabels(age, 0, 0).age_group == group
    assert len(AGE_GROUPS) == 6


def test_label_names_skips_malformed_names_and_keeps_indices():
    names = ["test/5_1_0_1.jpg", "test/39_1_20170116174525125.jpg", "test/70_0_3_2.jpg"]
    labelled = label_names(names)
    assert labelled.indices.tolist() == [0, 2]
    assert labelled.labels.tolist() == [[1, 0, 0], [0, 5, 3]]  # gender, age group, race
    assert is_utkface(names, min_fraction=0.6) and not is_utkface(names, min_fraction=0.9)
    assert not is_utkface(["train/google-0023-fe0f.png", "train/twitter-1f600.png"])
    assert not is_utkface([])


# --- Fréchet distance -----------------------------------------------------------------------------------


def random_features(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ mix + 0.3


def test_sqrtm_psd_squares_back():
    a = random_features(50, 8, 0)
    cov = torch.cov(a.T)
    root = sqrtm_psd(cov)
    torch.testing.assert_close(root @ root, cov, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(root, root.T)


def test_fd_of_a_set_with_itself_is_zero():
    f = random_features(500, 32, 1)
    fd = feature_fd(f, f)
    assert abs(fd) < 1e-9 * float(torch.cov(f.T).trace())
    # a rank-deficient covariance (fewer samples than dimensions) as well
    small = random_features(10, 32, 2)
    # (looser: square roots of round-off-sized eigenvalues in the null space add up to ~1e−8 each)
    assert abs(feature_fd(small, small)) < 1e-6 * float(torch.cov(small.T).trace())


def test_fd_of_a_shifted_set_is_the_squared_shift():
    f = random_features(400, 16, 3)
    shift = torch.linspace(-1, 1, 16, dtype=torch.float64)
    fd = feature_fd(f, f + shift)
    assert fd > 0
    assert fd == pytest.approx(float(shift @ shift), rel=1e-8)  # same covariance: only ‖Δμ‖² remains


def test_fd_closed_form_for_diagonal_gaussians_and_symmetry():
    # FD(N(μ₁, diag a), N(μ₂, diag b)) = ‖μ₁ − μ₂‖² + Σ (√a − √b)²
    a, b = torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64), torch.tensor([9.0, 1.0, 0.25], dtype=torch.float64)
    m1, m2 = torch.zeros(3, dtype=torch.float64), torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)
    s1, s2 = GaussianStats(m1, torch.diag(a), 100), GaussianStats(m2, torch.diag(b), 100)
    expected = 5.0 + float(((a.sqrt() - b.sqrt()) ** 2).sum())
    assert frechet_distance(s1, s2) == pytest.approx(expected, rel=1e-12)
    # non-commuting covariances: symmetric in its arguments, and equal to scipy's sqrtm where scipy is present
    x, y = random_features(300, 12, 4), 1.5 * random_features(300, 12, 5)
    assert feature_fd(x, y) == pytest.approx(feature_fd(y, x), rel=1e-10)
    import scipy.linalg as scipy_linalg  # a test requirement: missing, this test fails rather than skips
    sx, sy = gaussian_stats(x), gaussian_stats(y)
    covmean = scipy_linalg.sqrtm(sx.cov.numpy() @ sy.cov.numpy()).real
    reference = float((sx.mean - sy.mean) @ (sx.mean - sy.mean)) + float(sx.cov.trace() + sy.cov.trace()) \
        - 2 * float(covmean.trace())
    assert feature_fd(x, y) == pytest.approx(reference, rel=1e-8)


def test_fd_error_bars_match_the_spread_of_independent_draws():
    """Gaussian features whose FD spread over independent draws is known by simulation (300 draws): the bootstrap
    standard error from one draw of samples lands within 0.8–2× of it (it runs high: resampling repeats vectors),
    and the floor's spread over subsets of a large pool within 0.7–1.5×. Fails if the bootstrap resamples the
    reference instead of the samples (an s.e. ~3× too small here) or returns a variance."""
    gen = torch.Generator().manual_seed(0)
    reference = torch.randn(1000, 8, generator=gen)

    def samples(n: int) -> torch.Tensor:
        return torch.randn(n, 8, generator=gen) * 1.1 + 0.1

    for n in (100, 400):
        true_sd = torch.tensor([feature_fd(samples(n), reference) for _ in range(300)]).std().item()
        se = fd_bootstrap_se(samples(n), reference, draws=200, generator=gen)
        assert 0.8 * true_sd < se < 2 * true_sd, (n, se, true_sd)
    pool = torch.randn(20000, 8, generator=gen)
    true_sd = torch.tensor([feature_fd(torch.randn(200, 8, generator=gen), reference) for _ in range(300)]).std()
    spread = fd_floor_spread(pool, reference, 200, draws=20, generator=gen)
    assert 0.7 * true_sd < spread < 1.5 * true_sd
    assert fd_floor_spread(pool[:200], reference, 200, draws=5, generator=gen) < 1e-9  # the same set every draw


def test_gaussian_stats_needs_two_vectors():
    with pytest.raises(ValueError):
        gaussian_stats(torch.zeros(1, 4))


def test_class_fractions_and_total_variation():
    predictions = torch.tensor([[0, 0, 0], [1, 5, 4], [1, 2, 4], [1, 2, 1]])
    fractions = class_fractions(predictions)
    assert fractions["gender"] == [0.25, 0.75]
    assert fractions["age"] == [0.25, 0, 0.5, 0, 0, 0.25]
    assert fractions["race"] == [0.25, 0.25, 0, 0, 0.5]
    assert total_variation([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert total_variation([1.0, 0.0], [0.0, 1.0]) == 1.0


# --- the network, its file and its training -------------------------------------------------------------


def small_net(seed: int = 0) -> FaceFeatureNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return FaceFeatureNet(FaceNetConfig(image_size=32, widths=(8, 16))).eval()


def test_net_shapes_and_resizing():
    net = small_net()
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x = net.prepare(images)
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.float32 and float(x.abs().max()) <= 1.0
    flat = net.prepare(torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 16, 16))
    torch.testing.assert_close(flat[0, :, 5, 7], torch.tensor([-1.0, 1.0, -0.6]))  # uint8 → [−1, 1], resized
    logits = net(x)
    assert [tuple(lg.shape) for lg in logits] == [(5, len(c)) for c in HEADS.values()]
    emb = embed(net, images, batch_size=2)
    assert emb.features.shape == (5, 16) and emb.features.dtype == torch.float64
    assert emb.predictions.shape == (5, 3)
    assert emb.predictions[:, 1].max() < len(AGE_GROUPS)


def test_save_load_roundtrip_and_wrong_files(tmp_path: Path):
    net = small_net(1)
    path = save_feature_net(net, tmp_path / "f.safetensors")
    loaded = load_feature_net(path)
    assert loaded.config == net.config and not loaded.training
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(embed(loaded, images).features, embed(net, images).features)
    with pytest.raises(FileNotFoundError, match="train them"):
        load_feature_net(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a face-feature weights file"):
        load_feature_net(tmp_path / "other.safetensors")


def test_augment_flips_and_shifts():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    flipped = augment(x, 0, g)
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1))
    shifted = augment(x, 2, g)
    assert shifted.shape == x.shape
    # every output pixel is some input pixel of the same image and channel (translation with replicated edges)
    for i in range(2):
        for c in range(3):
            assert set(shifted[i, c].flatten().tolist()) <= set(x[i, c].flatten().tolist())


def synthetic_faces(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose labels survive global pooling: gender = brightness, age group = the grey level of a patch,
    race = which channel gets a coloured block, and whether a second block is there."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.stack([torch.randint(0, 2, (n,), generator=g), torch.randint(0, 6, (n,), generator=g),
                          torch.randint(0, 5, (n,), generator=g)], dim=1)
    images = torch.randint(0, 40, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    for i, (gender, age, race) in enumerate(labels.tolist()):
        images[i] += 100 * gender
        images[i, race % 3, :, :8] = 250
        if race >= 3:
            images[i, :, :, 26:] = 250
        images[i, :, 16:, 8:26] = 40 * age
    return images, labels


def test_training_learns_visible_labels():
    images, labels = synthetic_faces(256, 0)
    net = train_feature_net(images, labels, FeatureTrainConfig(epochs=10, batch_size=32, lr=1e-2, max_shift=1),
                            FaceNetConfig(image_size=32, widths=(16, 32)))
    test_images, test_labels = synthetic_faces(128, 1)
    accuracy = attribute_accuracy(net, test_images, test_labels)
    assert accuracy["gender"] > 0.9
    assert accuracy["age"] > 0.5 and accuracy["race"] > 0.6  # chance: 1/6 and 1/5


def test_features_cli_trains_and_writes_metadata(tmp_path: Path, tiny_face_pack: Path, capsys):
    out = tmp_path / "w" / "faces.safetensors"
    assert main(["train", "--data", str(tiny_face_pack), "--out", str(out), "--epochs", "1", "--batch-size", "8"]) == 0
    meta = json.loads(metadata_path(out).read_text())
    assert meta["training"]["epochs"] == 1 and meta["training"]["train_images"] == 12
    assert set(meta["test_accuracy"]) == set(HEADS) and meta["test_images"] == 6
    assert meta["feature_dim"] == 128
    assert load_feature_net(out).config == FaceNetConfig()
    assert "test accuracy" in capsys.readouterr().out


# --- the shipped weights --------------------------------------------------------------------------------


def test_shipped_weights_load_and_beat_the_majority_class():
    net = load_feature_net(DEFAULT_WEIGHTS)
    meta = json.loads(metadata_path(DEFAULT_WEIGHTS).read_text())
    # the recorded accuracies belong to exactly these weights and this architecture
    assert hashlib.sha256(DEFAULT_WEIGHTS.read_bytes()).hexdigest() == meta["file_sha256"]
    assert meta["file"] == DEFAULT_WEIGHTS.name and list(net.config.widths) == meta["net"]["widths"]
    assert meta["feature_dim"] == net.config.feature_dim == 128
    for head in HEADS:  # held-out accuracy recorded at training time, vs always guessing the commonest class
        assert meta["test_accuracy"][head] > meta["test_majority_class_rate"][head] + 0.1, head


@pytest.mark.slow
@pytest.mark.skipif(not UTKFACE_PACK.is_file(), reason="the UTKFace pack is not on this machine")
def test_shipped_weights_accuracy_on_held_out_faces():
    from ddpm_app.io.data import load_pack

    test = load_pack(UTKFACE_PACK, 64, split="test", limit=300)
    labelled = label_names(test.names)
    accuracy = attribute_accuracy(load_feature_net(DEFAULT_WEIGHTS), test.images[labelled.indices], labelled.labels)
    assert accuracy["gender"] > 0.75 and accuracy["race"] > 0.6 and accuracy["age"] > 0.45
