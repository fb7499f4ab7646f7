"""The 2-D lab's views, without Gradio: one user's lab (data, model, trainer, runs), the settings a user picks,
checked, the pictures (data, forward process, training, sampling) and the exports.

Pictures are 512 pixels or more on a side (they double as figures for slides); each is its own image, so they
stack one per line on a phone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from matplotlib.patches import Circle
from PIL import Image
from torch import Tensor

from ddpm_app.checks import InvalidValue, choice, real_number, whole_number
from ddpm_app.diffusion.samplers import SamplerSettings, Step, ddim, ddpm
from ddpm_app.diffusion.schedule import SCHEDULE_KINDS, Schedule, ScheduleConfig, paper_t
from ddpm_app.lab import (
    PointMLPConfig,
    PointSet,
    Trainer,
    TrainSettings,
    build_model,
    energy_distance,
    noised_cloud,
    predict_field,
    q_gaussian,
)
from ddpm_app.lab.points import MAX_POINTS
from ddpm_app.serve.runs import sampler_words
from ddpm_app.text import ENGLISH, text, translated
from ddpm_app.views.plots import log_y, new_figure, pixels

MAX_STEPS = 20_000  # optimiser steps in one Train or Continue request
MAX_TRAIN_SECONDS = 60.0  # wall-clock seconds one request may train; Continue goes on from there
MAX_SAMPLES = 2000  # points one Sample request draws
MAX_TIMESTEPS = 1000
MAX_STORED_FRAMES = 200  # steps of a sampling run kept for its pictures and animation
PREVIEW_POINTS = 500  # points sampled (DDIM) for each preview while training
PREVIEW_DDIM_STEPS = 50
FIGURE_INCHES, FIGURE_DPI = 5.4, 100  # 540 px
DATA_COLOUR, MODEL_COLOUR, NOISE_COLOUR = "#9aa5b1", "#1f6feb", "#d1242f"
LIMIT = 1.35  # axes of the data-scale pictures: the data fill [−1, 1]²


@dataclass(frozen=True)
class LabSettings:
    """Everything a Train request chooses: the schedule, the network and the optimiser, and how many steps."""

    schedule: ScheduleConfig = ScheduleConfig()
    network: PointMLPConfig = PointMLPConfig()
    training: TrainSettings = TrainSettings()
    steps: int = 3000

    @classmethod
    def checked(cls, kind: object, timesteps: object, beta_start: object, beta_end: object, width: object,
                depth: object, steps: object, learning_rate: object, seed: object) -> LabSettings:
        """Settings from what a user sent, each checked with a message naming its field."""
        kind = choice(kind, "schedule", SCHEDULE_KINDS)
        T = whole_number(timesteps, "T (timesteps)", 2, MAX_TIMESTEPS)
        b0 = real_number(beta_start, "β start", 1e-6, 0.5)
        b1 = real_number(beta_end, "β end", 1e-6, 0.5)
        if kind == "linear" and b1 < b0:
            raise InvalidValue("error.beta_order", start=b0, end=b1)
        network = PointMLPConfig(whole_number(width, "width", 2, 512), whole_number(depth, "depth", 1, 6))
        training = TrainSettings(learning_rate=real_number(learning_rate, "learning rate", 1e-5, 0.1),
                                 seed=whole_number(seed, "seed", 0, 2**31 - 1))
        return cls(ScheduleConfig(kind, T, b0, b1), network, training, whole_number(steps, "steps", 1, MAX_STEPS))

    def describe(self) -> str:
        s, n = self.schedule, self.network
        betas = f"β {s.beta_start:g}…{s.beta_end:g}" if s.kind == "linear" else "cosine ᾱ"
        return f"T = {s.timesteps}, {betas}, MLP {n.depth}×{n.width}, lr {self.training.learning_rate:g}"


class Quality(NamedTuple):
    """Energy distances to the training points: of the model's samples, of N(0, I) points, of the held-out points."""

    model: float
    noise: float
    heldout: float

    def markdown(self, language: str = ENGLISH) -> str:
        ratio = self.noise / self.model if self.model > 0 else math.inf
        return text("lab.quality", language, model=f"{self.model:.4f}", noise=f"{self.noise:.4f}",
                    heldout=f"{self.heldout:.4f}", ratio=f"{ratio:.0f}",
                    end=text("lab.quality_useful" if self.useful else "punct.stop", language))

    @property
    def useful(self) -> bool:
        """Samples as close to the data as held-out data give or take 5 % of noise's distance (what the lab and
        its benchmark call a useful model)."""
        return self.model <= max(self.heldout, 0.0) + 0.05 * self.noise


