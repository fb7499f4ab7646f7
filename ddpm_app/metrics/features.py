"""A face-attribute CNN whose penultimate features give a Fréchet distance for faces ("FD-UTK").

Standard FID uses Inception-v3 features trained on ImageNet, whose weights cannot be fetched here. Instead a
small CNN is trained on the UTKFace training split's own labels — gender (2 classes), race (5) and age group
(6) — and its 128-dimensional global-average-pooled features (the layer before the three linear heads) serve
as the embedding. The Fréchet distance between Gaussians fitted to two sets of features,

    FD = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2·(Σ₁Σ₂)^{1/2})        (Heusel et al. 2017, eq. 6),

then measures how far generated faces are from real ones *as this network sees faces*. FD-UTK values are
not comparable with Inception FID, nor between feature networks trained with different settings or seeds.

Run ``python -m ddpm_app.cli.features train --data utkface-64.zip --out ddpm_app/assets/face_features.safetensors``
to reproduce the shipped weights.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddpm_app.image import from_uint8

DEFAULT_WEIGHTS = Path(__file__).parents[1] / "assets" / "face_features.safetensors"
FORMAT = "ddpm-app-face-features"

GENDERS: tuple[str, ...] = ("male", "female")
RACES: tuple[str, ...] = ("White", "Black", "Asian", "Indian", "Others")
AGE_GROUPS: tuple[str, ...] = ("0-9", "10-19", "20-29", "30-39", "40-59", "60+")
AGE_GROUP_STARTS: tuple[int, ...] = (0, 10, 20, 30, 40, 60)
# the classifier's heads, in the order of the label columns and of AttributeLogits
HEADS: dict[str, tuple[str, ...]] = {"gender": GENDERS, "age": AGE_GROUPS, "race": RACES}


# ---------------------------------------------------------------------------------------------------------
# labels from UTKFace file names


class FaceLabels(NamedTuple):
    """UTKFace's labels for one face: age in years, gender (0 male, 1 female), race (0…4)."""

    age: int
    gender: int
    race: int

    @property
    def age_group(self) -> int:
        """Index into :data:`AGE_GROUPS`."""
        return max(i for i, start in enumerate(AGE_GROUP_STARTS) if self.age >= start)


def parse_utkface_name(name: str) -> FaceLabels | None:
    """``…/AGE_GENDER_RACE_TIMESTAMP.jpg`` → its labels, or None for a name that does not follow that form."""
    parts = PurePosixPath(name).name.split(".")[0].split("_")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        return None
    age, gender, race = int(parts[0]), int(parts[1]), int(parts[2])
    if not (0 <= age <= 130 and gender in (0, 1) and 0 <= race < len(RACES)):
        return None
    return FaceLabels(age, gender, race)


class LabelledNames(NamedTuple):
    """The indices of the names that parse as UTKFace labels and their (K, 3) labels (gender, age group, race)."""

    indices: Tensor  # (K,) long
    labels: Tensor  # (K, 3) long, columns in HEADS order


def label_names(names: list[str]) -> LabelledNames:
    """Parse every name; malformed ones are left out (their indices are not listed)."""
    kept, rows = [], []
    for i, name in enumerate(names):
        parsed = parse_utkface_name(name)
        if parsed is not None:
            kept.append(i)
            rows.append((parsed.gender, parsed.age_group, parsed.race))
    return LabelledNames(torch.tensor(kept, dtype=torch.long),
                         torch.tensor(rows, dtype=torch.long).reshape(-1, len(HEADS)))


def is_utkface(names: list[str], min_fraction: float = 0.9) -> bool:
    """Whether at least ``min_fraction`` of the names carry UTKFace labels (a few malformed ones are normal)."""
    return bool(names) and len(label_names(names).indices) >= min_fraction * len(names)


# ---------------------------------------------------------------------------------------------------------
# the network


@dataclass(frozen=True)
class FaceNetConfig:
    image_size: int = 64  # inputs of another size are resized to this first
    widths: tuple[int, ...] = (32, 64, 96, 128)  # one stage each: stride-2 conv, conv; the last is the feature size
    dropout: float = 0.2  # before the heads, training only

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(self.widths))

    @property
    def feature_dim(self) -> int:
        return self.widths[-1]


class AttributeLogits(NamedTuple):
    gender: Tensor  # (B, 2)
    age: Tensor  # (B, 6)
    race: Tensor  # (B, 5)


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch),
                         nn.ReLU(inplace=True))


class FaceFeatureNet(nn.Module):
    """Four conv stages (64→32→16→8→4 pixels), global average pooling to the features, three linear heads."""

    def __init__(self, config: FaceNetConfig = FaceNetConfig()):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        ch = 3
        for width in config.widths:
            layers += [_conv_bn_relu(ch, width, 2), _conv_bn_relu(width, width, 1)]
            ch = width
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(config.dropout)
        self.heads = nn.ModuleDict({name: nn.Linear(ch, len(classes)) for name, classes in HEADS.items()})

    def prepare(self, images: Tensor) -> Tensor:
        """uint8 images (B, 3, H, W) → float in [−1, 1] at the network's input size (antialiased resize)."""
        x = from_uint8(images) if images.dtype == torch.uint8 else images.float()
        size = self.config.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return x

    def features(self, x: Tensor) -> Tensor:
        """The penultimate layer: (B, 3, S, S) in [−1, 1] → (B, feature_dim), global-average-pooled."""
        return self.body(x).mean(dim=(2, 3))

    def classify(self, features: Tensor) -> AttributeLogits:
        h = self.dropout(features)
        return AttributeLogits(*(self.heads[name](h) for name in HEADS))

    def forward(self, x: Tensor) -> AttributeLogits:
        return self.classify(self.features(x))


