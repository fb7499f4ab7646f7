"""One model served on one device, shared by every user: sampling with a per-request generator, the forward
process for a photo, and what the model tab shows. The math comes from :mod:`ddpm_app.diffusion.schedule` and
:mod:`ddpm_app.diffusion.samplers`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ddpm_app.checks import InvalidValue, whole_number
from ddpm_app.diffusion.interpolation import slerp, weights
from ddpm_app.diffusion.samplers import SamplerSettings, Step
from ddpm_app.diffusion.schedule import SCHEDULE_KINDS, Schedule, ScheduleConfig, table_index
from ddpm_app.image import load_image
from ddpm_app.io.model_folder import LoadedModel
from ddpm_app.metrics import heldout
from ddpm_app.metrics.heldout import HeldOut
from ddpm_app.runtime.inference import Network, example_input, median_ms
from ddpm_app.serve.inputs import batch_size
from ddpm_app.text import text

STRIP_LENGTH = 8  # x_t at this many evenly spaced t in the forward view
FIRST_RUN_SECONDS = 60  # Generate's first settings should finish within about this long on this machine
MIN_FIRST_STEPS = 10  # ... but with no fewer DDIM steps than this
SLOW_STEP_MS = 1000  # a step this slow is timed once when the model loads, not four times


class FirstRun(NamedTuple):
    """Generate's first settings for a model on this machine, and why they differ from the app's (or "")."""

    batch: int
    ddim_steps: int
    note: str


class NoiseLevel(NamedTuple):
    """The forward process at one timestep: x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε."""

    t: int
    alpha_bar: float
    sqrt_alpha_bar: float
    sqrt_one_minus_alpha_bar: float
    snr: float  # ᾱ_t / (1 − ᾱ_t)
    snr_db: float


@dataclass(frozen=True)
class ModelSummary:
    """What the model tab shows about a model."""

    name: str
    source: str
    arch: str
    parameters: int
    image_size: int
    channels: int
    schedule: ScheduleConfig
    dataset: str | None  # from config.json's training metadata
    training: dict
    card: str  # the model card's text without its YAML front matter or image links ("" if there is none)
    samples: Path | None  # samples.png next to the weights, if there is one
    runtime: str  # how the network runs here: device, CPU and its ISA, precision, and why
    ms_per_step: float | None  # one network evaluation at batch 1, measured on this machine when loaded (CPU only)


class ServedModel:
    """A loaded model, its schedule and its network on this machine: the calls the app's handlers make. One per model,
    shared by every user; what a user keeps is in :class:`~ddpm_app.views.state.UserState`."""

    def __init__(self, name: str, loaded: LoadedModel, network: Network, folder: Path | None = None):
        self.name = name
        self.loaded = loaded
        self.folder = Path(folder or loaded.source)  # where config.json and the model card are
        self.schedule = loaded.schedule
        # ε_θ(x_t, t) as it runs here (see ddpm_app.runtime.inference.prepare): the samplers run it, and what the
        # teaching views measure (the loss, the bound) runs its .fp32(), as the held-out figures beside them were made
        self.eps_model = network
        self.device = network.device
        self.runtime = network.runtime
        # what a step costs on this machine, for the model tab (on CUDA the first call compiles: not measured)
        self.ms_per_step = None
        if self.device.type == "cpu":
            # one call first: where it takes seconds (a 256² model), that call is the figure, not the median of four
            example = example_input(loaded.model, 1)
            self.ms_per_step = median_ms({"step": network}, example, rounds=1, warmup=0)["step"]
            if self.ms_per_step < SLOW_STEP_MS:
                self.ms_per_step = median_ms({"step": network}, example, rounds=3)["step"]
        self.heldout_note = ""  # why :attr:`heldout` is None, once it has been looked up

    @property
    def config(self):
        return self.loaded.config

    @cached_property
    def heldout(self) -> HeldOut | None:
        """The held-out loss curve and bits/dim stored beside the weights (heldout.json), or None: a model folder
        made before they were kept, or an unreadable file (:attr:`heldout_note` says which)."""
        try:
            found = heldout.load(self.folder)
        except heldout.HeldOutError as e:
            self.heldout_note = str(e)
            return None
        self.heldout_note = "" if found else text("heldout.missing", name=heldout.HELDOUT_NAME)
        return found

    @property
    def timesteps(self) -> int:
        return self.schedule.timesteps

    def shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, self.config.channels, self.config.image_size, self.config.image_size)  # (B, C, H, W)

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    def t_index(self, t: float | None) -> int:
        """The table index of a t a person gives, the paper's t = 1…T, checked."""
        return table_index(whole_number(t, "t", 1, self.timesteps))

    def check_batch(self, batch: float | None) -> int:
        return batch_size(batch)

    def settings(self, sampler: str, steps: float | None, eta: float | None, clip_x0: bool) -> SamplerSettings:
        """A user's sampler settings for this model, checked, with DDPM's reverse variance σ_t² of its config."""
        return SamplerSettings.checked(sampler, steps, eta, clip_x0, self.timesteps, self.config.sampling.variance)

    def first_run(self, batch: int, ddim_steps: int) -> FirstRun:
        """What Generate starts with for this model: the app's ``batch`` and ``ddim_steps``, or, where a step costs so
        much here that such a run would take more than :data:`FIRST_RUN_SECONDS` (a 256² model on a CPU), one image
        and as many DDIM steps as fit in that time (at least :data:`MIN_FIRST_STEPS`), with a note that says why."""
        ms = self.ms_per_step
        if ms is None or ms * batch * ddim_steps <= FIRST_RUN_SECONDS * 1000:
            return FirstRun(batch, min(ddim_steps, self.timesteps), "")
        steps = max(MIN_FIRST_STEPS, min(ddim_steps, int(FIRST_RUN_SECONDS * 1000 // ms)))
        steps = min(steps, self.timesteps)
        size = self.config.image_size
        note = (f"A step of this {size}×{size} model takes {ms / 1000:.1f} s here ({self.device.type}, one image), so "
                f"Generate starts with 1 image and DDIM with {steps} steps (about {steps * ms / 1000:.0f} s); DDPM's "
                f"{self.timesteps} steps would take about {self.timesteps * ms / 60000:.0f} min per image.")
        return FirstRun(1, steps, note)

    def sample(self, settings: SamplerSettings, batch: int, seed: int) -> Iterator[Step]:
        """The reverse chain from x_T ~ N(0, I), drawn (like all its noise) from a generator seeded with ``seed``."""
        return settings.run(self.eps_model, self.schedule, self.shape(batch), generator=self.generator(seed),
                            device=self.device)

    def sdedit(self, x_t: Tensor, t: int, settings: SamplerSettings, seed: int) -> Iterator[Step]:
        """The reverse chain from a given x_t at timestep t back to x₀ (SDEdit: noise a photo, then denoise it)."""
        x_start = x_t.to(self.device)[None] if x_t.dim() == 3 else x_t.to(self.device)
        return settings.run(self.eps_model, self.schedule, tuple(x_start.shape), start_t=t,
                            generator=self.generator(seed), x_start=x_start, device=self.device)

    def start_noise(self, seed: int, batch: int = 1) -> Tensor:
        """x_T ~ N(0, I) as :meth:`sample` draws it from ``seed`` (B, C, H, W)."""
        return torch.randn(self.shape(batch), generator=self.generator(seed), device=self.device)

    def interpolate(self, seed_a: int, seed_b: int, n: int, settings: SamplerSettings) -> Iterator[Step]:
        """The chain from ``n`` slerps between seed a's and seed b's x_T (ends included): a batch of n images.

        Every step's z (η > 0) is the slerp of the z that :meth:`sample` draws from each seed for one image, so
        the ends are exactly the two seeds' one-image runs with the same settings, whatever η."""
        a, b, w = self.generator(seed_a), self.generator(seed_b), weights(n)

        def draw(shape: tuple[int, ...]) -> Tensor:  # (n, C, H, W) from two (C, H, W) draws
            one = self.shape(1)
            return slerp(torch.randn(one, generator=a, device=self.device)[0],
                         torch.randn(one, generator=b, device=self.device)[0], w)

        x_start = draw(self.shape(n))  # x_T: each generator's first draw, as in sample()
        return settings.run(self.eps_model, self.schedule, tuple(x_start.shape), x_start=x_start, draw_noise=draw,
                            device=self.device)

    def noise_level(self, t: int) -> NoiseLevel:
        s = self.schedule
        return NoiseLevel(t, float(s.alphas_cumprod[t]), float(s.sqrt_alphas_cumprod[t]),
                          float(s.sqrt_one_minus_alphas_cumprod[t]), float(s.float64.snr[t]), s.snr_db(t))

    def prepare_photo(self, source) -> Tensor:
        """A user photo → x₀ (C, H, W) in [−1, 1] at the model's size: center-cropped, resized, grey if C = 1."""
        x0 = load_image(source, self.config.image_size)  # (3, H, W)
        if self.config.channels == 1:
            x0 = x0.mean(dim=0, keepdim=True)
        elif self.config.channels != 3:
            raise InvalidValue("error.channels", channels=self.config.channels)
        return x0

    def draw_noise(self, seed: int) -> Tensor:
        """ε ~ N(0, I) of one image's shape (C, H, W), on the CPU so a seed gives the same ε on any device."""
        return torch.randn(self.shape(1)[1:], generator=torch.Generator().manual_seed(seed))

    def q_sample(self, x0: Tensor, t: int | list[int], eps: Tensor) -> Tensor:
        """x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε for one image (C, H, W) at one or several t → (len(t), C, H, W)."""
        ts = torch.tensor([t] if isinstance(t, int) else t, dtype=torch.long)
        n = len(ts)
        return self.schedule.q_sample(x0.expand(n, *x0.shape), ts, eps.expand(n, *eps.shape))

    def strip_timesteps(self, n: int = STRIP_LENGTH) -> list[int]:
        """``n`` evenly spaced timesteps from 0 to T−1."""
        return sorted({round(i * (self.timesteps - 1) / max(n - 1, 1)) for i in range(n)})

    def summary(self) -> ModelSummary:
        card = ""
        readme = self.folder / "README.md"
        if readme.is_file():
            card = _strip_front_matter(readme.read_text(errors="replace"))
            card = re.sub(r"!\[[^\]]*\]\([^)]*\)\s*", "", card)  # pictures are shown separately
        training = dict(self.config.training)
        data = training.get("data")
        dataset = training.get("dataset") or (data.get("path") if isinstance(data, dict) else data)
        samples = self.folder / "samples.png"
        return ModelSummary(self.name, self.loaded.source, self.config.arch, self.loaded.num_parameters,
                            self.config.image_size, self.config.channels, self.config.schedule,
                            None if dataset is None else str(dataset), training, card,
                            samples if samples.is_file() else None, self.runtime.describe(), self.ms_per_step)


def _strip_front_matter(text: str) -> str:
    if text.startswith("---"):
        end = text.find("\n---", 3)
        if end != -1:
            text = text[end + 4:]
    return text.strip()


@lru_cache(maxsize=8)
def schedule_curves(timesteps: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(ᾱ_t, SNR in dB) over t = 0…T−1 for each schedule kind with its default settings."""
    curves = {}
    for kind in SCHEDULE_KINDS:
        s = Schedule(ScheduleConfig(kind=kind, timesteps=timesteps))
        curves[kind] = (s.float64.alphas_cumprod.numpy(), 10.0 * np.log10(s.float64.snr.numpy()))
    return curves
