"""Training ε_θ with the simple loss  L = E_{x₀, t, ε} ‖ε − ε_θ(√ᾱ_t·x₀ + √(1−ᾱ_t)·ε, t)‖²  (DDPM eq. 14).

Built for throughput on one or several GPUs: the whole dataset sits on the device as uint8, batches are
drawn by indexing, the network runs in bf16 autocast (channels_last where faster) under ``torch.compile``,
AdamW is fused, and the EMA update is a single foreach op. Training runs in resumable chunks: a checkpoint
holds the model, the EMA, the optimizer, the step and every RNG state, written atomically, so ``resume``
continues exactly where an uninterrupted run would be. The loop is a generator of :class:`Progress` records; entry
points print them.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Literal, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from . import samplers
from .data import DatasetError, ImagePack, load_pack, random_flip, resolve_split
from .heldout import HELDOUT_IMAGES
from .image import from_uint8, save_grid
from .inference import prepare, resolve_device
from .loss import diffusion_loss
from .model_folder import DiffusionConfig, LoadedModel, ModelFolderError, load_pretrained, save_pretrained
from .models import ModelConfig, SeedUNet, build_model
from .samplers import DEFAULT_DDIM_STEPS, SamplerSettings
from .schedule import Schedule, ScheduleConfig, extract

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
STOP_SYNC_STEPS = 10  # with several processes, a stop request (signal, time limit) is agreed on every N steps
HELD_OUT_SEED = 0  # draws the held-out set's t and ε: one fixed set, whatever the run's own seed


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping settings of a run (the model and schedule have their own configs)."""

    data: str = ""  # image folder or .zip pack
    split: str | None = "auto"  # sub-folder to train on: auto = train/ if the data has one, else everything; "" = all
    out: str = "runs/default"  # run folder: checkpoint, samples, metrics, export
    steps: int = 20_000  # total optimizer steps of the run
    batch_size: int | None = None  # global batch, split across GPUs (default: the architecture's recipe, 1024 for ddpm, 256 for seed; on the CPU 32 and 16)
    lr: float | None = None  # peak learning rate (default: the recipe's, 3e-4 for ddpm and 4e-4 for seed, on the CPU 1e-3, times √(batch / the recipe's batch))
    weight_decay: float = 0.0
    warmup_steps: int | None = None  # linear learning-rate warm-up (default: the recipe's, 300 for ddpm, 500 for seed, on the CPU 20)
    lr_decay: Literal["constant", "cosine"] = "constant"
    grad_clip: float = 1.0  # max gradient norm (0: off)
    ema_decay: float = 0.9995
    ema_warmup: bool = True  # decay = min(ema_decay, (1+step)/(10+step)) early on
    loss_weighting: Literal["uniform", "min-snr"] = "uniform"
    min_snr_gamma: float = 5.0
    small_t_fraction: float = 0.0  # share of each batch whose t is drawn log-uniformly (p(t) ∝ ~1/(t+1)), where most bits/dim lie; the rest uniform (0: L_simple)
    seed: int = 0
    device: str = "auto"  # auto | cuda | cpu
    recipe: Literal["auto", "gpu", "cpu"] = "auto"  # unset settings from: gpu = the shipped models' recipe (batch 1024 for ddpm); cpu = a smaller network and batch that step in about a second on 2 CPU cores; auto = cpu where there is no CUDA GPU
    compile: bool = True  # torch.compile the network (CUDA only)
    compile_mode: Literal["auto", "default", "reduce-overhead", "max-autotune-no-cudagraphs"] = "auto"  # auto: reduce-overhead (CUDA graphs) on one GPU, default with several
    bf16: bool = True  # bf16 autocast (CUDA only)
    channels_last: bool | None = None  # channels_last memory format (default: on, but off for the seed net)
    log_every: int = 100
    sample_every: int = 2000  # EMA sample grid (DDIM) every N steps (0: off)
    sample_steps: int = DEFAULT_DDIM_STEPS  # DDIM steps for the grid
    sample_eta: float | None = None  # grid's DDIM η (default: the recipe's, 0 for ddpm, 1 for seed, whose deterministic DDIM samples keep noise)
    save_every: int = 2000  # checkpoint every N steps
    max_minutes: float = 0.0  # stop (with a checkpoint) before a step that would end after this much wall time, start-up included; 0: no limit
    export_dtype: Literal["fp32", "fp16"] = "fp32"
    max_images: int = 0  # use at most this many images (0: all)
    init_from: str = ""  # start from the weights of a model folder (e.g. an export) instead of random ones
    eval_every: int = 0  # held-out ε-MSE (EMA and raw weights) every N steps, into metrics.jsonl (0: off)
    eval_split: str = "test"  # held-out folder of the data for --eval-every
    eval_images: int = 1000  # held-out images for --eval-every (at most)
    heldout_images: int | None = None  # held-out images the export's loss curve and bits/dim are measured on (default: the recipe's, 256 on a GPU, 16 on the CPU)

    def __post_init__(self) -> None:
        if (self.batch_size is not None and self.batch_size < 1) or self.steps < 1:
            raise ValueError("batch_size and steps must be positive")
        if not 0.0 <= self.small_t_fraction <= 1.0:
            raise ValueError(f"small_t_fraction must lie in [0, 1], got {self.small_t_fraction}")
        if self.eval_every < 0 or self.eval_images < 1:
            raise ValueError("eval_every must be ≥ 0 (0: off) and eval_images ≥ 1")
        if self.heldout_images is not None and self.heldout_images < 1:
            raise ValueError("heldout_images must be ≥ 1")
        if self.split == "":
            object.__setattr__(self, "split", None)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Recipe:
    """An architecture's recommended batch, peak learning rate and warm-up: on a GPU, the settings its shipped model
    used; on the CPU, a smaller network and batch whose steps take about a second, to see the trainer work."""

    batch_size: int
    lr: float
    warmup_steps: int
    sample_eta: float  # DDIM η of the sample grids: the seed net's deterministic (η = 0) samples keep visible noise
    heldout_images: int = HELDOUT_IMAGES  # measured at export (each takes 150 network calls)
    model: tuple[tuple[str, object], ...] = ()  # model config fields of a fresh network, where not given


