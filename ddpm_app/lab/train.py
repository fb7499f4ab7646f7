"""Algorithm 1 on points: draw x₀ from the set, t uniformly, ε ~ N(0, I), and step down ‖ε − ε_θ(x_t, t)‖².

:class:`Trainer` keeps the model, its optimiser and its generator between calls, so training can stop and go on;
:meth:`Trainer.run` yields one :class:`TrainRecord` per step, so a caller can show the loss as it falls, run a few
steps at a time, or stop at any step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterator, NamedTuple

import torch
from torch import Tensor, nn

from ddpm_app.diffusion.loss import diffusion_loss
from ddpm_app.diffusion.schedule import Schedule


@dataclass(frozen=True)
class TrainSettings:
    """How the ε-model is fitted: Adam at ``learning_rate`` on batches of ``batch_size`` points, seeded."""

    batch_size: int = 256
    learning_rate: float = 3e-3
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class TrainRecord(NamedTuple):
    """One optimiser step: how many steps the model has had, and the loss of this step's batch."""

    step: int
    loss: float


class Trainer:
    """Trains ``model`` on ``points`` (N, 2) under ``schedule``; all randomness from one seeded generator."""

    def __init__(self, model: nn.Module, schedule: Schedule, points: Tensor, settings: TrainSettings = TrainSettings()):
        self.model, self.schedule, self.points, self.settings = model, schedule, points.float(), settings
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
        self.step = 0

    def batch_loss(self) -> Tensor:
        """The loss of one fresh batch: x₀ drawn from the points, t ~ U{0…T−1}, ε ~ N(0, I) (Algorithm 1, lines 2–5)."""
        g, n = self.generator, self.settings.batch_size
        x0 = self.points[torch.randint(0, len(self.points), (n,), generator=g)]  # (B, 2)
        t = torch.randint(0, self.schedule.timesteps, (n,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        return diffusion_loss(self.model, self.schedule, x0, t, noise)

    def run(self, steps: int) -> Iterator[TrainRecord]:
        """``steps`` optimiser steps, one record each; closing the iterator stops after the current step."""
        self.model.train()
        try:
            for _ in range(steps):
                loss = self.batch_loss()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.step += 1
                yield TrainRecord(self.step, float(loss.detach()))
        finally:
            self.model.eval()
