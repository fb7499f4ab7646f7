"""Reverse runs: every step of a sampler kept as uint8 frames in a :class:`Trajectory`, and :func:`stream`, which
runs a sampler to the end and passes on only the steps worth previewing (a time-based throttle)."""

from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, TypeVar

import torch
from torch import Tensor

from ddpm_app.diffusion.samplers import SamplerSettings, Step
from ddpm_app.diffusion.schedule import Schedule, paper_t
from ddpm_app.image import from_uint8, to_uint8
from ddpm_app.serve.worker import DeviceWorker
from ddpm_app.text import ENGLISH, count, text

# seconds between previews sent to the browser at most: 5 a second look smooth (what they cost: PREVIEW_BUDGET,
# and benchmarks/app_stream.py)
DEFAULT_PREVIEW_INTERVAL = 0.2
# previews may hold sampling up by at most this share of the time: a preview that took c seconds to draw, encode
# and hand on (the sampler waits meanwhile) delays the next one to c / PREVIEW_BUDGET seconds after it (slow
# machines, busy ones and big batches get fewer previews; see Throttle). What c measures is about half of what a
# preview costs a run: the server's work after the hand-off and the slower step that follows it add as much again
# (README, "Streaming cost"), so 2.5 % of measured cost stands for about 5 % of the run's time.
PREVIEW_BUDGET = 0.025
# per run: every step of DDPM-1000 for four 64×64 RGB images, with the first image's step (199 MiB); a dense
# subset beyond that
DEFAULT_TRAJECTORY_BYTES = 200 * 2**20
Preview = TypeVar("Preview")


