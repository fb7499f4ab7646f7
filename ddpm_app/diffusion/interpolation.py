"""Interpolating between two starting noises: slerp keeps the interpolants as long as real N(0, I) samples.

x_T(w) = sin((1−w)·θ)/sin θ · x_a + sin(w·θ)/sin θ · x_b, θ the angle between x_a and x_b (DDIM paper, sec. 5.3):
a straight line between two Gaussian samples passes through vectors far shorter than any the network saw at t = T.
Run DDIM with η = 0 from each and the images change smoothly between the two seeds' images.
"""

from __future__ import annotations

import torch
from torch import Tensor


def slerp(a: Tensor, b: Tensor, w: Tensor) -> Tensor:
    """Spherical interpolation between a and b (same shape) at weights w (K,) → (K, *a.shape)."""
    a64, b64 = a.double().flatten(), b.double().flatten()
    cos = torch.dot(a64, b64) / (a64.norm() * b64.norm())
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    w = w.double().reshape(-1, *([1] * a.dim()))
    if float(theta) < 1e-6:  # (almost) the same direction: the straight line is the arc
        out = (1 - w) * a.double() + w * b.double()
    else:
        out = (torch.sin((1 - w) * theta) * a.double() + torch.sin(w * theta) * b.double()) / torch.sin(theta)
    return out.to(a.dtype)


def weights(n: int) -> Tensor:
    """``n`` evenly spaced weights from 0 to 1."""
    return torch.linspace(0.0, 1.0, n, dtype=torch.float64)
