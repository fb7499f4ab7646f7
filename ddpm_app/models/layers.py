"""Building blocks shared by the U-Nets."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ddpm_app.checks import exact_int, exact_real

# Bounds on what a config may ask for, so a config.json cannot make the app build a network or images too large to
# hold: sampling cost grows with image_size², and the widest shipped level has 192 channels
MAX_IMAGE_SIZE = 512
MAX_IMAGE_CHANNELS = 4  # grey, RGB, RGBA
MAX_WIDTH = 2048  # channels of any level
MAX_LEVELS = 8


def check_image(image_size: object, in_channels: object, dropout: object) -> None:
    """The fields every network config has: image_size in 1…MAX_IMAGE_SIZE, in_channels in 1…MAX_IMAGE_CHANNELS,
    dropout in 0…1 (:class:`~ddpm_app.checks.ConfigError` naming the field otherwise)."""
    exact_int(image_size, "image_size", 1, MAX_IMAGE_SIZE)
    exact_int(in_channels, "in_channels", 1, MAX_IMAGE_CHANNELS)
    exact_real(dropout, "dropout", 0.0, 1.0)


class Denoiser(nn.Module):
    """Base of the ε_θ(x_t, t) networks: what every one of them can say about itself."""

    def num_parameters(self) -> int:
        """Number of parameters (weights and biases, no buffers)."""
        return sum(p.numel() for p in self.parameters())


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of integer timesteps (Transformer positional encoding): (B,) → (B, dim).

    The first half holds sin(t·ω_k), the second cos(t·ω_k), with ω_k = max_period^(−k/(dim/2−1)).
    """
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(max_period) / (half - 1)))
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    return torch.cat([args.sin(), args.cos()], dim=-1)


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count ≤ max_groups that divides ``channels``."""
    groups = math.gcd(channels, max_groups)
    return nn.GroupNorm(groups, channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Initialise a layer's parameters to zero, so a residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module