RECIPES = {"ddpm": Recipe(batch_size=1024, lr=3e-4, warmup_steps=300, sample_eta=0.0),
           "seed": Recipe(batch_size=256, lr=4e-4, warmup_steps=500, sample_eta=1.0)}
# Without a GPU: a 1.2 M-parameter U-Net (widths 32/64/64, one ResBlock per level, attention at 8×8) on batches of
# 32 (the seed net, 1.5 M, on 16), so a step takes about a second on 2 cores (docs/training/cpu-steps.txt), with a
# short warm-up and a higher learning rate, so that a few minutes show the loss falling
CPU_RECIPES = {
    "ddpm": Recipe(batch_size=32, lr=1e-3, warmup_steps=20, sample_eta=0.0, heldout_images=16,
                   model=(("base_channels", 32), ("channel_mult", (1, 2, 2)), ("num_res_blocks", 1),
                          ("head_channels", 32))),
    "seed": Recipe(batch_size=16, lr=1e-3, warmup_steps=20, sample_eta=1.0, heldout_images=16,
                   model=(("down_channels", (32, 64, 64, 128)),)),
}


def recipe_for(cfg: TrainConfig, arch: str, device_type: str) -> Recipe:
    """The recipe ``cfg.recipe`` names for ``arch``; "auto" is the CPU's wherever the device is not a CUDA GPU."""
    cpu = cfg.recipe == "cpu" or (cfg.recipe == "auto" and device_type != "cuda")
    return (CPU_RECIPES if cpu else RECIPES)[arch]


def with_recipe(cfg: TrainConfig, arch: str, world_size: int = 1, device_type: str = "cuda") -> TrainConfig:
    """``cfg`` with its unset settings filled in from ``arch``'s recipe on ``device_type`` (:func:`recipe_for`). A
    batch other than the recipe's scales the recipe's learning rate by √(batch / recipe batch), the usual rule for
    Adam. ``compile_mode="auto"`` becomes CUDA graphs on one GPU and the default mode under DistributedDataParallel."""
    recipe = recipe_for(cfg, arch, device_type)
    batch = cfg.batch_size or recipe.batch_size
    lr = cfg.lr if cfg.lr is not None else recipe.lr * math.sqrt(batch / recipe.batch_size)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else recipe.warmup_steps
    mode = cfg.compile_mode if cfg.compile_mode != "auto" else "reduce-overhead" if world_size == 1 else "default"
    eta = cfg.sample_eta if cfg.sample_eta is not None else recipe.sample_eta
    heldout = cfg.heldout_images or recipe.heldout_images
    return replace(cfg, batch_size=batch, lr=lr, warmup_steps=warmup, compile_mode=mode, sample_eta=eta,
                   heldout_images=heldout)


class StartUp(NamedTuple):
    """The phases before training runs at speed, in seconds: reading the images onto the device (the GPU's own start
    included), building the model and its optimizer, timing a step (CPU only, else 0) and the first step (on CUDA this
    compiles the loss)."""

    data_s: float
    model_s: float
    timing_s: float
    first_step_s: float


@dataclass(frozen=True)
class Progress:
    """What the loop reports every ``log_every`` steps, and at its end."""

    step: int
    total_steps: int
    loss: float  # mean training loss since the previous report
    lr: float
    images_per_s: float
    elapsed_s: float  # wall time of this process's training so far
    event: str = "log"  # started | log | sample | checkpoint | eval | done | stopped
    path: str | None = None  # the file an event wrote (sample grid, checkpoint)
    held_out: HeldOutMSE | None = None  # the held-out ε-MSE (event "eval")
    startup: StartUp | None = None  # event "started": the start-up's phases
    step_s: float | None = None  # event "expected": the seconds one step should take here, timed before the first


