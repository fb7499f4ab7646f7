"""Reverse runs: every step of a sampler kept as uint8 frames in a :class:`Trajectory`, and :func:`stream`, which
runs a sampler to the end and passes on only the steps worth previewing (a time-based throttle)."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, TypeVar

import torch
from torch import Tensor

from ..image import to_uint8
from ..samplers import Step
from .library import DeviceWorker

# seconds between previews sent to the browser: 5 a second look smooth, and cost under 10 % of the sampling
# time on a 2-core CPU (benchmarks/app_stream.py)
DEFAULT_PREVIEW_INTERVAL = 0.2
# per run: every step of DDPM-1000 for four 64×64 RGB images (98 MB as uint8); a dense subset beyond that
DEFAULT_TRAJECTORY_BYTES = 128 * 2**20
Preview = TypeVar("Preview")


@dataclass(frozen=True)
class Frame:
    """One stored step of a run, as uint8 pictures."""

    index: int  # step index within the run (0 = first network evaluation)
    t: int
    x_t: Tensor  # (B, C, H, W) uint8
    pred_x0: Tensor  # (B, C, H, W) uint8


@dataclass
class Trajectory:
    """The frames of one reverse run: every step, or every ``stride``-th one (and the last) when all of them
    would take more than ``max_bytes``. Frames are appended one at a time, so a stopped run stays consistent."""

    title: str
    num_steps: int
    shape: tuple[int, ...]  # (B, C, H, W)
    seed: int
    max_bytes: int = DEFAULT_TRAJECTORY_BYTES
    frames: list[Frame] = field(default_factory=list)
    final: Tensor | None = None  # (B, C, H, W) uint8, once the last step has run
    steps_done: int = 0
    stopped: bool = False  # the run ended before its last step (Stop, or an error)
    file_stem: str = "run"  # what ran, for export file names: "ddim-50steps-eta0_seed7"
    ended: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)  # stopped or finished

    @property
    def stride(self) -> int:
        per_step = 2 * math.prod(self.shape)  # x_t and x̂₀, one byte per value
        return max(1, math.ceil(self.num_steps * per_step / self.max_bytes))

    @property
    def finished(self) -> bool:
        return self.final is not None

    def keeps(self, index: int) -> bool:
        return index % self.stride == 0 or index == self.num_steps - 1

    def add(self, step: Step) -> None:
        if self.keeps(step.index):
            self.frames.append(Frame(step.index, step.t, to_uint8(step.x_t).cpu(), to_uint8(step.pred_x0).cpu()))
        if step.is_last:
            self.final = to_uint8(step.x_prev).cpu()
        self.steps_done = step.index + 1

    def result(self) -> Tensor | None:
        """The final images, or for a stopped run the latest x̂₀ (uint8, (B, C, H, W))."""
        if self.final is not None:
            return self.final
        return self.frames[-1].pred_x0 if self.frames else None


class Throttle:
    """True at most once per ``interval`` seconds (always on the first call); ``None`` = never."""

    def __init__(self, interval: float | None, clock: Callable[[], float] = time.perf_counter):
        self.interval = interval
        self.clock = clock
        self.next = -math.inf

    def ready(self) -> bool:
        if self.interval is None:
            return False
        now = self.clock()
        if now < self.next:
            return False
        self.next = now + self.interval
        return True


def stream(steps: Iterator[Step], trajectory: Trajectory | None = None, throttle: Throttle | None = None,
           render: Callable[[Step], Preview] | None = None, worker: DeviceWorker | None = None) -> Iterator[Preview]:
    """Run every step of a sampler, store each in ``trajectory``, and yield ``render(step)`` (the step itself
    by default) for those to preview: the first, then at most one per throttle interval, and always the last.

    With a ``worker``, the steps and the rendering run on its thread, a stretch of steps per preview. Closing
    this iterator (Stop) ends the sampler after the stretch in progress; the trajectory keeps what was done.
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
                return render(step), step.is_last
        return None

    call = worker.run if worker is not None else (lambda fn: fn())
    try:
        while (preview := call(advance)) is not None:
            yield preview[0]
            if preview[1]:
                return
    finally:  # also when the consumer closes us (Stop)
        if hasattr(steps, "close"):  # a sampler generator: let it run its cleanup on the worker too
            call(steps.close)
        if trajectory is not None:
            trajectory.stopped = not trajectory.finished
            trajectory.ended.set()
