"""How far apart two point clouds are: the energy distance (Székely & Rizzo), a proper distance between
distributions that needs no density, no bandwidth and no binning, so a learner can read one number."""

from __future__ import annotations

import torch
from torch import Tensor


def _mean_distance(a: Tensor, b: Tensor, same: bool) -> Tensor:
    """E‖A − B‖ over all pairs; for a set with itself (``same``) the n(n−1) pairs of distinct points (a U-statistic,
    so the estimate does not grow with fewer points)."""
    d = torch.cdist(a, b)
    if not same:
        return d.mean()
    n = len(a)
    return d.sum() / max(n * (n - 1), 1)


def energy_distance(x: Tensor, y: Tensor) -> float:
    """D²(X, Y) = 2·E‖X − Y‖ − E‖X − X′‖ − E‖Y − Y′‖ for point sets x (N, d) and y (M, d), in float64.

    Zero (in expectation) exactly when the two distributions are equal; for two point masses a and b it is 2‖a − b‖.
    The within-set terms leave out each point's distance to itself, so sets of different sizes compare fairly.
    """
    x, y = x.double(), y.double()
    return float(2 * _mean_distance(x, y, False) - _mean_distance(x, x, True) - _mean_distance(y, y, True))
