"""Tiny training runs for the trainer, CLI, DDP and kill tests: configs, synthetic images, command lines.

Everything is sized to take a fraction of a second per optimizer step on one CPU thread: a 2-level U-Net with
32/64 channels and no attention on 16×16 images, T = 50, batches of 8.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddpm_app.diffusion.schedule import ScheduleConfig
from ddpm_app.io.data import ImagePack
from ddpm_app.models import UNetConfig
from ddpm_app.training.config import TrainConfig

REPO = Path(__file__).resolve().parent.parent
TRAIN_PY = REPO / "train.py"

MODEL = UNetConfig(image_size=16, base_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                   attention_resolutions=(), dropout=0.0, patch_size=1)
SCHEDULE = ScheduleConfig(kind="linear", timesteps=50, beta_start=1e-3, beta_end=0.2)

# the same model and schedule as command-line options of train.py
MODEL_ARGS = ["--image-size", "16", "--base-channels", "32", "--channel-mult", "1,2", "--num-res-blocks", "1",
              "--attention-resolutions", "", "--dropout", "0", "--patch-size", "1",
              "--timesteps", "50", "--beta-start", "1e-3", "--beta-end", "0.2"]


def train_config(out: Path, **overrides) -> TrainConfig:
    """A CPU run of a few steps: no warm-up, a short-memory EMA, no sample grids, checkpoints every 4 steps."""
    values = dict(out=str(out), steps=12, batch_size=8, lr=1e-3, warmup_steps=0, ema_decay=0.9, ema_warmup=False,
                  device="cpu", log_every=4, save_every=4, sample_every=0, sample_steps=2, seed=0)
    return TrainConfig(**(values | overrides))


def train_args(data: Path | str, out: Path, *extra: str, steps: int = 12) -> list[str]:
    """train.py options for a tiny CPU run (model and schedule included)."""
    return ["--data", str(data), "--out", str(out), "--steps", str(steps), "--batch-size", "8", "--lr", "1e-3",
            "--warmup-steps", "0", "--ema-decay", "0.9", "--no-ema-warmup", "--device", "cpu",
            "--log-every", "4", "--save-every", "4", "--sample-every", "0", "--sample-steps", "2",
            *MODEL_ARGS, *extra]


def shapes(n: int = 8, size: int = 16) -> torch.Tensor:
    """n simple pictures (N, 3, size, size) uint8: a coloured square on a plain background, each its own."""
    out = torch.zeros((n, 3, size, size), dtype=torch.uint8)
    rng = np.random.default_rng(0)
    for i in range(n):
        background, square = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        img = np.empty((size, size, 3), dtype=np.uint8)
        img[:] = background
        x, y = rng.integers(0, size // 2, 2)
        img[y:y + size // 2, x:x + size // 2] = square
        out[i] = torch.from_numpy(img).permute(2, 0, 1)
    return out


def shapes_pack(n: int = 8) -> ImagePack:
    return ImagePack(shapes(n), [f"{i}.png" for i in range(n)], [])


def write_folder(directory: Path, n: int = 8) -> Path:
    """The shapes as PNG files in ``directory`` (created)."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(shapes(n)):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(directory / f"img_{i:02d}.png")
    return directory


def subprocess_env() -> dict[str, str]:
    """Environment for a training subprocess: one thread (as in the tests), the repo importable, no Hub access."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    env.pop("HF_TOKEN", None)
    return env


PYTHON = sys.executable
