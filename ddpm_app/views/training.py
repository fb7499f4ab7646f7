"""The training view: DDPM's Algorithm 1 on one photo, and the loss against t for it and for held-out data.

One training step is: take x₀, draw t and ε, form x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε, ask the network for ε̂ = ε_θ(x_t, t),
and score ‖ε − ε̂‖². The numbers come from :func:`ddpm_app.diffusion.loss.noise_prediction` (what :func:`diffusion_loss`
computes) and :func:`ddpm_app.diffusion.loss.loss_curve`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib import colormaps
from torch import Tensor

from ddpm_app.diffusion.loss import LossCurve, curve_timesteps, loss_curve, noise_prediction
from ddpm_app.diffusion.schedule import paper_t
from ddpm_app.metrics.heldout import HeldOut
from ddpm_app.serve.served import ServedModel
from ddpm_app.text import ENGLISH, text
from ddpm_app.views.plots import MarkedPlot, log_y, new_figure

CURVE_TIMESTEPS = 25  # points of the photo's loss curve, evenly spaced over the schedule
CURVE_DRAWS = 3  # ε per point
ERROR_RANGE = 4.0  # a fixed colour scale for the heat map: 0 … 4 (a useless ε̂ = 0 scores 1 on average)


@dataclass(frozen=True)
class TrainingStep:
    """One step of Algorithm 1 on one image (each (C, H, W)), and its loss."""

    t: int  # table index: the paper's t − 1
    noise_seed: int
    x0: Tensor
    eps: Tensor  # ε ~ N(0, I)
    x_t: Tensor  # √ᾱ_t·x₀ + √(1−ᾱ_t)·ε
    pred_eps: Tensor  # ε̂ = ε_θ(x_t, t)
    squared_error: Tensor  # (ε − ε̂)²
    loss: float  # the mean over pixels of (ε − ε̂)²: what diffusion_loss is for this (x₀, t, ε)
    loss_sum: float  # ‖ε − ε̂‖², the tutorial's per-image sum (= loss · C·H·W)


def training_step(served: ServedModel, x0: Tensor, t: int, noise_seed: int) -> TrainingStep:
    """Algorithm 1 for photo ``x0`` (C, H, W) at timestep ``t`` with ε drawn from ``noise_seed`` (as in the
    Forward tab: on the CPU, the same ε on any device)."""
    eps = served.draw_noise(noise_seed)
    tt = torch.tensor([t], device=served.device)
    with torch.inference_mode():
        out = noise_prediction(served.eps_model.fp32(), served.schedule, x0[None].to(served.device), tt,
                               eps[None].to(served.device))
    error = out.squared_error[0].cpu()
    return TrainingStep(t, noise_seed, x0, eps, out.x_t[0].cpu(), out.pred_eps[0].cpu(), error,
                        float(out.per_sample()[0]), float(error.double().sum()))


def photo_curve(served: ServedModel, x0: Tensor, seed: int, num: int = CURVE_TIMESTEPS,
                draws: int = CURVE_DRAWS) -> LossCurve:
    """The photo's loss at ``num`` timesteps over the schedule, ``draws`` ε each (from ``seed``), in one network call,
    because on a small shared CPU per-call costs dominate (docs/performance.md, "Teaching views"). ε is drawn the same
    whatever the batch."""
    return loss_curve(served.eps_model.fp32(), served.schedule, x0[None].to(served.device),
                      curve_timesteps(served.timesteps, num), draws=draws,
                      generator=served.generator(seed), batch_size=num * draws)


def heat_scale(squared_error: Tensor) -> float:
    """The top of the heat map's colour scale: the 99th percentile of (ε − ε̂)² over pixels (at least 10⁻⁶), so the
    map shows where the error is at any t; the numbers say what white means."""
    return max(float(squared_error.float().mean(dim=0).flatten().quantile(0.99)), 1e-6)


def error_heatmap(squared_error: Tensor, vmax: float = ERROR_RANGE) -> np.ndarray:
    """(ε − ε̂)² averaged over channels as colours (magma, 0 … ``vmax``): (H, W, 3) uint8."""
    values = (squared_error.float().mean(dim=0) / vmax).clamp(0, 1).numpy()
    return (colormaps["magma"](values)[..., :3] * 255).round().astype(np.uint8)


def curve_plot(photo: LossCurve | None, heldout: HeldOut | None, timesteps: int, language: str = ENGLISH) -> MarkedPlot:
    """The loss against the paper's t: the photo's (with ±1 standard error) and the held-out images' from
    heldout.json; narrow and with large text, so that a phone, which shrinks it to its width, shows the text legibly."""
    fig = new_figure(5.2, 3.6)
    ax = fig.subplots()
    if photo is not None:
        mean, err = np.array(photo.mean), np.nan_to_num(np.array(photo.stderr))
        ts = paper_t(np.array(photo.timesteps))
        ax.plot(ts, mean, "o-", ms=3, lw=2, color="tab:blue",
                label=text("plot.your_photo_draws", language, draws=photo.draws))
        ax.fill_between(ts, np.maximum(mean - err, 1e-6), mean + err, alpha=0.25, color="tab:blue")
    if heldout is not None and heldout.loss is not None:
        h = heldout.loss
        ax.plot(paper_t(np.array(h.timesteps)), h.mean, "s--", ms=3, lw=1.5, color="tab:orange",
                label=text("plot.heldout_images", language, images=h.num_images, data=heldout.data))
    log_y(ax)
    ax.set_xlim(1, timesteps)
    ax.set_xlabel(text("plot.t", language), fontsize=11)
    ax.set_ylabel(text("plot.loss_per_value", language), fontsize=11)
    ax.set_title(text("plot.training_title", language), fontsize=12)
    ax.tick_params(labelsize=10)
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=10, loc="upper right")
    return MarkedPlot.draw(fig, [ax])
