"""The forward process seen in the plane: where q(x_t | x₀) puts one point, and what the whole cloud becomes."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ddpm_app.diffusion.schedule import Schedule


class Gaussian(NamedTuple):
    """N(mean, std²·I) in the plane."""

    mean: Tensor  # (2,)
    std: float


def q_gaussian(schedule: Schedule, x0: Tensor, t: int) -> Gaussian:
    """q(x_t | x₀) = N(√ᾱ_t·x₀, (1−ᾱ_t)·I) for one point x₀ (2,): the circles drawn around it (eq. 4)."""
    f64 = schedule.float64
    return Gaussian(float(f64.sqrt_alphas_cumprod[t]) * x0.double(), float(f64.sqrt_one_minus_alphas_cumprod[t]))


def noised_cloud(schedule: Schedule, x0: Tensor, t: int, noise: Tensor) -> Tensor:
    """Every point of x0 (N, 2) noised to timestep t with the given ε (N, 2), by :meth:`Schedule.q_sample`."""
    return schedule.q_sample(x0, torch.full((len(x0),), t, dtype=torch.long), noise)
