"""How good is a model? Likelihood bound, FD-UTK, attribute coverage, memorisation and a sample grid.

    python -m ddpm_app.cli.evaluate MODEL_DIR --data PACK.zip [--split test] [--num-samples N] [--sampler ddpm|ddim --steps K]

writes ``eval.json``, ``samples_<sampler>.png`` (8×8) and ``memorisation.png`` into ``--out`` (default
``MODEL_DIR/eval``) and prints a table. The same as a library call: ``evaluate(model_dir, data, EvalConfig(...))``.

1. **Bits/dim** on the held-out split: the DDPM variational bound (:mod:`ddpm_app.diffusion.likelihood`), every timestep
   summed unless ``--bpd-timesteps`` asks for a (labelled) stratified estimate.
2. **FD-UTK**: Fréchet distance between generated samples and the held-out split in the penultimate features of
   a small UTKFace attribute CNN (:mod:`ddpm_app.metrics.features`), with the same distance between as many training
   images and the held-out split as the floor, and the classifier's predicted gender / age group / race
   distribution of the samples next to the held-out split's. Error bars: a bootstrap standard error over the
   samples, and the floor's spread over draws of training images. Not comparable with Inception FID. Only for packs
   whose file names carry UTKFace labels; skipped (and said so) for others.
3. **Memorisation**: each of 64 samples' nearest training image, in pixels (mirror images included, since
   training flips) and in the face features; the median distance over the samples divided by the median
   distance of held-out images to their nearest training image. Well below 1 means samples copy the training set
   (:mod:`ddpm_app.metrics.memorisation`).
4. **A sample grid** from the sampler and step count asked for.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from ddpm_app.diffusion.likelihood import BitsPerDim, bits_per_dim
from ddpm_app.diffusion.samplers import DEFAULT_DDIM_STEPS, EpsModel, SamplerName, SamplerSettings, Variance
from ddpm_app.image import from_uint8, save_grid, to_uint8
from ddpm_app.io.data import ImagePack, load_pack
from ddpm_app.io.loading import is_repo_id, load_pretrained
from ddpm_app.io.model_folder import LoadedModel
from ddpm_app.metrics.features import (
    DEFAULT_WEIGHTS,
    HEADS,
    FaceFeatures,
    class_fractions,
    embed,
    fd_bootstrap_se,
    fd_floor_spread,
    feature_fd,
    is_utkface,
    label_names,
    load_feature_net,
    sha256_file,
    total_variation,
)
from ddpm_app.metrics.memorisation import Memorisation, measure_memorisation
from ddpm_app.runtime.inference import Precision, float32_matmul, prepare, resolve_device

GRID_SAMPLES = 64  # an 8×8 grid
# FD-UTK's error bars: bootstrap resamplings of the samples, and draws of training images for the floor's spread.
# At N = 1,000 the distance moved 0.79 → 1.00 between two sampling seeds of the shipped faces model (floor 0.60 →
# 0.51), so one figure alone does not rank close models
BOOTSTRAP_DRAWS = 200
FLOOR_DRAWS = 20


@dataclass(frozen=True)
class EvalConfig:
    """What to measure and how; every field is also a command-line option."""

    split: str = "test"  # held-out folder of the pack: bits/dim, FD reference, memorisation reference
    train_split: str = "train"  # the folder the model was trained on: FD floor and nearest neighbours
    num_samples: int = 1000  # generated images for FD-UTK and attribute coverage (at least 64 are drawn for the grid)
    sampler: SamplerName = "ddpm"  # ddpm runs all T steps
    steps: int | None = None  # DDIM steps (none: the sampler's default)
    eta: float = 0.0  # DDIM η (0: deterministic)
    clip_x0: bool = True  # clip x̂₀ to [−1, 1] in the reverse step, for the samples and the bound alike
    bpd_images: int | None = None  # held-out images for bits/dim (none: all of them)
    bpd_timesteps: int | None = None  # timesteps per image for bits/dim (none: all T, the exact sum; fewer: an estimate)
    bpd_variance: Variance = "posterior"  # reverse-step variance: σ_q(t)² or β_t
    skip_bpd: bool = False  # leave out bits/dim
    batch_size: int = 256  # network inputs per call, for sampling and for the bound
    bound_precision: Precision = "fp32"  # network precision for the bound (on CUDA fp32 turns TF32 off)
    sample_precision: Precision = "tf32"  # network precision for sampling (tf32 is fp32 on the CPU)
    compile: bool = False  # torch.compile the network (CUDA only)
    cpu_runtime: str = "pytorch"  # who runs the network on the CPU: pytorch, openvino or auto (as app.py --cpu-runtime)
    memorisation_samples: int = 64  # samples checked against the training set
    features: str | None = None  # face-feature weights (default: the shipped ddpm_app/assets/face_features.safetensors)
    seed: int = 0  # seeds the samples, the bound's noise and the training subset of the FD floor
    device: str = "auto"  # auto | cuda | cpu

    def __post_init__(self) -> None:
        if self.num_samples < 0 or self.batch_size < 1 or self.memorisation_samples < 1:
            raise ValueError("num_samples must be ≥ 0, batch_size and memorisation_samples ≥ 1")
        if self.memorisation_samples > max(self.num_samples, GRID_SAMPLES):
            raise ValueError(f"memorisation_samples ({self.memorisation_samples}) is more than the samples drawn")
        if self.bpd_timesteps is not None and self.bpd_timesteps < 2:
            raise ValueError("bpd_timesteps must be at least 2 (or none for every timestep)")
        if self.bpd_images is not None and self.bpd_images < 1:
            raise ValueError("bpd_images must be at least 1 (or none for all)")

    def sampler_settings(self, timesteps: int) -> SamplerSettings:
        """The sampler, its steps, η and clipping, checked against the model's T."""
        steps = DEFAULT_DDIM_STEPS if self.steps is None and self.sampler == "ddim" else self.steps
        return SamplerSettings.checked(self.sampler, steps, self.eta, self.clip_x0, timesteps)