def save_feature_net(net: FaceFeatureNet, path: str | Path) -> Path:
    """Write the weights as safetensors, with the config in the file's metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    metadata = {"format": FORMAT, "config": json.dumps(asdict(net.config)), "heads": json.dumps(HEADS)}
    save_file(state, str(path), metadata=metadata)
    return path


def load_feature_net(path: str | Path = DEFAULT_WEIGHTS, device: torch.device | str = "cpu") -> FaceFeatureNet:
    """Rebuild the network from a safetensors file written by :func:`save_feature_net` (eval mode)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no face-feature weights; train them with "
                                "`python -m ddpm_app.cli.features train --data utkface-64.zip --out FILE`")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path}: not a face-feature weights file (format = {metadata.get('format')!r})")
    if json.loads(metadata["heads"]) != {k: list(v) for k, v in HEADS.items()}:
        raise ValueError(f"{path}: its class heads differ from this version's {HEADS}")
    net = FaceFeatureNet(FaceNetConfig(**json.loads(metadata["config"])))
    net.load_state_dict(load_file(str(path)), strict=True)
    return net.to(device).eval()


# ---------------------------------------------------------------------------------------------------------
# embedding images


class Embedding(NamedTuple):
    """The penultimate features of a set of images and the classifier's predicted class for each head."""

    features: Tensor  # (N, F) float64, on the CPU
    predictions: Tensor  # (N, 3) long: gender, age group, race


class FaceFeatures(NamedTuple):
    """Face features (N, F) of the samples, the held-out split and the training split."""

    samples: Tensor
    test: Tensor
    train: Tensor


@torch.inference_mode()
def embed(net: FaceFeatureNet, images: Tensor, batch_size: int = 500) -> Embedding:
    """Features and predicted attributes of uint8 images (N, 3, H, W), in batches on the net's device."""
    net.eval()
    device = next(net.parameters()).device
    features, predictions = [], []
    for start in range(0, len(images), batch_size):
        x = net.prepare(images[start:start + batch_size].to(device))
        h = net.features(x)
        logits = net.classify(h)
        features.append(h.double().cpu())
        predictions.append(torch.stack([lg.argmax(dim=1) for lg in logits], dim=1).cpu())
    if not features:
        return Embedding(torch.zeros(0, net.config.feature_dim, dtype=torch.float64),
                         torch.zeros(0, len(HEADS), dtype=torch.long))
    return Embedding(torch.cat(features), torch.cat(predictions))


def class_fractions(predictions: Tensor) -> dict[str, list[float]]:
    """For each head, the fraction of images in each class (N, 3) → {"gender": [p_male, p_female], …}."""
    n = max(len(predictions), 1)
    return {name: (torch.bincount(predictions[:, i], minlength=len(classes)).double() / n).tolist()
            for i, (name, classes) in enumerate(HEADS.items())}


def total_variation(p: list[float], q: list[float]) -> float:
    """½·Σ|p − q|: 0 for equal distributions, 1 for disjoint ones."""
    return 0.5 * sum(abs(a - b) for a, b in zip(p, q))


# ---------------------------------------------------------------------------------------------------------
# Fréchet distance


class GaussianStats(NamedTuple):
    """Mean and covariance of a set of feature vectors, in float64."""

    mean: Tensor  # (F,)
    cov: Tensor  # (F, F)
    count: int


def gaussian_stats(features: Tensor) -> GaussianStats:
    """μ and the unbiased covariance Σ of features (N, F), N ≥ 2."""
    x = features.double()
    if len(x) < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {len(x)}")
    return GaussianStats(x.mean(dim=0), torch.cov(x.T), len(x))


def sqrtm_psd(a: Tensor) -> Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix (negative round-off eigenvalues → 0)."""
    a = 0.5 * (a + a.T)
    eigenvalues, vectors = torch.linalg.eigh(a)
    return (vectors * eigenvalues.clamp(min=0).sqrt()) @ vectors.T


def trace_sqrt_product(sigma1: Tensor, sigma2: Tensor) -> Tensor:
    """Tr((Σ₁Σ₂)^{1/2}) = Tr((Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}): the eigenvalues of Σ₁Σ₂ are those of the symmetric
    PSD matrix Σ₁^{1/2}Σ₂Σ₁^{1/2}, so the trace is a sum of square roots of eigh's eigenvalues."""
    root1 = sqrtm_psd(sigma1.double())
    middle = root1 @ sigma2.double() @ root1
    middle = 0.5 * (middle + middle.T)
    return torch.linalg.eigvalsh(middle).clamp(min=0).sqrt().sum()


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2·(Σ₁Σ₂)^{1/2})  (the Fréchet / 2-Wasserstein distance² of two Gaussians)."""
    diff = a.mean.double() - b.mean.double()
    value = diff @ diff + a.cov.trace() + b.cov.trace() - 2.0 * trace_sqrt_product(a.cov, b.cov)
    return float(value)


def feature_fd(features1: Tensor, features2: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N₁, F) and (N₂, F)."""
    return frechet_distance(gaussian_stats(features1), gaussian_stats(features2))


