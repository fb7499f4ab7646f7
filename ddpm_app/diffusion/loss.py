"""The training objective: the simple loss ‖ε − ε_θ(x_t, t)‖² with x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε (DDPM eq. 14).

The ELBO's per-step KL between two Gaussians of equal variance reduces to a weighted squared distance of their
means, and written with ε that is a weighted ‖ε − ε̂‖²; DDPM drops the weight. :func:`noise_prediction` is that
computation for a batch, :func:`diffusion_loss` the number training minimises, and :func:`loss_curve` its
expectation at each t for a set of images (what the trained network still gets wrong, timestep by timestep).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor

from ddpm_app.diffusion.samplers import EpsModel
from ddpm_app.diffusion.schedule import Schedule


class NoisePrediction(NamedTuple):
    """One pass of the training objective: the noised input, the network's guess and its per-value error."""

    x_t: Tensor  # √ᾱ_t·x₀ + √(1−ᾱ_t)·ε, (B, C, H, W) for images, (B, 2) for points
    pred_eps: Tensor  # ε̂ = ε_θ(x_t, t), float32
    squared_error: Tensor  # (ε − ε̂)², the shape of x_t

    def per_sample(self) -> Tensor:
        """The mean over each sample's values (pixels, or a point's coordinates) of (ε − ε̂)²: (B,)."""
        return self.squared_error.flatten(1).mean(dim=1)


def noise_prediction(model: EpsModel, schedule: Schedule, x0: Tensor, t: Tensor, noise: Tensor) -> NoisePrediction:
    """x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε, ε̂ = ε_θ(x_t, t) and (ε − ε̂)² for a batch (DDPM Algorithm 1, one step)."""
    x_t = schedule.q_sample(x0, t, noise)
    pred = model(x_t, t).float()
    return NoisePrediction(x_t, pred, (pred - noise.float()) ** 2)


def diffusion_loss(model: EpsModel, schedule: Schedule, x0: Tensor, t: Tensor, noise: Tensor,
                   weights: Tensor | None = None) -> Tensor:
    """Mean over pixels and batch of ‖ε − ε_θ(x_t, t)‖² (optionally weighted per sample)."""
    per_sample = noise_prediction(model, schedule, x0, t, noise).per_sample()  # (B,)
    if weights is not None:
        per_sample = per_sample * weights
    return per_sample.mean()


def curve_timesteps(timesteps: int, num: int) -> list[int]:
    """``num`` evenly spaced timesteps over the whole schedule, 0 and T−1 included."""
    if num < 2:
        return [timesteps - 1]
    return sorted({round(i * (timesteps - 1) / (num - 1)) for i in range(num)})


@dataclass(frozen=True)
class LossCurve:
    """E[‖ε − ε̂‖²/(C·H·W)] against t for a set of images, each (image, t) with ``draws`` fresh ε."""

    timesteps: list[int]
    mean: list[float]  # at each t: the loss averaged over the images and draws
    stderr: list[float]  # standard error of that mean over the images × draws
    draws: int
    num_images: int

    def at(self, t: int) -> float:
        """The curve at ``t``, linearly interpolated between the evaluated timesteps."""
        ts = torch.tensor(self.timesteps, dtype=torch.float64)
        values = torch.tensor(self.mean, dtype=torch.float64)
        i = int(torch.searchsorted(ts, torch.tensor(float(t), dtype=torch.float64)).clamp(1, len(ts) - 1))
        w = (t - ts[i - 1]) / max(float(ts[i] - ts[i - 1]), 1e-12)
        return float(values[i - 1] + w.clamp(0, 1) * (values[i] - values[i - 1]))

    def to_dict(self) -> dict:
        return dict(timesteps=self.timesteps, mean=self.mean, stderr=self.stderr, draws=self.draws,
                    num_images=self.num_images)

    @classmethod
    def from_dict(cls, data: dict) -> LossCurve:
        return cls([int(t) for t in data["timesteps"]], [float(v) for v in data["mean"]],
                   [float(v) for v in data["stderr"]], int(data["draws"]), int(data["num_images"]))


@torch.inference_mode()
def loss_curve(model: EpsModel, schedule: Schedule, x0: Tensor, timesteps: Sequence[int], *, draws: int = 1,
               generator: torch.Generator | None = None, batch_size: int = 64,
               progress: Callable[[int, int], None] | None = None) -> LossCurve:
    """The loss at each of ``timesteps`` for images x₀ (N, C, H, W) in [−1, 1]: every image with ``draws`` ε.

    (t, image, draw) triples are batched ``batch_size`` at a time; ε comes from ``generator`` (on x₀'s device) in
    that order. ``progress(done, total)`` counts network inputs.
    """
    device = x0.device
    n = len(x0)
    ts = torch.tensor(list(timesteps), dtype=torch.long, device=device).repeat_interleave(n * draws)  # t-major
    images = x0.repeat(draws, 1, 1, 1).repeat(len(timesteps), 1, 1, 1)  # (K·draws·N, C, H, W), the same order
    losses = torch.empty(len(ts), dtype=torch.float64)
    if progress is not None:
        progress(0, len(ts))
    for i in range(0, len(ts), batch_size):
        block, t = images[i:i + batch_size], ts[i:i + batch_size]
        noise = torch.randn(block.shape, generator=generator, device=device)
        losses[i:i + len(t)] = noise_prediction(model, schedule, block, t, noise).per_sample().double().cpu()
        if progress is not None:
            progress(min(i + batch_size, len(ts)), len(ts))
    per_t = losses.reshape(len(timesteps), n * draws)
    spread = per_t.std(dim=1) / (n * draws) ** 0.5 if n * draws > 1 else torch.full((len(timesteps),), float("nan"))
    return LossCurve(list(map(int, timesteps)), per_t.mean(dim=1).tolist(), spread.tolist(), draws, n)
