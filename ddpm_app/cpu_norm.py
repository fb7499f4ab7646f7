"""GroupNorm on the CPU: the fastest of three kernels for each input shape, chosen by timing on this machine.

PyTorch's own GroupNorm on a channels_last input is fast on some CPUs and slow on others, depending on the shape:
on an Intel Xeon with AMX (PyTorch 2.11, 2 threads) it took 0.98 ms for a (4, 96, 16, 16) input and 0.15 ms for a
(4, 96, 32, 32) one, and the 16×16 and 8×8 maps made it 13 ms of a 60 ms network evaluation; on an AMD EPYC (Zen 5,
PyTorch 2.14) the same shapes took 0.05 ms. The kernels:

- ``native``: ``F.group_norm`` on the channels_last input;
- ``nchw``: ``F.group_norm`` on a contiguous (NCHW) copy, turned back to channels_last;
- ``sums``: Σx and Σx² per channel over H×W (reductions vectorised along C in channels_last memory), the group
  statistics from those, and one fused ``x·a + b`` with per-(image, channel) a and b.

All three compute the same function to float rounding (``sums`` takes the variance as E[x²] − E[x]², which is
exact enough where, as in these networks, a group's mean is not many times its spread). :func:`tune_group_norms`
swaps each ``nn.GroupNorm`` of a network for a :class:`TunedGroupNorm` and times the kernels on each input shape
the network produces at the given batch sizes (see benchmarks/cpu_variants.py for the measurements).
"""

from __future__ import annotations

import functools
import logging
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .onednn import first_inputs

log = logging.getLogger(__name__)

KERNELS = ("native", "nchw", "sums")


def group_norm_sums(x: Tensor, groups: int, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """GroupNorm from per-channel Σx and Σx²; ``weight`` and ``bias`` as (groups, C/groups)."""
    n, c, h, w = x.shape
    count = h * w * (c // groups)
    mean = x.sum((2, 3)).view(n, groups, -1).sum(-1, keepdim=True) / count  # (N, G, 1)
    var = (x * x).sum((2, 3)).view(n, groups, -1).sum(-1, keepdim=True) / count - mean.square()
    scale = weight * (var.clamp_min(0) + eps).rsqrt()  # (N, G, C/G)
    shift = bias - mean * scale
    return torch.addcmul(shift.view(n, c, 1, 1), x, scale.view(n, c, 1, 1))


class TunedGroupNorm(nn.Module):
    """``nn.GroupNorm`` (inference only) through the kernel chosen for each batch size: ``choices`` maps the batch
    sizes tuned at to a kernel name, and a batch uses the choice of the largest tuned size not above it (the
    smallest tuned size for a batch below all of them). Untuned, it is ``native``."""

    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        self.groups, self.eps = norm.num_groups, norm.eps
        self.weight, self.bias = norm.weight.detach().float(), norm.bias.detach().float()
        self.grouped_weight = self.weight.view(self.groups, -1)
        self.grouped_bias = self.bias.view(self.groups, -1)
        self.choices: dict[int, str] = {}

    def kernel(self, name: str, x: Tensor) -> Tensor:
        if name == "native":
            return F.group_norm(x, self.groups, self.weight, self.bias, self.eps)
        if name == "nchw":
            y = F.group_norm(x.contiguous(), self.groups, self.weight, self.bias, self.eps)
            return y.contiguous(memory_format=torch.channels_last)
        if name == "sums":
            return group_norm_sums(x, self.groups, self.grouped_weight, self.grouped_bias, self.eps)
        raise ValueError(f"unknown GroupNorm kernel {name!r}; one of {', '.join(KERNELS)}")

    def choice(self, batch: int) -> str:
        tuned = sorted(self.choices)
        if not tuned:
            return "native"
        at = max((b for b in tuned if b <= batch), default=tuned[0])
        return self.choices[at]

    def forward(self, x: Tensor) -> Tensor:
        return self.kernel(self.choice(x.shape[0]), x)

    def extra_repr(self) -> str:
        return f"{self.groups} groups, {self.weight.numel()} channels, kernels {self.choices or 'native'}"


Timer = Callable[[Mapping[str, Callable[[], object]]], Mapping[str, float]]


def tune_group_norms(model: nn.Module, examples: Mapping[int, tuple[Tensor, ...]], timer: Timer,
                     fastest: dict[tuple, str] | None = None) -> nn.Module:
    """Swap every ``nn.GroupNorm`` of ``model`` (in place) for a :class:`TunedGroupNorm` whose kernel for each batch
    size in ``examples`` (batch → the model's inputs) is the fastest on the shape it sees there.

    ``timer`` takes named no-argument calls (``functools.partial(norm.kernel, name, x)``) and returns each one's time
    (e.g. the median of a few interleaved runs); each distinct (batch, shape, strides, groups) is timed once, and
    ``fastest`` (kept by the caller) carries the answers over to the next network of the same inputs, untimed.
    Returns ``model``.
    """
    fastest = {} if fastest is None else fastest
    norms: dict[str, TunedGroupNorm] = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.GroupNorm):
            parent, _, leaf = name.rpartition(".")
            norms[name] = TunedGroupNorm(module)
            setattr(model.get_submodule(parent), leaf, norms[name])
    for batch, example in examples.items():
        for name, x in first_inputs(model, example, TunedGroupNorm).items():
            norm = norms[name]
            key = (batch, tuple(x.shape), x.stride(), norm.groups)
            if key not in fastest:
                times = timer({k: functools.partial(norm.kernel, k, x) for k in KERNELS})
                fastest[key] = min(times, key=times.__getitem__)
            norm.choices[batch] = fastest[key]
        log.debug("GroupNorm kernels at batch %d: %s", batch, kernel_counts(model, batch))
    return model


def kernel_counts(model: nn.Module, batch: int) -> dict[str, int]:
    """How many of ``model``'s GroupNorms use each kernel at ``batch`` (for logs and the benchmark)."""
    counts = {k: 0 for k in KERNELS}
    for module in model.modules():
        if isinstance(module, TunedGroupNorm):
            counts[module.choice(batch)] += 1
    return {k: n for k, n in counts.items() if n}