def quality(samples: Tensor, data: PointSet, seed: int = 0) -> Quality:
    noise = torch.randn(len(samples), 2, generator=torch.Generator().manual_seed(seed))
    return Quality(energy_distance(samples, data.train), energy_distance(noise, data.train),
                   energy_distance(data.heldout, data.train))


@dataclass
class Preview:
    """Samples drawn while training, for the live picture and the training animation."""

    step: int
    samples: Tensor  # (PREVIEW_POINTS, 2)
    distance: float


@dataclass
class SampleRun:
    """A reverse run of many points: x_t and x̂₀ at up to :data:`MAX_STORED_FRAMES` of its steps."""

    title: str
    ts: list[int]  # the timestep of each stored frame
    x_t: list[Tensor]  # (B, 2) each
    pred_x0: list[Tensor]
    final: Tensor | None = None  # (B, 2)

    def at(self, t: int) -> int:
        """The stored frame whose timestep is nearest t."""
        return min(range(len(self.ts)), key=lambda i: abs(self.ts[i] - t))


@dataclass
class LabState:
    """One user's lab: the data, the settings and the model trained on them, its losses and previews, the last
    sampling run. ``busy`` refuses a second training run of the same user while one goes on."""

    data: PointSet | None = None
    settings: LabSettings | None = None
    schedule: Schedule | None = None
    trainer: Trainer | None = None
    losses: list[float] = field(default_factory=list)
    previews: list[Preview] = field(default_factory=list)
    seconds: float = 0.0  # training time so far
    run: SampleRun | None = None
    history: list[str] = field(default_factory=list)  # one line per finished training: settings, steps, distance
    busy: bool = False  # a plain flag: gr.State deep-copies the initial UserState, and a lock cannot be copied

    def start(self, data: PointSet, settings: LabSettings) -> None:
        """A fresh model for ``data`` under ``settings`` (what Train does before its steps)."""
        self.data, self.settings = data, settings
        self.schedule = Schedule(settings.schedule)
        model = build_model(settings.network, settings.training.seed)
        self.trainer = Trainer(model, self.schedule, data.train, settings.training)
        self.losses, self.previews, self.seconds, self.run = [], [], 0.0, None

    @property
    def model(self):
        if self.trainer is None:
            raise InvalidValue("lab.no_model")
        return self.trainer.model

    def preview(self) -> Preview:
        """DDIM samples of the model as it is now (a fixed seed, so previews differ only by training)."""
        samples = _last(ddim(self.model, self.schedule, (PREVIEW_POINTS, 2), steps=min(PREVIEW_DDIM_STEPS,
                        self.schedule.timesteps), generator=torch.Generator().manual_seed(0), clip_x0=True)).x_prev
        shown = Preview(self.trainer.step, samples, energy_distance(samples, self.data.train))
        self.previews.append(shown)
        return shown

    def sample(self, settings: SamplerSettings, variance: str, count: int, seed: int,
               language: str = ENGLISH) -> SampleRun:
        """Run the reverse chain for ``count`` points and keep it (frames evenly spaced over its steps)."""
        generator = torch.Generator().manual_seed(seed)
        if settings.sampler == "ddpm":
            steps = ddpm(self.model, self.schedule, (count, 2), generator=generator, clip_x0=settings.clip_x0,
                         variance=variance)
        else:
            steps = ddim(self.model, self.schedule, (count, 2), steps=settings.steps, eta=settings.eta,
                         generator=generator, clip_x0=settings.clip_x0)
        total = settings.num_steps(self.schedule.timesteps - 1)
        keep = set(np.linspace(0, total - 1, min(total, MAX_STORED_FRAMES)).round().astype(int).tolist())
        variance_name = "" if settings.sampler == "ddim" else f", σ² = {'β̃' if variance == 'posterior' else 'β'}"
        title = text("lab.run_title", language, settings=sampler_words(settings, self.schedule.timesteps - 1, language),
                     variance=variance_name, clipped=text("lab.clipped" if settings.clip_x0 else "lab.unclipped",
                                                          language), seed=seed)
        run = SampleRun(title, [], [], [])
        for step in steps:
            if step.index in keep:
                run.ts.append(step.t)
                run.x_t.append(step.x_t.clone())
                run.pred_x0.append(step.pred_x0.clone())
            run.final = step.x_prev
        self.run = run
        return run