@dataclass(frozen=True)
class Frame:
    """One stored step of a run: every image's x_t and x̂₀ as uint8 pictures, and the first image's step as the
    sampler took it, to show its terms."""

    index: int  # step index within the run (0 = first network evaluation)
    t: int
    x_t: Tensor  # (B, C, H, W) uint8
    pred_x0: Tensor  # (B, C, H, W) uint8
    # the first image's step: x_t, x̂₀, ε̂ and z in float16 and unclamped (near T, x_t reaches ±4, and clamped to a
    # picture's [−1, 1] its term would not add up to x_prev), and x_prev as it is shown
    t_prev: int = -1
    first_x_t: Tensor | None = None  # (C, H, W) float16
    first_pred_x0: Tensor | None = None  # (C, H, W) float16
    pred_eps: Tensor | None = None  # (C, H, W) float16
    noise: Tensor | None = None  # (C, H, W) float16; None when the step added no noise
    x_prev: Tensor | None = None  # (C, H, W) uint8

    @property
    def nbytes(self) -> int:
        kept = (self.x_t, self.pred_x0, self.first_x_t, self.first_pred_x0, self.pred_eps, self.noise, self.x_prev)
        return sum(x.nbytes for x in kept if x is not None)

    def first_step(self, num_steps: int) -> Step:
        """The first image's step as the sampler took it, to float16 precision, with x_prev as shown (clamped)."""
        def exact(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.float()[None]
        return Step(self.index, num_steps, self.t, self.t_prev, exact(self.first_x_t), exact(self.first_pred_x0),
                    exact(self.pred_eps), from_uint8(self.x_prev)[None], exact(self.noise))


def sampler_words(settings: SamplerSettings, start_t: int, language: str = ENGLISH) -> str:
    """What a chain from ``start_t`` runs, for people, in ``language``: "DDPM, 31 steps" or "DDIM, 1 step, η = 0"."""
    steps = count("step", settings.num_steps(start_t), language)
    if settings.sampler == "ddpm":
        variance = text("settings.beta_variance", language) if settings.variance == "beta" else ""
        return text("settings.ddpm", language, steps=steps, variance=variance)
    return text("settings.ddim", language, steps=steps, eta=f"{settings.eta:g}")


@dataclass(frozen=True)
class RunName:
    """What a reverse run runs, named once from the same parts (the sampler and the steps it takes from
    ``start_t``, the seed, where the chain starts): :attr:`title` for people (Frames, Compare, the GIF's header) and
    :attr:`file_stem` for the run's exports."""

    settings: SamplerSettings
    start_t: int  # the chain's first timestep (table index): T − 1 from noise, shown as the paper's t = T
    seed: int
    from_photo: bool = False  # SDEdit: from a photo noised to ``start_t`` (Denoise); else from noise (Generate)

    @property
    def title(self) -> str:
        """For people: "DDIM, 50 steps, η = 0, x̂₀ clipped, seed 7" or "SDEdit from t = 10, DDPM, 10 steps, seed 3"
        (the paper's t)."""
        return self.words(ENGLISH)

    def words(self, language: str) -> str:
        """The :attr:`title` in ``language``."""
        sampler = sampler_words(self.settings, self.start_t, language)
        if self.from_photo:
            return text("run.sdedit_title", language, t=paper_t(self.start_t), settings=sampler, seed=self.seed)
        clipped = text("run.clipped" if self.settings.clip_x0 else "run.not_clipped", language)
        return text("run.title", language, settings=sampler, clipped=clipped, seed=self.seed)

    @property
    def file_stem(self) -> str:
        """For files, the title's start, sampler, steps and seed: "ddim-50steps-eta0_seed7" or
        "sdedit-t10_ddpm-10steps_seed3" (the paper's t)."""
        s = self.settings
        sampler = f"{s.sampler}-{s.num_steps(self.start_t)}steps" + (f"-eta{s.eta:g}" if s.sampler == "ddim" else "")
        start = f"sdedit-t{paper_t(self.start_t)}_" if self.from_photo else ""
        return f"{start}{sampler}_seed{self.seed}"


@dataclass
class Trajectory:
    """The frames of one reverse run: every step, or every ``stride``-th one (and the last) when all of them
    would take more than ``max_bytes``. Frames are appended one at a time, so a stopped run stays consistent.
    The app makes one with :meth:`of`, named by a :class:`RunName`."""

    title: str
    num_steps: int
    shape: tuple[int, ...]  # (B, C, H, W)
    seed: int
    max_bytes: int = DEFAULT_TRAJECTORY_BYTES
    settings: SamplerSettings | None = None  # how the chain was run and on which schedule (for the step terms)
    schedule: Schedule | None = None
    frames: list[Frame] = field(default_factory=list)
    final: Tensor | None = None  # (B, C, H, W) uint8, once the last step has run
    steps_done: int = 0
    stopped: bool = False  # the run ended before its last step (Stop, or an error)
    released: bool = False  # its pictures were dropped to free memory (see :class:`~ddpm_app.views.state.Users`)
    file_stem: str = "run"  # what ran, for export file names: "ddim-50steps-eta0_seed7"
    model: str = ""  # the name of the model that ran it
    ended: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)  # stopped or finished

    @classmethod
    def of(cls, name: RunName, shape: tuple[int, ...], schedule: Schedule,
           max_bytes: int = DEFAULT_TRAJECTORY_BYTES, language: str = ENGLISH, model: str = "") -> Trajectory:
        """An empty trajectory for the run ``name`` names (its title in ``language``), of images of ``shape``
        (B, C, H, W), run by the ``model`` of that name."""
        return cls(name.words(language), name.settings.num_steps(name.start_t), shape, name.seed, max_bytes,
                   name.settings, schedule, file_stem=name.file_stem, model=model)

    @property
    def stride(self) -> int:
        # x_t, x̂₀ of each; x_prev of the first (uint8), and its x_t, x̂₀, ε̂, z (float16)
        per_step = 2 * math.prod(self.shape) + 9 * math.prod(self.shape[1:])
        return max(1, math.ceil(self.num_steps * per_step / self.max_bytes))

    @property
    def finished(self) -> bool:
        return self.final is not None

    def keeps(self, index: int) -> bool:
        return index % self.stride == 0 or index == self.num_steps - 1

    @property
    def nbytes(self) -> int:
        """Memory the stored frames and final images take."""
        return sum(f.nbytes for f in self.frames) + (self.final.nbytes if self.final is not None else 0)

    @property
    def running(self) -> bool:
        return not (self.finished or self.stopped or self.released)

    def release(self) -> None:
        """Drop the stored pictures (the run's title, seed and step count stay); a run still going stops storing."""
        self.frames, self.final, self.released = [], None, True

    def add(self, step: Step) -> None:
        if self.released:
            return
        if self.keeps(step.index):
            # one conversion and one copy off the device for all the pictures of the step, and one for the first
            # image's tensors, not one per picture
            b = len(step.x_t)
            pictures = to_uint8(torch.cat([step.x_t, step.pred_x0, step.x_prev[:1]])).cpu()
            noise = [] if step.noise is None else [step.noise[0]]
            first = torch.stack([step.x_t[0], step.pred_x0[0], step.pred_eps[0], *noise]).to(torch.float16).cpu()
            self.frames.append(Frame(step.index, step.t, pictures[:b], pictures[b:2 * b], step.t_prev, first[0],
                                     first[1], first[2], first[3] if noise else None, pictures[2 * b]))
        if step.is_last:
            self.final = to_uint8(step.x_prev).cpu()
        self.steps_done = step.index + 1

    def result(self) -> Tensor | None:
        """The final images, or for a stopped run the latest x̂₀ (uint8, (B, C, H, W))."""
        if self.final is not None:
            return self.final
        return self.frames[-1].pred_x0 if self.frames else None