class TrainingError(RuntimeError):
    """The run cannot start or had to stop (bad data, non-finite loss, unwritable output)."""


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_kind: str) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def setup_device(name: str, info: DistInfo) -> torch.device:
    """The device of this process: ``name`` (``auto``: CUDA if visible) and, on CUDA, this rank's GPU."""
    try:
        device = resolve_device(name)
    except RuntimeError as e:
        raise TrainingError(str(e)) from None
    if device.type != "cuda":
        return device
    torch.cuda.set_device(info.local_rank)
    torch.backends.cudnn.benchmark = True  # every batch has the same shape: let cuDNN pick its fastest kernels once
    return torch.device("cuda", info.local_rank)


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """Each process's share of the global batch, which must divide evenly (so images/s and images seen agree)."""
    if batch_size % world_size:
        raise TrainingError(f"--batch-size {batch_size} does not divide evenly among {world_size} processes; "
                            f"use a multiple of {world_size}")
    return batch_size // world_size


class EMA:
    """Exponential moving average of the weights: θ_ema ← d·θ_ema + (1−d)·θ."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.warmup = decay, warmup
        self._src = [p for p in model.parameters()]
        self._dst = [p for p in self.model.parameters()]
        self._src_buf = [b for b in model.buffers() if b.is_floating_point()]
        self._dst_buf = [b for b in self.model.buffers() if b.is_floating_point()]

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, step: int) -> None:
        torch._foreach_lerp_(self._dst, self._src, 1.0 - self.decay_at(step))
        for d, s in zip(self._dst_buf, self._src_buf):
            d.copy_(s)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to ``lr``, then constant or cosine decay to 10 % of it."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_decay == "cosine":
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
    return cfg.lr


def time_limit_warning(cfg: TrainConfig, step: int, images_per_s: float, seconds_used: float) -> str | None:
    """What to tell the user when, at this speed, ``max_minutes`` will stop the run before ``cfg.steps`` while the
    learning rate decays over the steps (the run would stop with the lr still high); None when all is well."""
    if cfg.max_minutes <= 0 or cfg.lr_decay == "constant" or images_per_s <= 0:
        return None
    steps_per_s = images_per_s / cfg.batch_size
    reachable = step + int(max(0.0, cfg.max_minutes * 60 - seconds_used) * steps_per_s)
    if reachable >= cfg.steps:
        return None
    return (f"warning: at {images_per_s:,.0f} images/s, --max-minutes {cfg.max_minutes:g} stops the run near step "
            f"{reachable} of {cfg.steps}, before the {cfg.lr_decay} learning-rate decay ends; for a finished decay "
            f"in this time use --steps {reachable} (the rest can follow with --resume)")


def out_of_time(cfg: TrainConfig, seconds_used: float, next_step_s: float | None) -> bool:
    """Whether ``max_minutes`` leaves no room for the next step: ``seconds_used`` (start-up included) plus the time
    the next step should take (the last one's, or the timing before the first; None: not known) would pass it."""
    return cfg.max_minutes > 0 and seconds_used + (next_step_s or 0.0) > cfg.max_minutes * 60


def loss_weights(schedule: Schedule, t: Tensor, cfg: TrainConfig) -> Tensor | None:
    """Per-sample weights on the ε-MSE: None (uniform), or Min-SNR-γ: min(SNR_t, γ)/SNR_t (Hang et al. 2023)."""
    if cfg.loss_weighting == "uniform":
        return None
    snr = extract(schedule.snr, t, (t.shape[0],)).to(t.device)
    return snr.clamp(max=cfg.min_snr_gamma) / snr


def small_t_count(batch: int, fraction: float) -> int:
    """How many of a batch's ``batch`` timesteps are drawn log-uniformly: a fixed count, so shapes stay static."""
    return round(batch * fraction)


def log_uniform_t_probs(timesteps: int) -> Tensor:
    """p(t) of :func:`sample_timesteps`' log-uniform draws: t = ⌊(T + 1)^u⌋ − 1 with u ~ U[0, 1), so
    p(t) = log((t + 2)/(t + 1)) / log(T + 1), about 1/((t + 1)·log T). At T = 1000, 10 % of draws are t = 0 and
    36 % are t ≤ 10, where the variational bound puts 2.6 of a model's ~2.9 bits/dim; uniform draws put 1.1 % there."""
    t = torch.arange(timesteps, dtype=torch.float64)
    return torch.log((t + 2) / (t + 1)) / math.log(timesteps + 1)


def sample_timesteps(batch: int, timesteps: int, small_t_fraction: float, *, device: torch.device | str = "cpu",
                     generator: torch.Generator | None = None) -> Tensor:
    """Training timesteps: the first ``small_t_count(batch, small_t_fraction)`` log-uniform (see
    :func:`log_uniform_t_probs`), the rest uniform on {0, …, T−1}. Drawing more small t weights the ε-MSE towards
    them: relative to uniform t the objective weights step t by (1 − f) + f·T·p(t), 1 − f at large t and
    1 + f·(T·p(0) − 1) ≈ 1 + 99·f at t = 0 (T = 1000)."""
    t = torch.randint(0, timesteps, (batch,), device=device, generator=generator)
    k = small_t_count(batch, small_t_fraction)
    if k:
        u = torch.rand(k, device=device, generator=generator, dtype=torch.float64)
        small = (torch.exp(u * math.log(timesteps + 1)).floor().long() - 1).clamp_(0, timesteps - 1)
        t = torch.cat([small, t[k:]])
    return t


@dataclass(frozen=True)
class HeldOutSet:
    """Fixed triples (x₀, t, ε) on images the run does not train on, so that ε-MSE values compare across steps,
    runs and recipes: every run that reads the same images draws the same t and ε."""

    x0: Tensor  # (N, C, H, W) in [−1, 1]
    t: Tensor  # (N,) long
    noise: Tensor  # (N, C, H, W)

    def to(self, device: torch.device | str) -> HeldOutSet:
        return HeldOutSet(self.x0.to(device), self.t.to(device), self.noise.to(device))


@dataclass(frozen=True)
class HeldOutMSE:
    """The held-out ε-MSE of the EMA weights and of the raw (trained) weights."""

    ema: float
    raw: float


def held_out_set(images: Tensor, timesteps: int, seed: int = HELD_OUT_SEED) -> HeldOutSet:
    """x₀ from uint8 images (N, C, H, W), t ~ U{0, …, T−1} and ε ~ N(0, I), drawn once on the CPU from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.randint(0, timesteps, (images.shape[0],), generator=gen)
    noise = torch.randn(images.shape, generator=gen)
    return HeldOutSet(from_uint8(images), t, noise)


@torch.no_grad()
def held_out_mse(model: nn.Module, schedule: Schedule, held: HeldOutSet, batch_size: int = 250) -> float:
    """E ‖ε − ε_θ(√ᾱ_t·x₀ + √(1−ᾱ_t)·ε, t)‖² per pixel over the held-out triples: the simple loss on unseen images.

    The network runs in eval mode (no dropout) and in the precision of the caller's context; its mode is restored.
    """
    was_training = model.training
    model.eval()
    total, n = 0.0, held.t.shape[0]
    try:
        for i in range(0, n, batch_size):
            part = slice(i, i + batch_size)
            loss = diffusion_loss(model, schedule, held.x0[part], held.t[part], held.noise[part])
            total += float(loss) * held.t[part].shape[0]
    finally:
        model.train(was_training)
    return total / n


def _save_atomic(obj: dict, path: Path) -> None:
    """Write to ``NAME.tmpPID``, fsync, then rename over ``NAME``: the final name only ever holds a whole file."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports some write failures as RuntimeError
        tmp.unlink(missing_ok=True)
        raise TrainingError(f"{path}: could not write the checkpoint ({e}); the previous checkpoint, if any, is "
                            "intact. Free some space or choose another --out, then --resume.") from None
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def remove_stale_temp_files(out: Path) -> list[Path]:
    """Delete ``checkpoint.pt.tmpPID`` files left by a killed run (not those of a live process); returns them."""
    removed = []
    for tmp in out.glob(CHECKPOINT_NAME + ".tmp*"):
        pid = tmp.name.rpartition(".tmp")[2]
        if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) is not a probe there; keep the file
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def load_checkpoint(path: str | Path) -> dict:
    """A training checkpoint, read without unpickling code (``weights_only=True``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means the file is unusable
        raise TrainingError(f"{path}: not a readable training checkpoint ({type(e).__name__}: {e})") from None


def check_writable(out: Path, need_bytes: int = 0) -> None:
    """Fail before training if the run folder cannot be written or has less than ``need_bytes`` free."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"x" * 4096)
        probe.unlink()
        free = shutil.disk_usage(out).free
    except OSError as e:
        raise TrainingError(f"{out}: cannot write the run folder ({e.strerror or e}); "
                            "choose another --out or free some space") from None
    if free < need_bytes:
        raise TrainingError(f"{out}: only {free / 1e6:.1f} MB free, but checkpoints and the export of this model "
                            f"need about {need_bytes / 1e6:.1f} MB; free some space or choose another --out")