def _last(steps) -> Step:
    last = None
    for last in steps:
        pass
    return last


def check_samples(value: object) -> int:
    return whole_number(value, "number of points", 10, MAX_SAMPLES)


def check_points(value: object) -> int:
    return whole_number(value, "number of data points", 50, MAX_POINTS)


# -- pictures ----------------------------------------------------------------------------------------------------

def _axes(title: str, limit: float = LIMIT):
    fig = new_figure(FIGURE_INCHES, FIGURE_INCHES, FIGURE_DPI)
    ax = fig.subplots()
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_aspect("equal")
    ax.grid(alpha=0.25)
    ax.set_title(title, fontsize=10)
    return fig, ax


def _dots(ax, points: Tensor, colour: str, label: str, size: float = 4, alpha: float = 0.6) -> None:
    p = points.detach().cpu().numpy()
    ax.scatter(p[:, 0], p[:, 1], s=size, c=colour, alpha=alpha, linewidths=0, label=label)


def data_picture(data: PointSet, language: str = ENGLISH) -> np.ndarray:
    fig, ax = _axes(text("lab.plot.data", language, name=translated(data.name, language), train=len(data.train),
                         heldout=len(data.heldout)))
    _dots(ax, data.train, MODEL_COLOUR, text("lab.plot.training_points", language))
    _dots(ax, data.heldout, "#f0883e", text("lab.plot.held_out", language), alpha=0.4)
    ax.legend(loc="upper right", fontsize=8, markerscale=3)
    return pixels(fig)


def forward_picture(schedule: Schedule, data: PointSet, t: int, index: int, noise: Tensor,
                    language: str = ENGLISH) -> np.ndarray:
    """The cloud at t, and q(x_t | x₀) around one chosen point: its mean and 1σ, 2σ circles."""
    x_t = noised_cloud(schedule, data.train, t, noise)
    x0 = data.train[index]
    q = q_gaussian(schedule, x0, t)
    limit = max(LIMIT, float(x_t.abs().quantile(0.995)) * 1.1)
    abar = float(schedule.float64.alphas_cumprod[t])
    fig, ax = _axes(text("lab.plot.forward", language, t=paper_t(t), abar=f"{abar:.3g}"), limit)
    _dots(ax, data.train, DATA_COLOUR, text("lab.plot.x0_data", language), alpha=0.3)
    _dots(ax, x_t, MODEL_COLOUR, "x_t")
    mean = q.mean.numpy()
    for k in (1, 2):
        ax.add_patch(Circle(mean, k * q.std, fill=False, ec=NOISE_COLOUR, lw=1.4, ls="-" if k == 1 else "--"))
    ax.annotate("", mean, x0.numpy(), arrowprops=dict(arrowstyle="->", color=NOISE_COLOUR))
    ax.plot(*x0.numpy(), marker="*", ms=12, c=NOISE_COLOUR, ls="", label=text("lab.plot.x0_chosen", language))
    ax.plot(*mean, marker="+", ms=12, c=NOISE_COLOUR, ls="", label=text("lab.plot.mean", language))
    ax.legend(loc="upper left", fontsize=7)
    return pixels(fig)