# ---------------------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class AttributeCoverage:
    """How one attribute is distributed: predicted on samples, predicted on the held-out split, its true labels."""

    classes: list[str]
    samples: list[float]
    test_predicted: list[float]
    test_labels: list[float]
    total_variation: float  # ½·Σ|samples − test_predicted|


@dataclass(frozen=True)
class FaceMetrics:
    fd_samples_test: float  # FD-UTK(generated, held-out)
    fd_train_test: float  # FD-UTK(as many training images, held-out): what a perfect model would get
    num_samples: int
    num_train_floor: int  # training images in the floor (num_samples, unless the split is smaller)
    num_test: int
    feature_dim: int
    weights: str
    weights_sha256: str
    coverage: dict[str, AttributeCoverage]
    # error bars (None in reports made before they were kept): the bootstrap standard error of fd_samples_test over
    # the samples, and the spread of the floor over FLOOR_DRAWS draws of as many training images
    fd_samples_test_se: float | None = None
    fd_train_test_sd: float | None = None


@dataclass(frozen=True)
class EvalResult:
    model: str
    data: str
    config: EvalConfig
    arch: str
    parameters: int
    schedule: dict
    image_size: int
    device: str
    num_test: int
    num_train: int
    sampler: str  # e.g. "ddpm (1000 steps)" or "ddim (50 steps, η = 0)"
    grid: str
    bpd: BitsPerDim | None
    faces: FaceMetrics | None
    faces_note: str  # why face metrics are missing, or what they are
    memorisation: Memorisation
    seconds: dict[str, float]

    def to_dict(self) -> dict:
        return {"format": "ddpm-app-eval", "format_version": 1, **asdict(self)}


# ---------------------------------------------------------------------------------------------------------
# helpers


def network(loaded: LoadedModel, precision: Precision, compile: bool, device: torch.device,
            cpu_runtime: str = "pytorch") -> EpsModel:
    """ε_θ for sampling or the bound: channels_last, in ``precision`` on CUDA (bf16 autocast, or fp32 with TF32
    set by :func:`~ddpm_app.runtime.inference.float32_matmul`), compiled if asked; the output is always float32.

    On the CPU it is the app's network (:func:`~ddpm_app.runtime.inference.prepare_cpu`) for ``cpu_runtime`` (bf16 runs in
    OpenVINO)."""
    if precision == "fp16" and device.type != "cuda":
        precision = "fp32"  # no fp16 on the CPU
    return prepare(loaded.model, device, compile=compile and device.type == "cuda", precision=precision,
                   cpu_runtime=cpu_runtime)


def generate(model: EpsModel, loaded: LoadedModel, config: EvalConfig, count: int, device: torch.device,
             progress: Callable[[int, int], None] | None = None) -> Tensor:
    """``count`` samples as uint8 (count, C, H, W) on the CPU, in batches, from one seeded generator.

    ``progress(done, total)`` counts network evaluations of single images (samples × steps).
    """
    cfg = loaded.config
    settings = config.sampler_settings(loaded.schedule.timesteps)
    generator = torch.Generator(device).manual_seed(config.seed)
    steps = settings.num_steps(loaded.schedule.timesteps - 1)
    out, done = [], 0
    if progress is not None:
        progress(0, count * steps)
    for start in range(0, count, config.batch_size):
        n = min(config.batch_size, count - start)
        chain = settings.run(model, loaded.schedule, (n, cfg.channels, cfg.image_size, cfg.image_size),
                             generator=generator, device=device)
        for step in chain:
            done += n
            if progress is not None:
                progress(done, count * steps)
        out.append(to_uint8(step.x_prev).cpu())
    return torch.cat(out)


