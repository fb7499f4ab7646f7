"""Making a loaded network fast for sampling on the device at hand, and choosing that device.

Measured on the shipped 12 M-parameter U-Net (see benchmarks/sample_speed.py): on CPU, channels_last is a
little faster and ``torch.compile`` is not worth it (about a minute of compilation for no gain per step). On
CUDA a 64×64 step at small batch is bound by kernel launches, so the whole DDPM step — network, x̂₀, the
posterior mean and the noise — is compiled with ``mode="reduce-overhead"`` and replayed as one CUDA graph.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Literal

import torch
from torch import Tensor, nn

from . import samplers
from .schedule import Schedule

# the network's compute precision on CUDA: IEEE fp32, TF32 matmuls and convolutions, or bf16 / fp16 autocast
# (ε̂ and everything after it stay float32). The CPU computes in fp32 whatever is asked (fp16 is refused there).
Precision = Literal["fp32", "tf32", "bf16", "fp16"]
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` → CUDA when a GPU is visible, else the CPU; any other name as given, checked for CUDA."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name} asked for, but no CUDA GPU is visible")
    return torch.device(name)


@contextlib.contextmanager
def float32_matmul(mode: Precision, device: torch.device) -> Iterator[None]:
    """On CUDA: TF32 matmuls and convolutions off (IEEE) for "fp32", on for the others; restored after."""
    if device.type != "cuda":
        yield
        return
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = matmul.fp32_precision, conv.fp32_precision
    matmul.fp32_precision = conv.fp32_precision = "ieee" if mode == "fp32" else "tf32"
    try:
        yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved


class Prepared(nn.Module):
    """Wraps a network for sampling: matches the input's memory format and returns float32 ε̂.

    Besides ε̂ (``forward``) it offers :meth:`ddpm_step`, to pass to :func:`ddpm_app.samplers.ddpm` as ``step_fn``.
    """

    def __init__(self, model: nn.Module, channels_last: bool, compile: bool = False, precision: Precision = "fp32",
                 device_type: str = "cpu"):
        super().__init__()
        self.model = model
        self.channels_last = channels_last
        self.half = precision == "fp16"
        self.autocast_dtype = _AUTOCAST.get(precision) if device_type == "cuda" else None
        self.compiled = compile
        if compile:
            self._eps_graph = torch.compile(self._eps, mode="reduce-overhead", dynamic=False)
            self._step_graph = torch.compile(self._step, mode="reduce-overhead", dynamic=False)

    def _eps(self, x: Tensor, t: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            return self.model(x, t).float()

    def _step(self, schedule: Schedule, x: Tensor, tt: Tensor, noise: Tensor, sigma_table: Tensor,
              clip_x0: bool) -> tuple[Tensor, Tensor, Tensor]:
        return samplers.ddpm_step(self._eps, schedule, x, tt, noise, sigma_table, clip_x0)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if not self.compiled:
            return self._eps(x, t)
        # CUDA-graph outputs live in memory the next replay overwrites: hand out a copy
        torch.compiler.cudagraph_mark_step_begin()
        return self._eps_graph(x, t).clone()

    def ddpm_step(self, schedule: Schedule, x: Tensor, tt: Tensor, noise: Tensor, sigma_table: Tensor,
                  clip_x0: bool) -> tuple[Tensor, Tensor, Tensor]:
        """:func:`ddpm_app.samplers.ddpm_step` with this network, as one CUDA graph when compiled."""
        if not self.compiled:
            return self._step(schedule, x, tt, noise, sigma_table, clip_x0)
        torch.compiler.cudagraph_mark_step_begin()
        eps, x0, x_prev = self._step_graph(schedule, x, tt, noise, sigma_table, clip_x0)
        return eps.clone(), x0.clone(), x_prev.clone()


def prepare(model: nn.Module, device: torch.device | str, compile: bool | None = None,
            precision: Precision | None = None, channels_last: bool = True) -> Prepared:
    """Eval mode, no grads, on ``device``, channels_last; on CUDA compiled with CUDA graphs unless ``compile=False``.

    ``precision``: the network's compute precision (see :data:`Precision`), fp16 autocast on CUDA by default
    and fp32 on the CPU. On an H100, fp16 takes a 1,000-step chain of 16 images from 2.4 s to 1.4 s. TF32 is a
    global setting: "tf32" and "fp32" take effect inside :func:`float32_matmul`. The first call at each new batch
    size compiles (CUDA only, a few seconds). The model itself is moved and switched to eval mode in place.
    """
    device = torch.device(device)
    precision = precision or ("fp16" if device.type == "cuda" else "fp32")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 sampling is for CUDA devices; use fp32 on the CPU")
    model = model.to(device).eval().requires_grad_(False)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    use_compile = device.type == "cuda" if compile is None else compile
    return Prepared(model, channels_last=channels_last, compile=use_compile, precision=precision,
                    device_type=device.type)
