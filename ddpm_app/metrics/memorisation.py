"""Memorisation: does a model copy its training images? Each sample's nearest training image, in pixels (mirror
images included, since training flips) and in the face features, against the same distance for held-out images:
a median ratio well below 1 means samples copy the training set."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from ddpm_app.image import from_uint8, save_grid
from ddpm_app.io.data import ImagePack
from ddpm_app.metrics.features import FaceFeatures
from ddpm_app.runtime.inference import float32_matmul


@dataclass(frozen=True)
class Neighbour:
    """A sample's nearest training image, in pixels and in the face features."""

    sample: int
    pixel_distance: float  # RMS distance of 8-bit values scaled to [0, 1]
    pixel_train: str
    pixel_flipped: bool  # the nearest was the training image's mirror image
    feature_distance: float | None
    feature_train: str | None


@dataclass(frozen=True)
class Memorisation:
    num_samples: int
    num_test: int
    pixel_median: float  # median over samples of the distance to the nearest training image
    pixel_test_median: float  # median over held-out images of the same
    pixel_ratio: float  # pixel_median / pixel_test_median
    pixel_min: float
    pixel_test_min: float
    feature_median: float | None
    feature_test_median: float | None
    feature_ratio: float | None
    grid: str
    neighbours: list[Neighbour]


class Nearest(NamedTuple):
    """For each query, the distance to its nearest reference image, that image's index, and whether its mirror
    image was the nearer one; (Q,) each."""

    distance: Tensor
    index: Tensor
    flipped: Tensor


@torch.inference_mode()
def nearest_pixels(queries: Tensor, reference: Tensor, device: torch.device, *, flips: bool = True,
                   chunk: int = 4096) -> Nearest:
    """Nearest reference image of each uint8 query in RMS pixel distance (values scaled to [0, 1]).

    ‖q − r‖² = ‖q‖² + ‖r‖² − 2·q·r in fp32 with TF32 off, both centred at 0.5 to keep the cancellation small
    (an exact copy comes out within ~1e-4 of 0). With ``flips`` each reference image's mirror image is tried too.
    """
    dims = queries[0].numel()
    q = (queries.to(device).float() / 255.0 - 0.5).reshape(len(queries), -1)  # (Q, D)
    q_sq = q.square().sum(dim=1, keepdim=True)
    best = torch.full((len(q),), math.inf, device=device)
    best_index = torch.zeros(len(q), dtype=torch.long, device=device)
    best_flip = torch.zeros(len(q), dtype=torch.bool, device=device)
    with float32_matmul("fp32", device):
        for start in range(0, len(reference), chunk):
            block = reference[start:start + chunk].to(device)
            for flipped in ((False, True) if flips else (False,)):
                r = ((block.flip(-1) if flipped else block).float() / 255.0 - 0.5).reshape(len(block), -1)
                d2 = q_sq + r.square().sum(dim=1)[None, :] - 2.0 * q @ r.T  # (Q, chunk)
                value, index = d2.min(dim=1)
                better = value < best
                best = torch.where(better, value, best)
                best_index = torch.where(better, index + start, best_index)
                best_flip = torch.where(better, torch.tensor(flipped, device=device), best_flip)
    distance = (best.clamp(min=0) / dims).sqrt()
    return Nearest(distance.cpu(), best_index.cpu(), best_flip.cpu())


def nearest_features(queries: Tensor, reference: Tensor) -> Nearest:
    """Nearest reference of each query in Euclidean feature distance (float64 features on the CPU)."""
    d = torch.cdist(queries.double(), reference.double())  # (Q, R)
    value, index = d.min(dim=1)
    return Nearest(value, index, torch.zeros(len(queries), dtype=torch.bool))


def _median(x: Tensor) -> float:
    return float(x.double().quantile(0.5))


def measure_memorisation(k: int, test: ImagePack, train: ImagePack, samples: Tensor, device: torch.device,
                         embeddings: FaceFeatures | None, out: Path) -> Memorisation:
    """The first ``k`` samples (uint8) against the training images, and the held-out images as the reference; their
    grid is written to ``out/memorisation.png``."""
    queries = samples[:k]
    near_samples = nearest_pixels(queries, train.images, device)
    near_test = nearest_pixels(test.images, train.images, device)
    feature_samples = feature_test = None
    if embeddings is not None:
        feature_samples = nearest_features(embeddings.samples[:k], embeddings.train)
        feature_test = nearest_features(embeddings.test, embeddings.train)

    # the grid: each sample, then its nearest training image in pixels (mirrored if that was nearer),
    # then (with face features) its nearest in features; four samples per row
    tiles = []
    for i in range(k):
        tiles.append(queries[i])
        match = train.images[int(near_samples.index[i])]
        tiles.append(match.flip(-1) if bool(near_samples.flipped[i]) else match)
        if feature_samples is not None:
            tiles.append(train.images[int(feature_samples.index[i])])
    per_sample = 3 if feature_samples is not None else 2
    grid_path = save_grid(from_uint8(torch.stack(tiles)), out / "memorisation.png", nrow=4 * per_sample)

    neighbours = [Neighbour(
        sample=i, pixel_distance=float(near_samples.distance[i]), pixel_train=train.names[int(near_samples.index[i])],
        pixel_flipped=bool(near_samples.flipped[i]),
        feature_distance=None if feature_samples is None else float(feature_samples.distance[i]),
        feature_train=None if feature_samples is None else train.names[int(feature_samples.index[i])],
    ) for i in range(k)]
    pixel_median, pixel_test_median = _median(near_samples.distance), _median(near_test.distance)
    feature_median = feature_test_median = feature_ratio = None
    if feature_samples is not None and feature_test is not None:
        feature_median, feature_test_median = _median(feature_samples.distance), _median(feature_test.distance)
        feature_ratio = feature_median / feature_test_median if feature_test_median > 0 else math.inf
    return Memorisation(
        num_samples=k, num_test=len(test), pixel_median=pixel_median, pixel_test_median=pixel_test_median,
        pixel_ratio=pixel_median / pixel_test_median if pixel_test_median > 0 else math.inf,
        pixel_min=float(near_samples.distance.min()), pixel_test_min=float(near_test.distance.min()),
        feature_median=feature_median, feature_test_median=feature_test_median, feature_ratio=feature_ratio,
        grid=grid_path.name, neighbours=neighbours,
    )
