"""The held-out ε-MSE: the simple loss on a held-out set, fixed (x₀, t, ε) triples from images a run does not train
on, so that the figure compares across steps, runs and recipes (``train.py --eval-every``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ddpm_app.diffusion.loss import diffusion_loss
from ddpm_app.diffusion.schedule import Schedule
from ddpm_app.image import from_uint8

HELD_OUT_SEED = 0  # draws the held-out set's t and ε: one fixed set, whatever the run's own seed


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