class Throttle:
    """True at most once per ``interval`` seconds (always on the first call); ``None`` = never, 0 = always.

    With a ``budget`` (a fraction of the time), :meth:`spent` also keeps previews from taking more than that share:
    after a preview that cost c seconds in all (drawing it, and handing it on while sampling waits) the next one is
    ready no sooner than c / budget seconds after it began. So the rate adapts to the machine, its load and the
    step: with 5 % and previews costing 10 ms, at most one every 0.2 s however fast the steps or short the
    interval; with slow steps, one after every step if drawing it is cheap next to the step.
    """

    def __init__(self, interval: float | None, clock: Callable[[], float] = time.perf_counter,
                 budget: float | None = None):
        self.interval = interval
        self.clock = clock
        self.budget = budget if interval else None  # interval 0 means every step, whatever it costs
        self.next = self.last = -math.inf
        self.cost = 0.0  # seconds the latest preview has cost so far

    def ready(self) -> bool:
        if self.interval is None:
            return False
        now = self.clock()
        if now < self.next:
            return False
        self.last, self.next, self.cost = now, now + self.interval, 0.0
        return True

    def spent(self, seconds: float) -> None:
        """The preview that :meth:`ready` allowed last took ``seconds`` more to make or hand on."""
        if self.budget is not None:
            self.cost += seconds
            self.next = max(self.next, self.last + self.cost / self.budget)

    @contextmanager
    def spending(self) -> Iterator[None]:
        """The time inside the block (on this throttle's clock) counts as spent on the latest preview."""
        if self.budget is None:
            yield
            return
        start = self.clock()
        try:
            yield
        finally:
            self.spent(self.clock() - start)


def stream(steps: Iterator[Step], trajectory: Trajectory | None = None, throttle: Throttle | None = None,
           render: Callable[[Step], Preview] | None = None, worker: DeviceWorker | None = None) -> Iterator[Preview]:
    """Run every step of a sampler, store each in ``trajectory``, and yield ``render(step)`` (the step itself
    by default) for those to preview: the first, then at most one per throttle interval, and always the last.

    With a ``worker``, the steps and the rendering run on its thread, a stretch of steps per preview
    (:meth:`~ddpm_app.serve.worker.DeviceWorker.stream`). Closing this iterator (Stop) ends the sampler after the
    stretch in progress; the trajectory keeps what was done.
    """
    throttle = throttle or Throttle(DEFAULT_PREVIEW_INTERVAL)
    render = render or (lambda step: step)

    @torch.inference_mode()
    def advance() -> tuple[object, bool] | None:
        """Steps up to the next one to preview: (its rendering, whether it was the last), or None at the end."""
        for step in steps:
            if trajectory is not None:
                trajectory.add(step)
            if throttle.ready() or step.is_last:
                with throttle.spending():
                    shown = render(step)
                return shown, step.is_last
        return None

    def previews() -> Iterator[Preview]:
        try:
            while (preview := advance()) is not None:
                yield preview[0]
                if preview[1]:
                    return
        finally:  # a sampler generator: its cleanup runs where it ran
            if hasattr(steps, "close"):
                steps.close()

    shown = previews() if worker is None else worker.stream(previews())
    try:
        for preview in shown:
            with throttle.spending():  # until the consumer asks for more (Gradio sends it on), sampling waits
                yield preview
    finally:  # also when the consumer closes us (Stop)
        shown.close()
        if trajectory is not None:
            trajectory.stopped = not trajectory.finished
            trajectory.ended.set()
