"""The exponential moving average of the weights, the network a run exports and samples its grids from."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Exponential moving average of the weights: θ_ema ← d·θ_ema + (1−d)·θ."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.warmup = decay, warmup
        self._src = [p for p in model.parameters()]
        self._dst = [p for p in self.model.parameters()]
        self._src_buf = [b for b in model.buffers() if b.is_floating_point()]
        self._dst_buf = [b for b in self.model.buffers() if b.is_floating_point()]

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, step: int) -> None:
        torch._foreach_lerp_(self._dst, self._src, 1.0 - self.decay_at(step))
        for d, s in zip(self._dst_buf, self._src_buf):
            d.copy_(s)
