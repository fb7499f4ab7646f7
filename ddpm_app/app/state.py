"""What one user (a browser tab or an API client) keeps between requests."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import Tensor

from ..likelihood import BitsPerDim
from ..loss import LossCurve
from .inputs import InputError, random_seed, resolve_seed
from .plots import MarkedPlot
from .runs import Trajectory
from .served import ServedModel
from .training_view import TrainingStep


@dataclass
class ForwardState:
    """One user's forward-process view: the photo as x₀, the noise ε and x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε."""

    photo: str | None = None  # the file x0 was made from
    model: str | None = None  # the model x0 was sized for
    x0: Tensor | None = None  # (C, H, W) in [−1, 1]
    eps: Tensor | None = None  # (C, H, W)
    eps_seed: int | None = None
    t: int = 0
    x_t: Tensor | None = None  # (C, H, W)

    def update(self, served: ServedModel, photo: str | None, t: int, fix_noise: bool,
               noise_seed: float | None = -1) -> None:
        """Noise ``photo`` to timestep ``t``. With ``fix_noise`` the previous ε is kept (unless a different
        ``noise_seed`` is asked for); otherwise ε is drawn anew from ``noise_seed`` (−1 = a random seed)."""
        if photo is None:
            self.photo = self.model = self.x0 = self.x_t = None
            return
        if photo != self.photo or served.name != self.model:
            self.x0 = served.prepare_photo(photo)  # raises ImageError for a bad file
            self.photo, self.model = photo, served.name
        wanted = None if noise_seed is None or noise_seed == -1 else resolve_seed(noise_seed)
        keep = (fix_noise and self.eps is not None and self.eps.shape == self.x0.shape
                and wanted in (None, self.eps_seed))
        if not keep:
            self.eps_seed = wanted if wanted is not None else random_seed()
            self.eps = served.draw_noise(self.eps_seed)
        self.t = t
        self.x_t = served.q_sample(self.x0, t, self.eps)[0]


RUN_KINDS = ("generate", "denoise")


@dataclass
class LessonState:
    """One user's latest results in the teaching views (training, likelihood, interpolation), kept for their
    figures and exports."""

    step: TrainingStep | None = None  # the training view's latest step
    curve_for: tuple[str, str] | None = None  # (model, photo) the photo's loss curve was computed for
    curve: LossCurve | None = None
    plot_for: tuple[str, str | None] | None = None  # (model, photo or None) the curve plot was drawn for
    plot: MarkedPlot | None = None
    likelihood: BitsPerDim | None = None
    likelihood_plot: np.ndarray | None = None
    interpolation: np.ndarray | None = None  # (n, C, H, W) uint8: the images from seed a to seed b
    interpolation_title: str = ""
    compare_t: int = 0  # where the Compare scrubber is


@dataclass
class UserState:
    """What one browser tab (or API client) keeps between requests: its model, its latest Generate run and its
    latest Denoise run (neither replaces the other), the run it pinned to compare against, its photo."""

    model: str | None = None  # None = the library's default
    runs: dict[str, Trajectory] = field(default_factory=dict)  # by kind: "generate", "denoise"
    shown: str = "generate"  # the kind of run the Frames tab shows
    frame_index: int = -1  # the frame of it shown last
    pinned: Trajectory | None = None
    forward: ForwardState = field(default_factory=ForwardState)
    lesson: LessonState = field(default_factory=LessonState)

    def keep(self, kind: str, run: Trajectory) -> None:
        """Make ``run`` this user's latest run of ``kind`` (a new object per run: a stopped run still finishing its
        step cannot write into the next one) and the one the Frames tab shows."""
        if kind not in RUN_KINDS:
            raise InputError(f"run kind must be one of {', '.join(RUN_KINDS)}, got {kind!r}")
        self.runs[kind] = run
        self.shown = kind

    def show(self, kind: str) -> None:
        if kind not in RUN_KINDS:
            raise InputError(f"run kind must be one of {', '.join(RUN_KINDS)}, got {kind!r}")
        self.shown = kind

    @property
    def run(self) -> Trajectory | None:
        """The run the Frames tab shows."""
        return self.runs.get(self.shown)
