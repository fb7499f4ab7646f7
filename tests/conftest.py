"""Shared fixtures: tiny random models, a short schedule, a saved model folder, and no network.

Fixtures
    tiny_config           UNetConfig: 16×16 RGB, widths 32/64, one ResBlock per level, attention at 8×8
    tiny_model            a UNet built from it, weights perturbed so its output is not zero, in eval mode
    tiny_schedule_config  ScheduleConfig: linear, T = 20, β from 1e-3 to 0.3 (ᾱ_T ≈ 0.04)
    tiny_schedule         the Schedule for it
    tiny_diffusion_config DiffusionConfig of tiny_config and tiny_schedule_config
    tiny_model_dir        tiny_model saved with save_pretrained into tmp_path; returns the folder
    seed_config           SeedUNetConfig: 16×16, widths 32 → 64 → 64 (both shortcut kinds)
    seed_model            a SeedUNet built from it, in eval mode
    no_hub_network        (autouse) the Hub client points at a closed localhost port; returns that URL

Plain helpers (``from conftest import …``): make_tiny_config(**overrides), perturb(model, seed),
seeded_init(build, seed); PATIENCE, the seconds any test waits for something before calling it a hang, and
wait_for(condition, what), which polls until the condition holds.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from ddpm_app.model_folder import DiffusionConfig, save_pretrained
from ddpm_app.models import SeedUNet, SeedUNetConfig, UNet, UNetConfig
from ddpm_app.schedule import Schedule, ScheduleConfig

# Tests wait on events and progress, never on a deadline sized for an idle machine: this is only how long a wait
# may last before it counts as a hang (CI and shared machines can be many times slower than an idle one).
PATIENCE = 600


def wait_for(condition, what: str, poll: float = 0.02, progress=None):
    """Poll ``condition()`` until it returns something true, and return that. Fail only after PATIENCE seconds
    without the condition, or, given ``progress()`` (say, the step a run has reached), PATIENCE seconds in which
    that did not change: a slow machine gets all the time it needs, a stuck one does not."""
    deadline, last = time.monotonic() + PATIENCE, progress() if progress else None
    while not (result := condition()):
        if progress and (now := progress()) != last:
            deadline, last = time.monotonic() + PATIENCE, now
        assert time.monotonic() < deadline, f"waited {PATIENCE} s for {what} without progress: a hang"
        time.sleep(poll)
    return result

# The test models are tiny: one thread is fastest, and it keeps a busy machine (a training run beside the
# tests) from turning each convolution into a long wait on thread synchronisation.
torch.set_num_threads(1)


def make_tiny_config(**overrides) -> UNetConfig:
    values = dict(image_size=16, in_channels=3, base_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                  attention_resolutions=(8,), head_channels=32, dropout=0.0)
    return UNetConfig(**(values | overrides))


@torch.no_grad()
def perturb(model: nn.Module, seed: int = 0, scale: float = 0.05) -> nn.Module:
    """Add N(0, scale²) noise to every parameter, so zero-initialised output layers give non-zero outputs."""
    generator = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(scale * torch.randn(p.shape, generator=generator))
    return model


@pytest.fixture(autouse=True)
def no_hub_network(monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the Hugging Face Hub client at a closed local port, so no test can reach the real Hub."""
    from huggingface_hub import constants

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"  # closed once the socket is
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setenv("HF_ENDPOINT", endpoint)  # for subprocesses
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    return endpoint


@pytest.fixture
def tiny_config() -> UNetConfig:
    return make_tiny_config()


def seeded_init(build, seed: int = 0):
    """``build()`` with the global RNG (which nn.init draws from) seeded, restoring its state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


@pytest.fixture
def tiny_model(tiny_config: UNetConfig) -> UNet:
    return perturb(seeded_init(lambda: UNet(tiny_config))).eval()


@pytest.fixture
def tiny_schedule_config() -> ScheduleConfig:
    return ScheduleConfig(kind="linear", timesteps=20, beta_start=1e-3, beta_end=0.3)


@pytest.fixture
def tiny_schedule(tiny_schedule_config: ScheduleConfig) -> Schedule:
    return Schedule(tiny_schedule_config)


@pytest.fixture
def tiny_diffusion_config(tiny_config: UNetConfig, tiny_schedule_config: ScheduleConfig) -> DiffusionConfig:
    return DiffusionConfig(model=tiny_config, schedule=tiny_schedule_config, training={"note": "random weights"})


@pytest.fixture
def tiny_model_dir(tiny_model: UNet, tiny_diffusion_config: DiffusionConfig, tmp_path: Path) -> Path:
    return save_pretrained(tiny_model, tiny_diffusion_config, tmp_path / "tiny-model")


@pytest.fixture
def seed_config() -> SeedUNetConfig:
    return SeedUNetConfig(image_size=16, in_channels=3, init_dim=32, down_channels=(32, 64, 64), time_pos_dim=32)


@pytest.fixture
def seed_model(seed_config: SeedUNetConfig) -> SeedUNet:
    return seeded_init(lambda: SeedUNet(seed_config)).eval()