def read_metrics(path: Path) -> list[dict]:
    """The rows of a run's ``metrics.jsonl`` (one JSON object with an integer ``step`` per line); none if absent."""
    rows = []
    for line in path.read_text(errors="replace").splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def _trim_metrics(path: Path, step: int) -> None:
    """Keep the rows of ``metrics.jsonl`` up to ``step`` (a killed run may have logged past its last checkpoint)."""
    if not path.is_file():
        return
    kept = [row for row in read_metrics(path) if row["step"] <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
    os.replace(tmp, path)


def read_resume_checkpoint(out: Path) -> dict:
    """``out/checkpoint.pt``, the training state a resumed run continues from."""
    path = Path(out) / CHECKPOINT_NAME
    if not path.is_file():
        raise TrainingError(f"--resume: no checkpoint at {path}")
    return load_checkpoint(path)


def starting_point(cfg: TrainConfig, model_config: ModelConfig | None, schedule_config: ScheduleConfig | None,
                   checkpoint: dict | None) -> tuple[DiffusionConfig, LoadedModel | None]:
    """The run's model and schedule: a resumed checkpoint's, else ``--init-from``'s model folder's (returned too,
    for its weights; its sampling defaults carry over), else the ones given."""
    if checkpoint is not None:
        return DiffusionConfig.from_dict(checkpoint["diffusion_config"]), None
    if cfg.init_from:
        try:
            start = load_pretrained(cfg.init_from)
        except ModelFolderError as e:
            raise TrainingError(f"--init-from: {e}") from None
        return DiffusionConfig(start.config.model, start.config.schedule, sampling=start.config.sampling), start
    return DiffusionConfig(model_config, schedule_config), None


def shard_images(pack: ImagePack, model_config: ModelConfig, info: DistInfo, device: torch.device) -> Tensor:
    """This rank's share of the images, kept on the device as uint8 (N, C, H, W), after checking they fit the model."""
    if pack.images.shape[1] != model_config.in_channels or pack.images.shape[-1] != model_config.image_size:
        raise TrainingError(f"data is {tuple(pack.images.shape[1:])} but the model expects "
                            f"({model_config.in_channels}, {model_config.image_size}, {model_config.image_size})")
    if len(pack) < info.world_size:
        raise TrainingError(f"{len(pack)} image(s) cannot be shared among {info.world_size} processes")
    return pack.images[info.rank::info.world_size].to(device)


def load_held_out(cfg: TrainConfig, image_size: int) -> ImagePack:
    """The data's held-out images for ``--eval-every``: up to ``eval_images`` of its ``eval_split`` folder."""
    try:
        return load_pack(cfg.data, image_size, cfg.eval_split, limit=cfg.eval_images)
    except DatasetError:
        raise TrainingError(f"--eval-every: {cfg.data} has no readable held-out images in a folder named "
                            f"{cfg.eval_split!r}; name one with --eval-split, or leave --eval-every at 0") from None


def build_network(model_config: ModelConfig, cfg: TrainConfig, device: torch.device) -> tuple[nn.Module, bool]:
    """A freshly initialised network (seeded with ``cfg.seed``) on ``device``, and whether it is channels_last."""
    torch.manual_seed(cfg.seed)  # parameter init only; the loop's randomness comes from the trainer's generator
    model = build_model(model_config).to(device)
    seed_net = isinstance(model, SeedUNet)
    if device.type == "cuda" and seed_net:
        model.subpixel = True  # the same function with fewer FLOPs: see models/seed.py
    # the seed net trains faster in NCHW (H100, torch 2.11: 12.8k vs 7.3k images/s, layout copies around its convs)
    channels_last = not seed_net if cfg.channels_last is None else cfg.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, channels_last


def data_parallel(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel when there are several processes, else itself."""
    if info.world_size == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def compiled(loss: Callable[..., Tensor], cfg: TrainConfig) -> Callable[..., Tensor]:
    """``torch.compile`` of the loss in ``cfg.compile_mode`` (CUDA only)."""
    return torch.compile(loss, mode=None if cfg.compile_mode == "default" else cfg.compile_mode)


class Trainer:
    """One training run: data on the device, model + EMA + optimizer, checkpoints under ``cfg.out``."""

    def __init__(self, cfg: TrainConfig, model_config: ModelConfig | None, schedule_config: ScheduleConfig | None,
                 pack: ImagePack | None = None, resume: bool = False, checkpoint: dict | None = None,
                 held_out: ImagePack | None = None):
        """Build the run's parts: ``resume`` continues from ``cfg.out``'s checkpoint (``checkpoint``, if the caller
        has read it already), whose model and schedule replace the configs given; so does ``cfg.init_from``'s.
        ``held_out`` holds the images of the held-out ε-MSE (default: ``cfg.eval_split`` of the data)."""
        self.created = time.perf_counter()
        self.out = Path(cfg.out)
        self.dist = setup_distributed(resolve_device().type if cfg.device == "auto" else cfg.device)
        self.device = setup_device(cfg.device, self.dist)
        self.is_cuda = self.device.type == "cuda"
        self._agreed_check(lambda: check_writable(self.out), "cannot write the run folder")

        if resume and checkpoint is None:
            checkpoint = read_resume_checkpoint(self.out)
        self.diffusion_config, start = starting_point(cfg, model_config, schedule_config, checkpoint)
        self.cfg = cfg = with_recipe(cfg, self.diffusion_config.arch, self.dist.world_size, self.device.type)
        self.per_rank_batch = per_rank_batch(cfg.batch_size, self.dist.world_size)
        self.global_batch = self.per_rank_batch * self.dist.world_size
        model_config = self.diffusion_config.model
        self.schedule = Schedule(self.diffusion_config.schedule).to(self.device)
        self.pack = pack if pack is not None else load_pack(cfg.data, model_config.image_size, cfg.split, limit=cfg.max_images or None)
        self.images = shard_images(self.pack, model_config, self.dist, self.device)
        self.data_ready = time.perf_counter()

        self.held_out = None  # fixed (x₀, t, ε) for the held-out ε-MSE, on rank 0 only
        if cfg.eval_every and self.dist.is_main:
            pack_held_out = held_out if held_out is not None else load_held_out(cfg, model_config.image_size)
            images = pack_held_out.images[:cfg.eval_images]
            self.held_out = held_out_set(images, self.diffusion_config.schedule.timesteps).to(self.device)
        self.model, self.channels_last = build_network(model_config, cfg, self.device)
        self.ema = EMA(self.model, cfg.ema_decay, cfg.ema_warmup)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                           betas=(0.9, 0.999), fused=self.is_cuda)
        self.gen = torch.Generator(self.device).manual_seed(cfg.seed * 1000 + self.dist.rank)
        self.step = 0
        self.images_seen = 0  # summed over steps, so it stays right when a resumed run changes batch size
        self.train_seconds = 0.0
        if start is not None:
            self._start_from(start)
        if checkpoint is not None:
            self._restore(checkpoint)
        self._resumed = checkpoint is not None
        self._agreed_check(self._preflight, "the run folder is not usable")

        self.net = data_parallel(self.model, self.dist, self.device)
        # the whole loss is compiled, so noising x₀ and the squared error fuse with the network's kernels
        self._graphed = cfg.compile and self.is_cuda and cfg.compile_mode == "reduce-overhead"
        self._forward_loss = compiled(self._loss, cfg) if cfg.compile and self.is_cuda else self._loss
        # fixed noise for the sample grids, so grids from different steps are comparable
        self.grid_noise = torch.randn((16, model_config.in_channels, model_config.image_size, model_config.image_size),
                                      generator=torch.Generator().manual_seed(1234)).to(self.device)
        self._stop_signal: int | None = None

    def _start_from(self, start: LoadedModel) -> None:
        """A model folder's (EMA) weights seed both the model and its EMA; its images and time carry on."""
        self.model.load_state_dict(start.model.state_dict())
        self.ema.model.load_state_dict(start.model.state_dict())
        self.images_seen = int(start.config.training.get("images_seen", 0))
        self.train_seconds = float(start.config.training.get("train_seconds", 0.0))

    def _preflight(self) -> None:
        """Room for the next checkpoint beside the current one (model, EMA, two Adam moments) and the export."""
        param_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        check_writable(self.out, 5 * param_bytes)
        remove_stale_temp_files(self.out)

    # -- checkpoints -----------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "step": self.step,
            "images_seen": self.images_seen,
            "train_seconds": self.train_seconds,
            "model": self.model.state_dict(),
            "ema": self.ema.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.gen.get_state(),
            "cpu_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.is_cuda else torch.empty(0, dtype=torch.uint8),
            "diffusion_config": self.diffusion_config.to_dict(),
            "train_config": self.cfg.to_dict(),
            "data": {"path": str(self.cfg.data), "split": resolve_split(self.pack.names, self.cfg.split),
                     "images": len(self.pack)},
        }

    def _restore(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.ema.model.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        rank_generators = ckpt.get("rank_generators")
        if rank_generators is not None and len(rank_generators) == self.dist.world_size:
            self.gen.set_state(rank_generators[self.dist.rank])
        elif self.dist.is_main:
            self.gen.set_state(ckpt["generator"])
        else:  # resumed with more processes than saved the checkpoint: a fresh stream of this rank's own
            self.gen.manual_seed((self.cfg.seed * 1000 + self.dist.rank) * 1_000_003 + int(ckpt["step"]))
        torch.set_rng_state(ckpt["cpu_rng"])
        if self.is_cuda and ckpt["cuda_rng"].numel():
            torch.cuda.set_rng_state(ckpt["cuda_rng"], self.device)
        self.step = int(ckpt["step"])
        self.images_seen = int(ckpt.get("images_seen", self.step * self.cfg.batch_size))
        self.train_seconds = float(ckpt.get("train_seconds", 0.0))

    def save_checkpoint(self) -> Path:
        """Write ``checkpoint.pt`` (rank 0); every rank must call it. Refuses to overwrite with non-finite weights."""
        path = self.out / CHECKPOINT_NAME
        finite = torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all()
        if not bool(finite):  # the same on every rank: DDP keeps the weights identical
            raise TrainingError(f"the weights became non-finite (NaN/inf) by step {self.step}; "
                                f"{path} was not overwritten. Try a lower --lr or --grad-clip.")
        state = self.state()
        if self.dist.world_size > 1:  # each rank's own random stream, so a resumed run keeps them independent
            generators: list = [None] * self.dist.world_size
            dist.all_gather_object(generators, self.gen.get_state())
            state["rank_generators"] = generators
        self._agreed_check(lambda: _save_atomic(state, path), "could not write the checkpoint")
        return path

    def _agree(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank (a collective: every rank must call it)."""
        if self.dist.world_size == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def _agreed_check(self, check, what: str) -> None:
        """Run ``check`` on rank 0; if it raises a TrainingError, every rank raises one (no rank is left waiting)."""
        error = None
        if self.dist.is_main:
            try:
                check()
            except TrainingError as e:
                error = e
        if self._agree(error is not None):
            raise error or TrainingError(f"rank 0: {what}; see its error")

    # -- the loop --------------------------------------------------------------------------------------------
    def _batch(self) -> tuple[Tensor, Tensor, Tensor]:
        idx = torch.randint(0, self.images.shape[0], (self.per_rank_batch,), device=self.device, generator=self.gen)
        x0 = from_uint8(random_flip(self.images[idx], self.gen))  # (B, C, H, W) in [−1, 1]
        if self.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        t = sample_timesteps(x0.shape[0], self.schedule.timesteps, self.cfg.small_t_fraction, device=self.device,
                             generator=self.gen)
        noise = torch.randn(x0.shape, device=self.device, generator=self.gen)
        return x0, t, noise

    def _loss(self, x0: Tensor, t: Tensor, noise: Tensor, weights: Tensor | None) -> Tensor:
        return diffusion_loss(self.net, self.schedule, x0, t, noise, weights)

    def train_step(self) -> Tensor:
        """One optimizer step; returns the loss as a device tensor (no host sync)."""
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(cfg, self.step)
        x0, t, noise = self._batch()
        if self._graphed:  # a new iteration: CUDA-graph outputs of the previous one may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16 and self.is_cuda):
            loss = self._forward_loss(x0, t, noise, loss_weights(self.schedule, t, cfg))
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.step)
        self.step += 1
        self.images_seen += self.global_batch
        return loss.detach().clone() if self._graphed else loss.detach()

    def sample_grid(self) -> Path:
        """16 EMA samples from fixed noise with DDIM (cheap; η from the recipe, its noise from a fixed seed too),
        saved as samples/step_XXXXXXX.png."""
        settings = SamplerSettings("ddim", self.cfg.sample_steps, eta=self.cfg.sample_eta, clip_x0=True)
        net = prepare(self.ema.model, self.device, compile=False, precision="fp32", channels_last=self.channels_last)
        generator = torch.Generator(self.device).manual_seed(self.cfg.seed)
        x = samplers.final(settings.run(net, self.schedule, tuple(self.grid_noise.shape), x_start=self.grid_noise,
                                        generator=generator, device=self.device))
        return save_grid(x, self.out / "samples" / f"step_{self.step:07d}.png", nrow=4)

    def time_step(self, images: int = 4) -> float:
        """The seconds one training step of ``per_rank_batch`` images should take on this CPU: the forward and
        backward pass of ``images`` of them, timed on its second run (the first sets up the kernels), scaled to the
        batch (CPU work grows with the batch). The weights, the optimizer and every random state stay as they were."""
        images = min(images, self.per_rank_batch)
        x0 = torch.zeros((images, *self.images.shape[1:]), device=self.device)
        if self.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        t = torch.linspace(0, self.schedule.timesteps - 1, images, device=self.device).long()
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)).to(x0)
        with torch.random.fork_rng(devices=[]):  # dropout draws from the global generator
            for _ in range(2):
                start = time.perf_counter()
                diffusion_loss(self.model, self.schedule, x0, t, noise).backward()  # no DDP: no other rank waits
                seconds = time.perf_counter() - start
        self.optimizer.zero_grad(set_to_none=True)
        return seconds * self.per_rank_batch / images

    def evaluate_held_out(self) -> HeldOutMSE:
        """The held-out ε-MSE of the EMA and the raw weights (fp32, uncompiled)."""
        return HeldOutMSE(held_out_mse(self.ema.model, self.schedule, self.held_out),
                          held_out_mse(self.model, self.schedule, self.held_out))

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        self._stop_signal = signum

    def run(self) -> Iterator[Progress]:
        """Train until ``cfg.steps`` (or ``max_minutes``, or SIGINT/SIGTERM), yielding progress."""
        old_handlers = {}
        if _in_main_thread():  # every rank: torchrun passes a Ctrl-C or SIGTERM on to all of them
            for sig in (signal.SIGINT, signal.SIGTERM):
                old_handlers[sig] = signal.signal(sig, self._on_signal)
        metrics = None
        if self.dist.is_main:
            if self._resumed:
                _trim_metrics(self.out / METRICS_NAME, self.step)
            metrics = (self.out / METRICS_NAME).open("a")
        try:
            yield from self._loop(metrics)
        finally:
            if metrics:
                metrics.close()
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)

    def _loop(self, metrics) -> Iterator[Progress]:
        cfg = self.cfg
        self.model.train()
        setup_end = time.perf_counter()
        seconds_before = self.train_seconds
        window_loss = torch.zeros((), device=self.device)
        window_steps, window_start = 0, time.perf_counter()
        last_good = self.step if self._resumed else None  # step of the newest checkpoint this run can vouch for

        def progress(event: str, loss: float, ips: float, path: Path | None = None) -> Progress:
            return Progress(self.step, cfg.steps, loss, lr_at(cfg, max(0, self.step - 1)), ips,
                            self.train_seconds, event, str(path) if path else None)

        step_s = None  # what the next step should take: on the CPU timed before the first, then the last one's
        if not self.is_cuda and self.step < cfg.steps:
            step_s = self.time_step()
            yield Progress(self.step, cfg.steps, float("nan"), lr_at(cfg, self.step), 0.0, self.train_seconds,
                           "expected", step_s=step_s)
            if self._agree(out_of_time(cfg, time.perf_counter() - self.created, step_s)):
                raise TrainingError(
                    f"--max-minutes {cfg.max_minutes:g} leaves no time for one step: start-up took "
                    f"{time.perf_counter() - self.created:.0f} s and a step of {self.per_rank_batch} images should take "
                    f"about {step_s:.1f} s here. Allow more minutes, or take a smaller --batch-size.")
        start = time.perf_counter()
        first_step, untimed_steps = True, 0
        while self.step < cfg.steps:
            step_start = time.perf_counter()
            window_loss += self.train_step()
            window_steps += 1
            if first_step:  # data loading and compilation are start-up, not training throughput
                first_step = False
                if self.is_cuda:
                    torch.cuda.synchronize(self.device)
                now = time.perf_counter()
                timing = start - setup_end if not self.is_cuda else 0.0  # a step is timed on the CPU only
                startup = StartUp(self.data_ready - self.created, setup_end - self.data_ready, timing, now - start)
                yield Progress(self.step, cfg.steps, float("nan"), lr_at(cfg, self.step - 1), 0.0,
                               self.train_seconds, "started", startup=startup)
                untimed_steps, window_start = window_steps, time.perf_counter()
            if not self.is_cuda:  # a CUDA step is queued, not done, when train_step returns
                step_s = time.perf_counter() - step_start
            self.train_seconds = seconds_before + time.perf_counter() - start
            stop = self._stop_signal is not None or out_of_time(cfg, time.perf_counter() - self.created, step_s)
            if self.dist.world_size > 1:  # all ranks must leave at the same step, or the others wait forever
                stop = self._agree(stop) if self.step % STOP_SYNC_STEPS == 0 else False
            due_log = self.step % cfg.log_every == 0 or self.step == cfg.steps or stop
            due_save = (cfg.save_every and self.step % cfg.save_every == 0) or self.step == cfg.steps or stop
            due_sample = cfg.sample_every and self.step % cfg.sample_every == 0
            if due_log or due_save or due_sample:
                if self.dist.world_size > 1:  # the mean over ranks, so that all of them see a NaN and stop together
                    dist.all_reduce(window_loss)
                    window_loss /= self.dist.world_size
                loss = (window_loss / window_steps).item()  # the only host sync of the window
                if not math.isfinite(loss):
                    kept = (f"The last good checkpoint (step {last_good}) is kept in {self.out / CHECKPOINT_NAME}."
                            if last_good is not None else "No checkpoint of this run had been written yet.")
                    raise TrainingError(f"loss became {loss} at step {self.step}; stopped. {kept} "
                                        "Try a lower --lr or --grad-clip.")
                ips = (window_steps - untimed_steps) * self.global_batch / (time.perf_counter() - window_start)
                window_loss.zero_()
                window_steps, untimed_steps, window_start = 0, 0, time.perf_counter()
                if metrics:
                    metrics.write(json.dumps({"step": self.step, "loss": loss, "lr": lr_at(cfg, self.step - 1),
                                              "images_per_s": ips, "elapsed_s": self.train_seconds}) + "\n")
                    metrics.flush()
                yield progress("log", loss, ips)
                if due_sample and self.dist.is_main:
                    yield progress("sample", loss, ips, self.sample_grid())
                if due_save:
                    path = self.save_checkpoint()
                    last_good = self.step
                    yield progress("checkpoint", loss, ips, path)
                window_start = time.perf_counter()  # sampling and saving are not training time
            if self.held_out is not None and self.step % cfg.eval_every == 0:
                eval_start = time.perf_counter()
                mse = self.evaluate_held_out()
                if metrics:
                    metrics.write(json.dumps({"step": self.step, "images_seen": self.images_seen,
                                              "held_out_mse_ema": mse.ema, "held_out_mse": mse.raw,
                                              "elapsed_s": self.train_seconds}) + "\n")
                    metrics.flush()
                yield Progress(self.step, cfg.steps, float("nan"), lr_at(cfg, self.step - 1), 0.0,
                               self.train_seconds, "eval", held_out=mse)
                window_start += time.perf_counter() - eval_start  # evaluating is not training time
            if stop:
                yield progress("stopped", float("nan"), 0.0)
                return
        yield progress("done", float("nan"), 0.0)

    # -- export ----------------------------------------------------------------------------------------------
    def export(self, directory: str | Path | None = None, extra: dict | None = None) -> Path:
        return export_checkpoint(self.state(), directory or self.out / "export", self.cfg.export_dtype, extra)


def _in_main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def export_checkpoint(ckpt: dict, directory: str | Path, dtype: str = "fp32", extra: dict | None = None) -> Path:
    """Write a checkpoint's EMA weights in the model-folder format (config.json + safetensors)."""
    config = DiffusionConfig.from_dict(ckpt["diffusion_config"])
    training = {
        "steps": int(ckpt["step"]),
        "train_seconds": round(float(ckpt.get("train_seconds", 0.0)), 1),
        "images_seen": int(ckpt.get("images_seen", int(ckpt["step"]) * int(ckpt["train_config"]["batch_size"]))),
        "data": ckpt.get("data", {}),
        "train_config": ckpt["train_config"],
        "weights": "ema",
        **(extra or {}),
    }
    config = DiffusionConfig(config.model, config.schedule, training, config.sampling)
    model = build_model(config.model)
    model.load_state_dict(ckpt["ema"])
    return save_pretrained(model, config, directory, dtype=torch.float16 if dtype == "fp16" else None)