def fd_bootstrap_se(features: Tensor, reference: Tensor, draws: int = 200,
                    generator: torch.Generator | None = None) -> float:
    """The standard error of ``feature_fd(features, reference)`` as far as it comes from which N samples were drawn:
    the spread of the distance over ``draws`` resamplings of ``features`` (N, F) with replacement, the reference held
    fixed (every model is compared with the same held-out set, so its own draw is shared by all of them)."""
    ref = gaussian_stats(reference)
    n = len(features)
    values = torch.tensor([frechet_distance(gaussian_stats(features[torch.randint(n, (n,), generator=generator)]), ref)
                           for _ in range(draws)], dtype=torch.float64)
    return float(values.std())


def fd_floor_spread(pool: Tensor, reference: Tensor, n: int, draws: int = 20,
                    generator: torch.Generator | None = None) -> float:
    """The standard deviation of ``feature_fd`` between ``n`` feature vectors drawn without replacement from
    ``pool`` and ``reference``, over ``draws`` independent draws: how much the distance of two sets of real images
    moves with the draw alone, at this N."""
    ref = gaussian_stats(reference)
    values = torch.tensor([frechet_distance(gaussian_stats(pool[torch.randperm(len(pool), generator=generator)[:n]]),
                                            ref) for _ in range(draws)], dtype=torch.float64)
    return float(values.std())


# ---------------------------------------------------------------------------------------------------------
# training


@dataclass(frozen=True)
class FeatureTrainConfig:
    epochs: int = 8  # passes over the training split
    batch_size: int = 128  # images per step
    lr: float = 3e-3  # peak learning rate of the one-cycle schedule
    weight_decay: float = 5e-4  # AdamW weight decay
    max_shift: int = 4  # random translations of up to this many pixels (and random flips)
    seed: int = 0  # seed of the initial weights, the batch order and the augmentation


class TrainProgress(NamedTuple):
    epoch: int  # 1-based
    step: int  # steps done so far
    total_steps: int
    loss: float  # mean training loss of the epoch so far (sum of the three cross-entropies)
    elapsed_s: float


def augment(x: Tensor, max_shift: int, generator: torch.Generator | None = None) -> Tensor:
    """Random left–right flips and integer translations of up to ``max_shift`` pixels (edges replicated)."""
    b, _, h, w = x.shape
    flip = torch.rand(b, generator=generator, device=x.device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if max_shift <= 0:
        return x
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")  # (B, C, H+2s, W+2s)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def train_feature_net(images: Tensor, labels: Tensor, config: FeatureTrainConfig = FeatureTrainConfig(),
                      net_config: FaceNetConfig = FaceNetConfig(), device: torch.device | str = "cpu",
                      progress: Callable[[TrainProgress], None] | None = None) -> FaceFeatureNet:
    """Train the three heads jointly (sum of cross-entropies) on uint8 images (N, 3, H, W) and labels (N, 3)."""
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need as many labels as images, and some images: got {len(images)} and {len(labels)}")
    torch.manual_seed(config.seed)  # only the initial weights; batches and augmentation use `generator`
    net = FaceFeatureNet(net_config).to(device)
    generator = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = math.ceil(len(images) / config.batch_size)
    total = config.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total)
    start, step = time.perf_counter(), 0
    net.train()
    for epoch in range(1, config.epochs + 1):
        order = torch.randperm(len(images), generator=generator)
        running, seen = 0.0, 0
        for i in range(0, len(images), config.batch_size):
            idx = order[i:i + config.batch_size]
            x = augment(net.prepare(images[idx]), config.max_shift, generator).to(device)
            y = labels[idx].to(device)
            logits = net(x)
            loss = sum(F.cross_entropy(lg, y[:, k]) for k, lg in enumerate(logits))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            running += float(loss.detach()) * len(idx)
            seen += len(idx)
            if progress is not None:
                progress(TrainProgress(epoch, step, total, running / seen, time.perf_counter() - start))
    return net.eval()


def attribute_accuracy(net: FaceFeatureNet, images: Tensor, labels: Tensor, batch_size: int = 500) -> dict[str, float]:
    """Fraction of correct predictions per head on labelled uint8 images."""
    predictions = embed(net, images, batch_size).predictions
    return {name: float((predictions[:, i] == labels[:, i]).double().mean()) for i, name in enumerate(HEADS)}


# ---------------------------------------------------------------------------------------------------------
# the weights' record


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def metadata_path(weights: str | Path) -> Path:
    """The JSON file that describes a weights file: same name, ``.json``."""
    return Path(weights).with_suffix(".json")
