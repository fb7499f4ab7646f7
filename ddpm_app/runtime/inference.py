"""Making a loaded network fast for sampling on the device at hand, and choosing that device: :func:`prepare` decides
once how a model runs here and gives the one :class:`Network` the samplers, the loss and the bound are handed.

On the CPU one engine runs every batch size and every step, chosen once when the model loads from what the CPU has
and what is installed (:func:`choose_cpu_engine`), never from a timing: OpenVINO's compiled network
(:mod:`ddpm_app.runtime.openvino_net`) in bf16 where it is installed and the CPU has bf16 in hardware, else the PyTorch
network in fp32, channels_last. ε̂ and the update are float32 either way. A seed's image is then the same whatever
batch it runs in. The app's entry point makes idle OpenMP threads sleep (:func:`ddpm_app.runtime.cpu.wait_passively`): on a
machine whose cores other programs use, spinning threads turned each parallel op into a wait. See
docs/performance.md for the measurements behind these choices.

On CUDA a 64×64 step at small batch is bound by kernel launches, so the whole DDPM step (network, x̂₀, the posterior
mean and the noise) is compiled with ``mode="reduce-overhead"`` and replayed as one CUDA graph, in fp16 autocast.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Literal, Mapping

import torch
from torch import Tensor, nn

from ddpm_app.diffusion import samplers
from ddpm_app.diffusion.schedule import Schedule
from ddpm_app.models import DiffusersUNet
from ddpm_app.runtime import openvino_net
from ddpm_app.runtime.isa import CpuFeatures, detect
from ddpm_app.runtime.openvino_net import OpenVinoError, OpenVinoNetwork

log = logging.getLogger(__name__)

# the network's compute precision on CUDA: IEEE fp32, TF32 matmuls and convolutions, or bf16 / fp16 autocast
# (ε̂ and everything after it stay float32). On the CPU: fp32 (tf32 means fp32 there) or bf16 (OpenVINO's);
# fp16 is refused there.
Precision = Literal["fp32", "tf32", "bf16", "fp16"]
PRECISION_CHOICES: tuple[str, ...] = ("auto", "fp32", "tf32", "bf16", "fp16")  # what --precision accepts
# who runs the network on the CPU (--cpu-runtime): auto (see choose_cpu_engine), or one of the two
CPU_RUNTIMES: tuple[str, ...] = ("auto", "pytorch", "openvino")
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


@dataclass(frozen=True)
class Runtime:
    """How a prepared network runs: what was chosen and why (for logs, the benchmark and the Model tab)."""

    device: str  # e.g. "cpu: AMD EPYC (AVX-512 + AVX512-BF16), 2 threads"
    precision: Precision
    compiled: bool
    reason: str  # e.g. "auto: OpenVINO with bf16 in hardware on AVX-512 + AVX512-BF16"
    engine: str = ""  # on the CPU, e.g. "OpenVINO 2026.4.1 (bf16, built in 2.3 s)" or "PyTorch"

    def describe(self) -> str:
        parts = [self.device, self.precision] + [self.engine] * bool(self.engine) + ["compiled step"] * self.compiled
        return f"{', '.join(parts)} ({self.reason})"


class Network(nn.Module):
    """ε_θ(x_t, t) of one model, made to run on one device: the one object the samplers, the loss and the bound are
    handed. How it runs (device, engine, precision, compiled or not) was decided when it was built (:func:`prepare`)
    and is described by :attr:`runtime`.

    Called, it gives float32 ε̂ for x_t in the layout the network wants (channels_last where chosen), in bf16/fp16
    autocast on CUDA where chosen; a CPU engine computes in its own precision (OpenVINO's bf16). :meth:`ddpm_step`
    runs DDPM's whole step with it, as one CUDA graph where it was compiled (the sampler's
    :class:`~ddpm_app.diffusion.samplers.FusedNetwork`). :meth:`fp32` is the same network computing in float32
    throughout, for measuring.
    """

    def __init__(self, model: nn.Module, runtime: Runtime, device: torch.device | str, *, channels_last: bool = False,
                 autocast: torch.dtype | None = None, compile: bool = False, fp32: Network | None = None):
        super().__init__()
        self.model = model
        self.runtime = runtime
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.autocast_dtype = autocast
        self.compiled = compile
        if fp32 is None and runtime.precision == "bf16" and autocast is None:
            raise ValueError("a network that computes in bf16 by itself (a CPU engine's) needs its fp32 twin")
        self._fp32 = fp32  # None: the same module without autocast or compiling, made when first asked for
        if compile:
            self._eps_graph = torch.compile(self._eps, mode="reduce-overhead", dynamic=False)
            self._step_graph = torch.compile(self._step, mode="reduce-overhead", dynamic=False)
        self.eval()  # as prepare left the model: no dropout

    @property
    def precision(self) -> Precision:
        return self.runtime.precision

    def _eps(self, x: Tensor, t: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            return self.model(x, t).float()

    def _step(self, schedule: Schedule, x: Tensor, tt: Tensor, noise: Tensor, sigma: Tensor,
              clip_x0: bool) -> tuple[Tensor, Tensor, Tensor]:
        return samplers.ddpm_step(self._eps, schedule, x, tt, noise, sigma, clip_x0)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if not self.compiled:
            return self._eps(x, t)
        # CUDA-graph outputs live in memory the next replay overwrites: hand out a copy
        torch.compiler.cudagraph_mark_step_begin()
        return self._eps_graph(x, t).clone()

    def ddpm_step(self, schedule: Schedule, x: Tensor, tt: Tensor, noise: Tensor, sigma: Tensor,
                  clip_x0: bool) -> tuple[Tensor, Tensor, Tensor]:
        """:func:`ddpm_app.diffusion.samplers.ddpm_step` with this network, as one CUDA graph when compiled."""
        if not self.compiled:
            return self._step(schedule, x, tt, noise, sigma, clip_x0)
        torch.compiler.cudagraph_mark_step_begin()
        eps, x0, x_prev = self._step_graph(schedule, x, tt, noise, sigma, clip_x0)
        return eps.clone(), x0.clone(), x_prev.clone()

    def fp32(self) -> Network:
        """The same network computing in float32 throughout: itself where it already does, else its fp32 twin (a CPU
        engine's float32 network, e.g. OpenVINO's f32) or the module without autocast and uncompiled (CUDA).

        For measuring (the loss, the bound), whose figures are compared with held-out ones made in fp32: bf16
        rounding of ε̂ is small against ε̂ but not against ‖ε − ε̂‖² where ε̂ is nearly right (the figures:
        docs/teaching.md, "Training")."""
        if self._fp32 is None:
            if self.precision == "fp32" and not self.compiled:
                return self
            runtime = replace(self.runtime, precision="fp32", compiled=False, reason="fp32 for measuring")
            self._fp32 = Network(self.model, runtime, self.device, channels_last=self.channels_last)
        return self._fp32


# ---------------------------------------------------------------------------------------------------------------
# the CPU: one engine for every batch size, chosen from the CPU and what is installed


def example_input(model: nn.Module, batch: int = 1) -> tuple[Tensor, Tensor]:
    """A (x_t, t) pair of the shape ``model`` samples, from its config: (B, C, H, W) noise and (B,) timesteps. The
    noise has its own seed: timing and packing leave the caller's global generator where it was."""
    config = model.config
    x = torch.randn(batch, config.in_channels, config.image_size, config.image_size,
                    generator=torch.Generator().manual_seed(0))
    return x.contiguous(memory_format=torch.channels_last), torch.full((batch,), 500, dtype=torch.long)


