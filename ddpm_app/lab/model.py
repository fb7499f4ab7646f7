"""The lab's ε-model: a small MLP ε_θ(x_t, t) on points, and the field it predicts over the plane."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ddpm_app.diffusion.schedule import Schedule, extract


@dataclass(frozen=True)
class PointMLPConfig:
    """The network's size: ``depth`` hidden layers of ``width`` units, the timestep as ``time_dim`` sinusoids."""

    width: int = 128
    depth: int = 3
    time_dim: int = 32

    def __post_init__(self) -> None:
        if not (1 <= self.width <= 1024 and 1 <= self.depth <= 8 and 2 <= self.time_dim <= 256
                and self.time_dim % 2 == 0):
            raise ValueError(f"need width 1…1024, depth 1…8 and an even time_dim 2…256, got {self}")

    def to_dict(self) -> dict:
        return asdict(self)


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """[sin(t·ω_k), cos(t·ω_k)] with ω_k = 10000^(−k/(dim/2)), the Transformer's sinusoids (as in DDPM): (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class PointMLP(nn.Module):
    """ε_θ(x_t, t) for points: [x_t, embedding(t)] → (Linear → SiLU) × depth → Linear → ε̂ (B, 2)."""

    def __init__(self, config: PointMLPConfig = PointMLPConfig()):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width_in = 2 + config.time_dim
        for _ in range(config.depth):
            layers += [nn.Linear(width_in, config.width), nn.SiLU()]
            width_in = config.width
        layers.append(nn.Linear(width_in, 2))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.net(torch.cat([x, timestep_embedding(t, self.config.time_dim)], dim=1))  # (B, 2)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class Field(NamedTuple):
    """What the network says at points of the plane at one t."""

    eps: Tensor  # ε̂ = ε_θ(x, t), (N, 2)
    score: Tensor  # ∇ log q_t(x) ≈ −ε̂/√(1−ᾱ_t), (N, 2)


@torch.inference_mode()
def predict_field(model: nn.Module, schedule: Schedule, points: Tensor, t: int) -> Field:
    """ε̂ at ``points`` (N, 2) and timestep t, and the score it implies, −ε̂/√(1−ᾱ_t) (Song & Ermon's link)."""
    tt = torch.full((len(points),), t, dtype=torch.long)
    eps = model(points, tt).float()
    return Field(eps, -eps / extract(schedule.sqrt_one_minus_alphas_cumprod, tt, eps.shape))


def build_model(config: PointMLPConfig, seed: int) -> PointMLP:
    """A fresh network whose initial weights come from ``seed`` alone (PyTorch's initialisers draw from the global
    generator, so they run inside a forked one: the caller's random state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PointMLP(config)