def default_out_dir(model: str | Path) -> Path:
    """``MODEL_DIR/eval`` for a folder; ``eval/<user>--<name>`` for a Hub repo id."""
    if isinstance(model, str) and is_repo_id(model):
        return Path("eval") / model.replace("/", "--")
    return Path(model) / "eval"


def grid_name(settings: SamplerSettings) -> str:
    return "samples_ddpm.png" if settings.sampler == "ddpm" else f"samples_ddim{settings.steps}.png"


# ---------------------------------------------------------------------------------------------------------
# the evaluation


StageProgress = Callable[[str, int, int], None]  # (stage, done, total)


def evaluate(model_dir: str | Path, data: str | Path, config: EvalConfig = EvalConfig(), *,
             out_dir: str | Path | None = None, progress: StageProgress | None = None) -> EvalResult:
    """Measure a model against a data pack and write ``eval.json`` and the grids into ``out_dir``."""
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    tick = lambda stage: (lambda done, total: progress(stage, done, total)) if progress else None  # noqa: E731

    device = resolve_device(config.device)
    out = Path(out_dir) if out_dir is not None else default_out_dir(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_pretrained(model_dir, device)
    settings = config.sampler_settings(loaded.schedule.timesteps)
    size, channels = loaded.config.image_size, loaded.config.channels
    if channels != 3:
        raise ValueError(f"the model makes {channels}-channel images; the data packs are RGB")
    test = load_pack(data, size, split=config.split)
    train = load_pack(data, size, split=config.train_split)
    seconds["load"] = time.perf_counter() - clock

    # 1. samples and their grid
    t0 = time.perf_counter()
    count = max(config.num_samples, GRID_SAMPLES)
    with float32_matmul(config.sample_precision, device):
        net = network(loaded, config.sample_precision, config.compile, device, config.cpu_runtime)
        samples = generate(net, loaded, config, count, device, tick("sampling"))
    grid_path = save_grid(from_uint8(samples[:GRID_SAMPLES]), out / grid_name(settings), nrow=8)
    seconds["sampling"] = time.perf_counter() - t0

    # 2. bits/dim on the held-out split
    bpd = None
    if not config.skip_bpd:
        t0 = time.perf_counter()
        images = test.images[:config.bpd_images]
        generator = torch.Generator(device).manual_seed(config.seed + 1)
        with float32_matmul(config.bound_precision, device):
            net = network(loaded, config.bound_precision, config.compile, device, config.cpu_runtime)
            bpd = bits_per_dim(net, loaded.schedule, images,
                               num_timesteps=config.bpd_timesteps, batch_size=config.batch_size,
                               generator=generator, variance=config.bpd_variance, clip_x0=config.clip_x0,
                               device=device, progress=tick("bits/dim"))
        seconds["bpd"] = time.perf_counter() - t0

    # 3. face features: FD-UTK and attribute coverage
    t0 = time.perf_counter()
    faces, note, embeddings = _face_metrics(config, test, train, samples, device)
    seconds["features"] = time.perf_counter() - t0

    # 4. memorisation
    t0 = time.perf_counter()
    memorisation = measure_memorisation(config.memorisation_samples, test, train, samples, device, embeddings, out)
    seconds["memorisation"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - clock

    result = EvalResult(
        model=str(model_dir), data=str(data), config=config, arch=loaded.config.arch,
        parameters=loaded.num_parameters, schedule=loaded.config.schedule.to_dict(), image_size=size,
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        num_test=len(test), num_train=len(train), sampler=settings.label(),
        grid=grid_path.name, bpd=bpd, faces=faces, faces_note=note, memorisation=memorisation,
        seconds={k: round(v, 2) for k, v in seconds.items()},
    )
    (out / "eval.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result




def _face_metrics(config: EvalConfig, test: ImagePack, train: ImagePack, samples: Tensor, device: torch.device
                  ) -> tuple[FaceMetrics | None, str, FaceFeatures | None]:
    if not is_utkface(test.names):
        return None, ("skipped: the pack's file names are not UTKFace labels (AGE_GENDER_RACE_…), so the face "
                      "classifier's features mean nothing here"), None
    weights = Path(config.features) if config.features else DEFAULT_WEIGHTS
    if not weights.is_file():
        return None, f"skipped: no face-feature weights at {weights}", None
    net = load_feature_net(weights, device)
    batch = max(config.batch_size, 256)
    emb_samples, emb_test, emb_train = (embed(net, x, batch) for x in (samples, test.images, train.images))
    embeddings = FaceFeatures(emb_samples.features, emb_test.features, emb_train.features)
    if config.num_samples < 2:
        return None, "skipped: FD-UTK needs --num-samples of at least 2", embeddings

    gen = torch.Generator().manual_seed(config.seed + 2)
    generated = emb_samples.features[:config.num_samples]
    floor_index = torch.randperm(len(train), generator=gen)[:len(generated)]
    labelled = label_names(test.names)
    true_fractions = class_fractions(labelled.labels)
    test_fractions = class_fractions(emb_test.predictions)
    sample_fractions = class_fractions(emb_samples.predictions[:config.num_samples])
    coverage = {name: AttributeCoverage(list(classes), sample_fractions[name], test_fractions[name],
                                        true_fractions[name],
                                        total_variation(sample_fractions[name], test_fractions[name]))
                for name, classes in HEADS.items()}
    faces = FaceMetrics(
        fd_samples_test=feature_fd(generated, emb_test.features),
        fd_train_test=feature_fd(emb_train.features[floor_index], emb_test.features),
        num_samples=len(generated), num_train_floor=len(floor_index), num_test=len(test), feature_dim=net.config.feature_dim,
        weights=weights.name, weights_sha256=sha256_file(weights), coverage=coverage,
        fd_samples_test_se=fd_bootstrap_se(generated, emb_test.features, BOOTSTRAP_DRAWS, gen),
        fd_train_test_sd=(fd_floor_spread(emb_train.features, emb_test.features, len(floor_index), FLOOR_DRAWS, gen)
                          if len(floor_index) < len(train) else 0.0),
    )
    note = ("FD-UTK: Fréchet distance in the penultimate features of a small UTKFace attribute CNN; "
            "not comparable with Inception FID")
    return faces, note, embeddings


# ---------------------------------------------------------------------------------------------------------
# the report


def format_table(result: EvalResult) -> str:
    """The headline numbers as a plain-text table."""
    rows: list[tuple[str, str]] = [
        ("model", f"{result.model} ({result.arch}, {result.parameters / 1e6:.2f} M parameters, "
                  f"{result.schedule['kind']} schedule, T = {result.schedule['timesteps']})"),
        ("data", f"{result.data}: {result.num_test} held-out ({result.config.split}), "
                 f"{result.num_train} training ({result.config.train_split}) images at {result.image_size}px"),
    ]
    if result.bpd is not None:
        b = result.bpd
        rows += [(b.label, f"{b.total:.4f} ± {b.stderr:.4f}  on {b.num_images} held-out images"),
                 ("  prior L_T", f"{b.prior:.3g}"),
                 ("  diffusion Σ L_t", f"{b.diffusion:.4f}"),
                 ("  decoder L_0", f"{b.decoder:.4f}")]
    rows.append(("sampler", result.sampler + (", x̂₀ clipped" if result.config.clip_x0 else "")))
    if result.faces is not None:
        f = result.faces
        se = "" if f.fd_samples_test_se is None else f" ± {f.fd_samples_test_se:.3f}"
        sd = "" if f.fd_train_test_sd is None else f", s.d. {f.fd_train_test_sd:.3f} over {FLOOR_DRAWS} draws"
        rows += [("FD-UTK samples ↔ test", f"{f.fd_samples_test:.3f}{se}  ({f.num_samples} samples, {f.num_test} test"
                                           f"{'; ± bootstrap s.e.' if se else ''})"),
                 ("FD-UTK train ↔ test (floor)", f"{f.fd_train_test:.3f}  ({f.num_train_floor} training images{sd})")]
        for name, c in f.coverage.items():
            pairs = ", ".join(f"{cls} {s:.0%}/{t:.0%}" for cls, s, t in zip(c.classes, c.samples, c.test_predicted))
            rows.append((f"  {name}: samples/test", f"{pairs}  (TV {c.total_variation:.3f})"))
    else:
        rows.append(("FD-UTK", result.faces_note))
    m = result.memorisation
    rows.append(("nearest train, pixels", f"median {m.pixel_median:.4f} vs test {m.pixel_test_median:.4f} → "
                                          f"ratio {m.pixel_ratio:.3f} (min {m.pixel_min:.4f} vs {m.pixel_test_min:.4f})"))
    if m.feature_ratio is not None:
        rows.append(("nearest train, features", f"median {m.feature_median:.3f} vs test {m.feature_test_median:.3f}"
                                                f" → ratio {m.feature_ratio:.3f}"))
    rows.append(("files", f"eval.json, {result.grid}, {m.grid}"))
    rows.append(("time", ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