def median_ms(candidates: Mapping[str, Callable[..., object]], example: tuple[Tensor, ...], rounds: int = 3,
              warmup: int = 1) -> dict[str, float]:
    """Median milliseconds per call ``candidate(*example)`` of each candidate, timed interleaved (ABAB…) so machine
    load hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    with torch.inference_mode():
        for round_ in range(warmup + rounds):
            for name, model in candidates.items():
                start = time.perf_counter()
                model(*example)
                if round_ >= warmup:
                    times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(ts) for name, ts in times.items()}


@dataclass(frozen=True)
class CpuEngine:
    """Who runs the network on this CPU, in which precision, and why (see :func:`choose_cpu_engine`)."""

    runtime: Literal["pytorch", "openvino"]
    precision: Precision  # "fp32" or "bf16"
    reason: str


def choose_cpu_engine(runtime: str, precision: str | None, cpu: CpuFeatures, openvino: str | None) -> CpuEngine:
    """The CPU engine for ``--cpu-runtime`` ``runtime`` and ``--precision`` ``precision``, on ``cpu`` with OpenVINO
    version ``openvino`` installed (None: not installed). Nothing is timed: a timing taken while other programs use
    the cores would decide by their load.

    ``auto`` runs OpenVINO where it is installed and the CPU has bf16 in hardware (AMX or AVX512-BF16), PyTorch
    otherwise. OpenVINO computes in bf16 for precision auto or bf16, in f32 for fp32 (or tf32). PyTorch computes in
    fp32: its bf16 network ran each batch size through other kernels, and a seed's image then depended on the
    batch it ran in (docs/performance.md, "The engine"); asking for bf16 there is an error that says why.
    """
    requested = precision or "auto"
    if runtime not in CPU_RUNTIMES:
        raise ValueError(f"cpu runtime must be one of {', '.join(CPU_RUNTIMES)}, got {runtime!r}")
    if requested == "fp16":
        raise ValueError("fp16 sampling is for CUDA devices; on the CPU use fp32 or bf16 (or auto)")
    if requested not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {requested!r}")
    if requested == "bf16" and not cpu.bf16_native:
        raise ValueError(f"bf16 needs a CPU with AMX or AVX512-BF16; this one is {cpu.describe()}. "
                         "Use --precision fp32 (or auto).")
    if runtime == "openvino" and openvino is None:
        raise ValueError("--cpu-runtime openvino: OpenVINO is not installed here (pip install openvino), or "
                         "leave --cpu-runtime at auto")
    if runtime == "auto":
        if openvino is None:
            runtime, why = "pytorch", "auto: OpenVINO is not installed"
        elif not cpu.bf16_native:
            runtime, why = "pytorch", f"auto: no bf16 in hardware on {cpu.isa}"
        else:
            runtime, why = "openvino", f"auto: OpenVINO with bf16 in hardware on {cpu.isa}"
    else:
        why = "asked for"
    if runtime == "pytorch":
        if requested == "bf16":
            raise ValueError("bf16 on the CPU runs in OpenVINO (pip install openvino; --cpu-runtime auto or "
                             "openvino); PyTorch runs fp32 here")
        return CpuEngine("pytorch", "fp32", why)
    chosen: Precision = "bf16" if requested in ("auto", "bf16") and cpu.bf16_native else "fp32"
    return CpuEngine("openvino", chosen, why)


def prepare_cpu(model: nn.Module, precision: str | None = "auto", cpu: CpuFeatures | None = None,
                channels_last: bool = True, runtime: str = "pytorch", threads: int | None = None) -> Network:
    """``model`` ready to sample on this CPU, through the engine :func:`choose_cpu_engine` picks, at every batch size
    and every step; with its fp32 twin for :meth:`Network.fp32` (OpenVINO's f32 network, compiled when first used).
    ``runtime="auto"`` falls back to PyTorch, with a warning in the log, where OpenVINO cannot build the network;
    ``runtime="openvino"`` then raises a ValueError that says why. OpenVINO runs on ``threads`` threads (default:
    PyTorch's count now). diffusers' UNet2DModel runs as PyTorch runs it, in fp32: the engines are built for the
    app's own U-Nets.

    ``model`` itself is switched to eval mode and, with ``channels_last``, to that layout; OpenVINO's network is a
    snapshot of its weights.
    """
    threads = threads or torch.get_num_threads()
    if isinstance(model, DiffusersUNet):
        model.cpu().eval().requires_grad_(False)
        why = "diffusers' UNet2DModel as PyTorch runs it; the app's CPU engine is for its own U-Nets"
        runs = Runtime(f"cpu, {threads} threads", "fp32", False, why, engine=f"PyTorch {torch.__version__}")
        return Network(model, runs, "cpu")
    cpu = cpu or detect()
    engine = choose_cpu_engine(runtime, precision, cpu, openvino_net.version())
    model = model.cpu().eval().requires_grad_(False)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    net, fp32_net = model, None
    if engine.runtime == "openvino":
        try:
            converted = openvino_net.convert(model)
            net = OpenVinoNetwork(converted, model.time_features, threads, engine.precision)
            net.compile()  # now, not at the first click
            if engine.precision != "fp32":
                fp32_net = OpenVinoNetwork(converted, model.time_features, threads, "fp32")
        except OpenVinoError as e:
            if runtime == "openvino":
                raise ValueError(f"--cpu-runtime openvino: {e}; leave --cpu-runtime at auto") from e
            log.warning("--cpu-runtime auto: %s; PyTorch runs instead", e)
            engine = CpuEngine("pytorch", "fp32", f"auto: {e}")
            net = model
    described = net.describe() if isinstance(net, OpenVinoNetwork) else f"PyTorch {torch.__version__}"
    chosen = Runtime(f"cpu: {cpu.describe()}, {threads} threads", engine.precision, False, engine.reason, described)
    twin = None
    if fp32_net is not None:
        twin = Network(fp32_net, replace(chosen, precision="fp32", reason="fp32 for measuring",
                                         engine=fp32_net.describe()), "cpu")
    # OpenVINO reads NCHW: a channels_last x_t would be copied twice
    network = Network(net, chosen, "cpu", channels_last=channels_last and net is model, fp32=twin)
    log.info("sampling on %s", network.runtime.describe())
    return network


def prepare(model: nn.Module, device: torch.device | str, compile: bool | None = None,
            precision: str | None = "auto", channels_last: bool = True, cpu_runtime: str = "pytorch",
            cpu_threads: int | None = None) -> Network:
    """``model`` as a :class:`Network` on ``device``: eval mode, no grads. On the CPU: :func:`prepare_cpu`. On CUDA:
    channels_last and compiled with CUDA graphs unless ``compile=False``.

    ``precision``: "auto" (or None) is fp16 autocast on CUDA and :func:`choose_cpu_engine`'s choice on the CPU; else
    one of :data:`Precision` (fp16 is the fast one on CUDA: docs/performance.md, "On the GPU"). TF32 is a
    global setting: "tf32" and "fp32" take effect inside :func:`float32_matmul`. The first call at each new batch
    size compiles (CUDA only, a few seconds). The model itself is moved and switched to eval mode in place.
    ``cpu_runtime``: one of :data:`CPU_RUNTIMES`, for the CPU only, and ``cpu_threads`` the threads OpenVINO runs
    on there (default: PyTorch's count).
    """
    device = torch.device(device)
    if device.type == "cpu" and not compile:
        return prepare_cpu(model, precision, channels_last=channels_last, runtime=cpu_runtime, threads=cpu_threads)
    if precision not in PRECISION_CHOICES + (None,):
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}")
    chosen: Precision = ("fp16" if device.type == "cuda" else "fp32") if precision in (None, "auto") else precision
    if chosen == "fp16" and device.type != "cuda":
        raise ValueError("fp16 sampling is for CUDA devices; use fp32 on the CPU")
    model = model.to(device).eval().requires_grad_(False)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    use_compile = device.type == "cuda" if compile is None else compile
    runtime = Runtime(str(device), chosen, use_compile, "auto" if precision in (None, "auto") else "asked for")
    autocast = _AUTOCAST.get(chosen) if device.type == "cuda" else None
    return Network(model, runtime, device, channels_last=channels_last, autocast=autocast, compile=use_compile)
