"""Tiny random models saved as model folders, for the tests that run the app's handlers on them."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_tiny_config, perturb, seeded_init

from ddpm_app.diffusion.schedule import ScheduleConfig
from ddpm_app.io.model_folder import DiffusionConfig, SamplingDefaults, save_pretrained
from ddpm_app.models import UNet
from ddpm_app.runtime import openvino_net
from ddpm_app.runtime.isa import detect

T = 20  # the tiny "faces" model's timesteps
PHOTO = Path(__file__).resolve().parents[1] / "ddpm_app" / "assets" / "portrait.png"

def save_tiny(directory: Path, *, image_size: int = 16, channels: int = 3, kind: str = "linear",
              timesteps: int = T, seed: int = 0, sampling: SamplingDefaults = SamplingDefaults()) -> Path:
    config = DiffusionConfig(make_tiny_config(image_size=image_size, in_channels=channels),
                             ScheduleConfig(kind=kind, timesteps=timesteps), training={"dataset": "noise"},
                             sampling=sampling)
    model = perturb(seeded_init(lambda: UNet(config.model), seed), seed)
    return save_pretrained(model, config, directory)


def run_all(gen) -> list[tuple]:
    return list(gen)


# this machine's app network runs bf16 (OpenVINO's, on a CPU with bf16 in hardware)
bf16_here = detect().bf16_native and openvino_net.version() is not None
needs_bf16 = pytest.mark.skipif(not bf16_here, reason="no bf16 engine here (a CPU with bf16 and OpenVINO)")
