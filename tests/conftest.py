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
    same_global_random_state (autouse) torch, NumPy and random seeded afresh for each test
    no_hub_network        (autouse) the Hub client points at a closed localhost port; returns that URL
    chromium              the path of Debian's Chromium for the browser tests; FAILS (never skips) when it is missing

Plain helpers (``from conftest import …``): make_tiny_config(**overrides), perturb(model, seed),
seeded_init(build, seed), noised_photo_picture(photo, size, t, noise_seed, timesteps); PATIENCE, the seconds
any test waits for something before calling it a hang, and wait_for(condition, what), which polls until the
condition holds.
"""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ddpm_app.diffusion.schedule import Schedule, ScheduleConfig
from ddpm_app.io.model_folder import DiffusionConfig, save_pretrained
from ddpm_app.models import SeedUNet, SeedUNetConfig, UNet, UNetConfig

CHROMIUM = Path("/usr/bin/chromium")  # Debian's build; scripts/test.sh installs it when this path is missing
# flags for headless Chromium in a container: no sandbox (no user namespaces), no GPU, no background traffic
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"]

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


@pytest.fixture(autouse=True)
def same_global_random_state() -> None:
    """Every test starts from the same global random state (PyTorch's, NumPy's, Python's), whatever ran before it:
    a test's draws never depend on the order the files ran in, nor on how much earlier tests drew on this CPU (the
    precision a CPU chooses decides what is built and timed). Tests still seed the draws they check values of."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


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


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium. A browser test that cannot run fails instead of skipping, so a machine without the browser
    never passes the suite unnoticed; leave the browser tests out on purpose with ``-m "not browser"``."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing, so the browser tests cannot run: install Debian's chromium "
                    "(`apt-get install chromium`, as scripts/test.sh does), or leave these tests out with "
                    "-m \"not browser\"", pytrace=False)
    return CHROMIUM


def noised_photo_picture(photo, size: int, t: int, noise_seed: int, timesteps: int) -> np.ndarray:
    """The forward view's x_t as the app should show it, from the definitions alone: x₀ the photo at ``size`` in
    [−1, 1], ε ~ N(0, I) from ``noise_seed`` (CPU), ᾱ_t = ∏_{s≤t}(1 − β_s) for the paper's t (1…T, as the app's
    slider) and the default linear β from 1e-4 to 0.02 over ``timesteps``, x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε, shown as
    (H, W, 3) uint8 with [−1, 1] → [0, 255]."""
    from ddpm_app.image import load_image

    x0 = load_image(photo, size).double()
    eps = torch.randn((3, size, size), generator=torch.Generator().manual_seed(noise_seed)).double()
    abar = torch.prod(1 - torch.linspace(1e-4, 0.02, timesteps, dtype=torch.float64)[:t])
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    return ((x_t.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def assert_pictures_close(ours: np.ndarray, expected: np.ndarray, levels: int = 1) -> None:
    """Equal uint8 pictures up to ``levels`` (float32 against float64 rounding at a level boundary)."""
    assert ours.shape == expected.shape and ours.dtype == expected.dtype == np.uint8
    assert np.abs(ours.astype(int) - expected.astype(int)).max() <= levels


def open_tab(page, name: str) -> None:
    """Click a tab, through the "More tabs" menu when a narrow screen keeps it there."""
    tab = page.get_by_role("tab", name=name)
    if tab.count() and tab.first.is_visible():
        tab.first.click()
        return
    page.get_by_role("button", name="More tabs").click()
    page.locator(".overflow-dropdown button", has_text=name).first.click()


@pytest.fixture(scope="module")
def browser(chromium):
    """Headless Chromium (Debian's) driven by Playwright, one per test module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()