def forward_pictures(config: ScheduleConfig, data: PointSet, t: int, index: int,
                     language: str = ENGLISH) -> tuple[np.ndarray, np.ndarray]:
    """The forward process on the data with the schedule ``config`` describes: :func:`forward_picture` at t around
    point ``index`` and :func:`marginal_picture`, every point noised with the same ε (seed 0), so that moving t moves
    each point along one path, and the same N(0, I) points (seed 1) beside x_T."""
    schedule = Schedule(config)
    noise = torch.randn(data.train.shape, generator=torch.Generator().manual_seed(0))
    reference = torch.randn(data.train.shape, generator=torch.Generator().manual_seed(1))
    return (forward_picture(schedule, data, t, index, noise, language),
            marginal_picture(schedule, data, noise, reference, language))


def marginal_picture(schedule: Schedule, data: PointSet, noise: Tensor, reference: Tensor,
                     language: str = ENGLISH) -> np.ndarray:
    """The cloud at the last timestep beside N(0, I) points, with the distance between them."""
    T = schedule.timesteps
    x_T = noised_cloud(schedule, data.train, T - 1, noise)
    gap = energy_distance(x_T, reference)
    fig, ax = _axes(text("lab.plot.marginal", language, t=T, gap=f"{gap:.4f}"), 3.6)
    _dots(ax, reference, NOISE_COLOUR, "N(0, I)", alpha=0.35)
    _dots(ax, x_T, MODEL_COLOUR, "x_T")
    for k in (1, 2, 3):
        ax.add_patch(Circle((0, 0), k, fill=False, ec="#555", lw=0.8, ls=":"))
    ax.legend(loc="upper right", fontsize=8, markerscale=3)
    return pixels(fig)


