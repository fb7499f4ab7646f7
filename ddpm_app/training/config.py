"""The settings of a run and what follows from them alone: the architectures' recipes, the network of a new run, the
learning rate at each step and the time limit."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Literal

from ddpm_app.diffusion.samplers import DEFAULT_DDIM_STEPS
from ddpm_app.metrics.heldout import HELDOUT_IMAGES
from ddpm_app.models import ModelConfig, make_config


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
    background_compile: bool = True  # on one GPU: train uncompiled from the first step while another process compiles the step into torch.compile's cache, then switch to it (--no-background-compile: compile before the first step)
    compile_mode: Literal["auto", "default", "reduce-overhead", "max-autotune-no-cudagraphs"] = "auto"  # auto: reduce-overhead (CUDA graphs) on one GPU, default with several
    bf16: bool = True  # bf16 autocast (CUDA only)
    channels_last: bool | None = None  # channels_last memory format (default: off on CUDA; on a CPU, on for the ddpm U-Net)
    log_every: int = 100
    sample_every: int = 2000  # EMA sample grid (DDIM) every N steps (0: off)
    sample_steps: int = DEFAULT_DDIM_STEPS  # DDIM steps for the grid
    sample_eta: float | None = None  # grid's DDIM η (default: the recipe's, 0 for ddpm, 1 for seed, whose deterministic DDIM samples keep noise unless --block-norm branch, then 0)
    save_every: int = 2000  # checkpoint every N steps
    max_minutes: float = 0.0  # stop (with a checkpoint) before a step that would end after this much wall time, start-up included; 0: no limit
    export_dtype: Literal["fp32", "fp16"] = "fp32"
    max_images: int = 0  # use at most this many images (0: all)
    init_from: str = ""  # start from the weights of a model folder (e.g. an export) instead of random ones
    eval_every: int = 0  # held-out ε-MSE (EMA and raw weights) every N steps, into metrics.jsonl (0: off)
    eval_split: str = "test"  # the held-out split of --eval-every: a folder of the data
    eval_images: int = 1000  # images of the held-out set of --eval-every (at most)
    heldout_images: int | None = None  # images the export's held-out figures (loss curve, bits/dim) are measured on (default: the recipe's, 256 on a GPU, 16 on the CPU)

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
    # (with its norms on the input; with ``block_norm="branch"`` they are clean and the grids use η = 0)
    heldout_images: int = HELDOUT_IMAGES  # images of the held-out figures measured at export (each: 150 network calls)
    model: tuple[tuple[str, object], ...] = ()  # model config fields of a fresh network, where not given


RECIPES = {"ddpm": Recipe(batch_size=1024, lr=3e-4, warmup_steps=300, sample_eta=0.0),
           "seed": Recipe(batch_size=256, lr=4e-4, warmup_steps=500, sample_eta=1.0)}
# Without a GPU: a 1.2 M-parameter U-Net (widths 32/64/64, one ResBlock per level, attention at 8×8) on batches of
# 32 (the seed net, 1.5 M, on 16), sized for a 2-core CPU (step times: docs/training/cpu-steps.txt), with a short
# warm-up and a higher learning rate, so that a few minutes show the loss falling
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


def with_recipe(cfg: TrainConfig, arch: str, world_size: int = 1, device_type: str = "cuda",
                block_norm: str = "input") -> TrainConfig:
    """``cfg`` with its unset settings filled in from ``arch``'s recipe on ``device_type`` (:func:`recipe_for`). A
    batch other than the recipe's scales the recipe's learning rate by √(batch / recipe batch), the usual rule for
    Adam. ``compile_mode="auto"`` becomes CUDA graphs on one GPU and the default mode under DistributedDataParallel.
    A seed net with ``block_norm="branch"`` sees x_t's amplitude, so its grids need no η > 0."""
    recipe = recipe_for(cfg, arch, device_type)
    batch = cfg.batch_size or recipe.batch_size
    lr = cfg.lr if cfg.lr is not None else recipe.lr * math.sqrt(batch / recipe.batch_size)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else recipe.warmup_steps
    mode = cfg.compile_mode if cfg.compile_mode != "auto" else "reduce-overhead" if world_size == 1 else "default"
    eta = cfg.sample_eta if cfg.sample_eta is not None else 0.0 if block_norm == "branch" else recipe.sample_eta
    heldout = cfg.heldout_images or recipe.heldout_images
    return replace(cfg, batch_size=batch, lr=lr, warmup_steps=warmup, compile_mode=mode, sample_eta=eta,
                   heldout_images=heldout)

def model_config(arch: str, given: dict, recipe_fields: tuple[tuple[str, object], ...] = ()) -> ModelConfig:
    """A new run's network: ``arch``'s config with the ``given`` fields. The recipe's fields (``recipe_fields``, the
    CPU's smaller network) fill in only when none of them is given: a network half from the options and half from the
    recipe would be neither."""
    recipe = dict(recipe_fields)
    return make_config(arch, given if set(given) & set(recipe) else {**recipe, **given})


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
