"""What one user (a browser tab or an API client) keeps between requests, and :class:`Users`, which decides how
long it stays in memory."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Hashable

import numpy as np
from torch import Tensor

from ddpm_app.checks import InvalidValue, choice, random_seed, requested_seed
from ddpm_app.diffusion.likelihood import BitsPerDim
from ddpm_app.diffusion.loss import LossCurve
from ddpm_app.serve.runs import DEFAULT_TRAJECTORY_BYTES, Trajectory
from ddpm_app.serve.served import ServedModel
from ddpm_app.text import ENGLISH
from ddpm_app.views.lab import LabState
from ddpm_app.views.plots import MarkedPlot
from ddpm_app.views.training import TrainingStep

# all users' stored runs together: four of the largest single runs (every step of DDPM-1000 for four images)
DEFAULT_KEPT_BYTES = 4 * DEFAULT_TRAJECTORY_BYTES
DEFAULT_TIME_TO_LIVE = 30 * 60  # seconds a user's results stay after their last request


@dataclass
class ForwardState:
    """One user's forward-process view: the photo as x₀, the noise ε and x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε."""

    photo: str | None = None  # the file x0 was made from
    model: str | None = None  # the model x0 was sized for
    x0: Tensor | None = None  # (C, H, W) in [−1, 1]
    eps: Tensor | None = None  # (C, H, W)
    eps_seed: int | None = None
    t: int = 0  # table index: the paper's t − 1
    x_t: Tensor | None = None  # (C, H, W)

    def update(self, served: ServedModel, photo: str | None, t: int, fix_noise: bool,
               noise_seed: float | None = -1) -> None:
        """Noise ``photo`` to timestep ``t``. With ``fix_noise`` the previous ε is kept (unless a different
        ``noise_seed`` is asked for); otherwise ε is drawn anew from ``noise_seed`` (−1 = a random seed)."""
        wanted = requested_seed(noise_seed)  # None: draw one
        if photo is None:
            self.photo = self.model = self.x0 = self.x_t = None
            return
        if photo != self.photo or served.name != self.model:
            self.x0 = served.prepare_photo(photo)  # raises ImageError for a bad file
            self.photo, self.model = photo, served.name
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
    lab: LabState = field(default_factory=LabState)  # the 2-D lab: data, model, runs
    language: str = ENGLISH  # what the texts it is sent are written in (the page sets it from the browser's language)
    carried: dict[str, str] = field(default_factory=dict)  # by tab: the Forward tab's photo carried there last

    def keep(self, kind: str, run: Trajectory) -> None:
        """Make ``run`` this user's latest run of ``kind`` (a new object per run: a stopped run still finishing its
        step cannot write into the next one) and the one the Frames tab shows."""
        if kind not in RUN_KINDS:
            raise InvalidValue("error.choice", name="run kind", choices=", ".join(RUN_KINDS), got=repr(kind))
        self.runs[kind] = run
        self.shown = kind

    def show(self, kind: object) -> None:
        self.shown = choice(kind, "run", RUN_KINDS)

    @property
    def run(self) -> Trajectory | None:
        """The run the Frames tab shows."""
        return self.runs.get(self.shown)

    def kept_runs(self) -> list[Trajectory]:
        """Every run this user keeps: the latest of each kind and the pinned one."""
        runs = list(self.runs.values())
        return runs + [self.pinned] if self.pinned is not None and all(self.pinned is not r for r in runs) else runs

    @property
    def nbytes(self) -> int:
        """Memory this user's runs take."""
        return sum(run.nbytes for run in self.kept_runs())

    @property
    def running(self) -> bool:
        """Whether one of this user's runs is still computing."""
        return any(run.running for run in self.kept_runs())

    def release_runs(self) -> None:
        """Drop the pictures of every run kept (each run remembers that it was released)."""
        for run in self.kept_runs():
            run.release()

    def release(self) -> None:
        """Drop the runs' pictures, the photo, the teaching views' results and the lab."""
        self.release_runs()
        self.forward = ForwardState()
        self.lesson = LessonState()
        self.lab = LabState()


class Users:
    """The users whose results (latest run, photo) are in memory, by key (a Gradio session). A user's results are
    released when the user leaves, when unused for ``time_to_live`` seconds, and (least recently used first) when
    the runs of all users together take more than ``max_bytes``. A run still computing is released once it ends.
    Safe to use from the server's threads."""

    def __init__(self, max_bytes: int = DEFAULT_KEPT_BYTES, time_to_live: float = DEFAULT_TIME_TO_LIVE,
                 clock: Callable[[], float] = time.monotonic):
        self.max_bytes, self.time_to_live, self.clock = max_bytes, time_to_live, clock
        self._users: OrderedDict[Hashable, tuple[UserState, float]] = OrderedDict()  # least recently used first
        self._leaving: list[UserState] = []  # left while a run was still computing
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._users)

    @property
    def nbytes(self) -> int:
        """Memory the kept runs take."""
        return sum(user.nbytes for user, _ in self._users.values())

    def seen(self, key: Hashable, user: UserState) -> None:
        """``user`` (known by ``key``) made a request: keep its results, then release what is over the limits."""
        with self._lock:
            self._users[key] = (user, self.clock())
            self._users.move_to_end(key)
        self.sweep()

    def leave(self, key: Hashable) -> None:
        """The user known by ``key`` has gone (closed the tab or the client): release its results."""
        with self._lock:
            user = self._users.pop(key, (None, 0.0))[0]
            if user is not None:
                self._leaving.append(user)
        self.sweep()

    def sweep(self) -> None:
        """Release the results of users who left, of those unused for ``time_to_live``, and, least recently used
        first, as many more as it takes to bring the kept runs within ``max_bytes``."""
        with self._lock:
            now = self.clock()
            for key, (user, last_seen) in list(self._users.items()):
                if now - last_seen > self.time_to_live:
                    self._leaving.append(self._users.pop(key)[0])
            total = self.nbytes
            for key, (user, _) in list(self._users.items()):
                if total <= self.max_bytes:
                    break
                if not user.running:
                    total -= user.nbytes
                    user.release_runs()
            gone = [user for user in self._leaving if not user.running]
            self._leaving = [user for user in self._leaving if user.running]
        for user in gone:
            user.release()

    def sweep_every(self, seconds: float) -> threading.Thread:
        """Call :meth:`sweep` every ``seconds`` from a daemon thread (so results expire while nobody asks)."""
        def loop() -> None:
            while True:
                time.sleep(seconds)
                self.sweep()
        thread = threading.Thread(target=loop, name="ddpm-users-sweep", daemon=True)
        thread.start()
        return thread