def loss_picture(losses: list[float], previews: list[Preview], language: str = ENGLISH) -> np.ndarray:
    """The loss per step (faint) and its running mean, and the previews' distances on a second axis."""
    fig = new_figure(FIGURE_INCHES, FIGURE_INCHES * 0.75, FIGURE_DPI)
    ax = fig.subplots()
    if losses:
        y = np.asarray(losses)
        window = max(1, min(100, len(y) // 10))
        smooth = np.convolve(y, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(1, len(y) + 1), y, c=MODEL_COLOUR, alpha=0.2, lw=0.6)
        ax.plot(np.arange(window, len(y) + 1), smooth, c=MODEL_COLOUR, lw=1.8,
                label=text("lab.plot.loss_mean", language, window=window))
        log_y(ax)
    ax.set_xlabel(text("lab.plot.step", language))
    ax.set_ylabel("‖ε − ε̂‖² / 2")
    ax.grid(alpha=0.3)
    legend_on, handles = ax, ax.get_legend_handles_labels()[0]
    if previews:
        ax2 = legend_on = ax.twinx()  # one legend, on the axes drawn last, so no curve covers it
        ax2.plot([p.step for p in previews], [p.distance for p in previews], "o-", c=NOISE_COLOUR, ms=3,
                 label=text("lab.plot.energy_samples", language))
        log_y(ax2)
        ax2.set_ylabel(text("lab.plot.energy", language), color=NOISE_COLOUR)
        handles += ax2.get_legend_handles_labels()[0]
    if handles:
        legend_on.legend(handles=handles, loc="upper right", fontsize=8)
    ax.set_title(text("lab.plot.loss_title", language), fontsize=10)
    return pixels(fig)


def preview_picture(data: PointSet, preview: Preview | None, label: str = "", language: str = ENGLISH) -> np.ndarray:
    title = (text("lab.plot.no_samples", language) if preview is None else
             text("lab.plot.samples_after", language, step=preview.step, ddim=PREVIEW_DDIM_STEPS,
                  distance=f"{preview.distance:.4f}"))
    fig, ax = _axes(label + title)
    _dots(ax, data.train, DATA_COLOUR, text("lab.data", language), alpha=0.35)
    if preview is not None:
        _dots(ax, preview.samples, MODEL_COLOUR, text("lab.samples", language), size=6, alpha=0.8)
    ax.legend(loc="upper right", fontsize=8, markerscale=3)
    return pixels(fig)


def paths_picture(data: PointSet, run: SampleRun, upto: int | None = None, paths: int = 20,
                  language: str = ENGLISH) -> np.ndarray:
    """Trajectories of the first ``paths`` points from x_T to x₀ (up to stored frame ``upto``), the points now."""
    last = len(run.ts) - 1 if upto is None else upto
    track = torch.stack(run.x_t[:last + 1] + ([run.final] if upto is None else []))[:, :paths].numpy()  # (F, P, 2)
    limit = max(LIMIT, float(np.quantile(np.abs(track), 0.99)) * 1.05)
    what = text("lab.plot.paths_x0", language) if upto is None else text("lab.plot.paths_xt", language, t=paper_t(run.ts[last]))
    fig, ax = _axes(text("lab.plot.paths", language, title=run.title, what=what), limit)
    _dots(ax, data.train, DATA_COLOUR, text("lab.data", language), alpha=0.3)
    for p in range(track.shape[1]):
        ax.plot(track[:, p, 0], track[:, p, 1], c=MODEL_COLOUR, lw=0.5, alpha=0.3)
    now = run.final if upto is None else run.x_t[last]
    _dots(ax, now, NOISE_COLOUR, text("lab.plot.points_now", language), size=6, alpha=0.9)
    ax.legend(loc="upper right", fontsize=8, markerscale=3)
    return pixels(fig)


def field_picture(model, schedule: Schedule, run: SampleRun, t: int, kind: str = "score",
                  language: str = ENGLISH) -> np.ndarray:
    """The network's −ε̂ (or score) as arrows on a grid at t, over the run's points at that t."""
    i = run.at(t)
    t = run.ts[i]
    limit = max(LIMIT, float(run.x_t[i].abs().quantile(0.99)) * 1.05)
    axis = torch.linspace(-limit, limit, 21)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    f = predict_field(model, schedule, grid, t)
    arrows = (f.score if kind == "score" else -f.eps).numpy()
    what = text("lab.plot.score", language) if kind == "score" else "−ε̂"
    fig, ax = _axes(text("lab.plot.field", language, what=what, t=paper_t(t)), limit)
    _dots(ax, run.x_t[i], MODEL_COLOUR, "x_t", alpha=0.5)
    g = grid.numpy()
    ax.quiver(g[:, 0], g[:, 1], arrows[:, 0], arrows[:, 1], color="#333", angles="xy", width=0.003)
    return pixels(fig)


def x0_picture(data: PointSet, run: SampleRun, t: int, language: str = ENGLISH) -> np.ndarray:
    i = run.at(t)
    fig, ax = _axes(text("lab.plot.x0", language, t=paper_t(run.ts[i])))
    _dots(ax, data.train, DATA_COLOUR, text("lab.data", language), alpha=0.35)
    _dots(ax, run.pred_x0[i], "#8250df", "x̂₀", size=5, alpha=0.7)
    ax.legend(loc="upper right", fontsize=8, markerscale=3)
    return pixels(fig)


def training_frames(lab: LabState, language: str = ENGLISH) -> list[Image.Image]:
    """The training animation: each preview's samples over the data."""
    if not lab.previews:
        raise InvalidValue("lab.none_training")
    return [Image.fromarray(preview_picture(lab.data, p, language=language)) for p in lab.previews]


def trajectory_frames(lab: LabState, max_frames: int = 60, language: str = ENGLISH) -> list[Image.Image]:
    """The sampling animation: the points and their paths so far, at up to ``max_frames`` stored steps."""
    run = lab.run
    if run is None:
        raise InvalidValue("lab.none_sample")
    picks = sorted(set(np.linspace(0, len(run.ts) - 1, min(max_frames, len(run.ts))).round().astype(int).tolist()))
    return [Image.fromarray(paths_picture(lab.data, run, upto, language=language)) for upto in [*picks, None]]
