"""Making a loaded network fast for sampling on the device at hand, and choosing that device.

On the CPU (see benchmarks/sample_speed.py): the network runs channels_last with every convolution packed once for
oneDNN (:mod:`ddpm_app.onednn`), so none takes PyTorch's slow im2col path. On CPUs with bf16 in hardware (AMX or
AVX512-BF16) the convolutions may run in bf16, everything else staying float32: ``precision="auto"`` times both
on this machine and keeps bf16 only if it is faster (remembered per machine and model in a
:class:`~ddpm_app.precision_cache.PrecisionCache`, so the app times once, not at every start). ε̂ and the update
are float32 either way. With ``runtime="openvino"`` OpenVINO's compiled network (:mod:`ddpm_app.openvino_net`)
runs instead, where it is installed (see the README for when it is faster). ``torch.compile`` (and an
ahead-of-time compiled package) was measured against this and did not win by enough to pay for its minutes of
compiling; see the README.

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

from . import cpu_norm, onednn, openvino_net, samplers
from .isa import CpuFeatures, detect
from .openvino_net import OpenVinoError, OpenVinoNetwork
from .precision_cache import ChoiceKey, PrecisionCache, RememberedChoice, now
from .schedule import Schedule

log = logging.getLogger(__name__)

# the network's compute precision on CUDA: IEEE fp32, TF32 matmuls and convolutions, or bf16 / fp16 autocast
# (ε̂ and everything after it stay float32). On the CPU: fp32 (tf32 means fp32 there) or bf16 convolutions;
# fp16 is refused there.
Precision = Literal["fp32", "tf32", "bf16", "fp16"]
PRECISION_CHOICES: tuple[str, ...] = ("auto", "fp32", "tf32", "bf16", "fp16")  # what --precision accepts
# who runs the network on the CPU (--cpu-runtime): "auto" = OpenVINO below OPENVINO_BELOW_BATCH images where it is
# installed and the CPU has bf16 in hardware, PyTorch otherwise; or one of them for every batch size. Measured in the
# server (DDPM-1000, faces model, 2 threads): OpenVINO took a quarter less time at one image on an Intel Xeon with
# AMX and a tenth less on an AMD EPYC with AVX512-BF16, and 7–18 % more at four images on both (see the README)
CPU_RUNTIMES: tuple[str, ...] = ("auto", "pytorch", "openvino")
OPENVINO_BELOW_BATCH = 4
# the networks prepare_cpu can build: PyTorch's packed fp32 or bf16 one, or OpenVINO's with its bf16 or f32 hint
CpuVariant = Literal["fp32", "bf16", "openvino", "openvino-fp32"]
VARIANT_PRECISION: dict[str, Precision] = {"fp32": "fp32", "bf16": "bf16", "openvino": "bf16",
                                           "openvino-fp32": "fp32"}
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
# bf16 must beat fp32 by this factor to be chosen on the CPU: a tie is not worth its rounding
BF16_MARGIN = 0.95
# below this share of T the bf16 network hands over to fp32: near t = 0, x_t holds little noise and ε̂ is a small
# difference of large activations, so bf16 rounding grows (shipped faces model: ε̂ 0.63 % off fp32 at t ≥ 200,
# 0.75 % at t = 75, 1.3 % at t = 20, 7.4 % at t = 0)
FP32_BELOW_T_SHARE = 0.075
# the batch sizes "auto" times bf16 against fp32 at on the CPU: one image (Frames, the teaching views) and the app's
# default of 4. They can disagree: on an Intel Xeon with AMX (2 threads, shipped faces model) bf16 took 17.5 against
# 22.2 ms/step fp32 at batch 1, and 88 against 71 at batch 4
TIMED_BATCHES = (1, 4)


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
    packed: bool  # convolutions pre-packed for oneDNN
    compiled: bool
    reason: str  # e.g. "auto: bf16 faster on AVX-512 + AVX512-BF16, 9.1 vs 10.4 ms/step fp32"
    ms_per_step: float | None = None  # batch 1, when the choice timed it
    engine: str = ""  # another runtime than PyTorch, e.g. "OpenVINO 2026.4.1 (bf16, built in 2.3 s)"

    def describe(self) -> str:
        parts = [self.device, self.precision] + ([self.engine] if self.engine else
                                                 ["oneDNN pre-packed convolutions"] * self.packed)
        parts += ["compiled step"] * self.compiled
        return f"{', '.join(parts)} ({self.reason})"


@dataclass(frozen=True)
class BatchSwitch:
    """From ``from_batch`` images up, a prepared CPU network runs ``model`` (the :data:`CpuVariant` ``precision``)
    instead of its own, and ``fp32_model`` (when given) for the last steps: bf16 can be faster than fp32 at one batch
    size and slower at another, and OpenVINO faster than PyTorch (see :func:`prepare_cpu`)."""

    from_batch: int
    precision: str
    model: nn.Module
    fp32_model: nn.Module | None = None


class Prepared(nn.Module):
    """Wraps a network for sampling: matches the input's memory format and returns float32 ε̂.

    Besides ε̂ (``forward``) it offers :meth:`ddpm_step`, to pass to :func:`ddpm_app.samplers.ddpm` as ``step_fn``.
    On CUDA, bf16/fp16 are autocast; a CPU network carries its precision itself (packed bf16 convolutions).
    """

    def __init__(self, model: nn.Module, channels_last: bool, compile: bool = False, precision: Precision = "fp32",
                 device_type: str = "cpu", runtime: Runtime | None = None, fp32_model: nn.Module | None = None,
                 fp32_below_t: int = 0, switch: BatchSwitch | None = None, torch_threads: int | None = None):
        super().__init__()
        self.model = model
        # CPU: PyTorch's threads in the calling thread while a PyTorch network runs, one while OpenVINO's does (None:
        # left as they are). PyTorch's work beside OpenVINO's network is small (the update, the pictures), and its
        # idle OpenMP threads spin about 10 ms after each parallel op before they sleep, on the cores OpenVINO's
        # threads need: DDPM-1000 of one image in the app's worker took 8.9 s with one PyTorch thread and 10.4 s
        # with two (AMD EPYC, 2 cores)
        self.torch_threads = torch_threads
        # a batch with any t < fp32_below_t runs through fp32_model instead (CPU bf16: see FP32_BELOW_T_SHARE)
        self.fp32_model, self.fp32_below_t = fp32_model, fp32_below_t
        # CPU: batches of switch.from_batch images or more run in the other precision, where it was timed faster
        self.switch = switch
        self.channels_last = channels_last
        self.precision = precision
        self.device_type = device_type
        self.autocast_dtype = _AUTOCAST.get(precision) if device_type == "cuda" else None
        self.compiled = compile
        self.runtime = runtime or Runtime(device_type, precision, False, compile, "given")
        if compile:
            self._eps_graph = torch.compile(self._eps, mode="reduce-overhead", dynamic=False)
            self._step_graph = torch.compile(self._step, mode="reduce-overhead", dynamic=False)

    def _eps(self, x: Tensor, t: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        model, fp32_model = self.model, self.fp32_model
        if self.switch is not None and x.shape[0] >= self.switch.from_batch:
            model, fp32_model = self.switch.model, self.switch.fp32_model or fp32_model
        if fp32_model is not None and int(t.min()) < self.fp32_below_t:
            model = fp32_model
        if self.torch_threads is not None:
            threads = 1 if isinstance(model, openvino_net.OpenVinoNetwork) else self.torch_threads
            if torch.get_num_threads() != threads:  # kept for what follows the call, as the next step's call wants
                torch.set_num_threads(threads)
        with torch.autocast(x.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            return model(x, t).float()

    def _step(self, schedule: Schedule, x: Tensor, tt: Tensor, noise: Tensor, sigma_table: Tensor,
              clip_x0: bool) -> tuple[Tensor, Tensor, Tensor]:
        return samplers.ddpm_step(self._eps, schedule, x, tt, noise, sigma_table, clip_x0)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if not self.compiled:
            return self._eps(x, t)
        # CUDA-graph outputs live in memory the next replay overwrites: hand out a copy
        torch.compiler.cudagraph_mark_step_begin()
        return self._eps_graph(x, t).clone()

    def in_fp32(self) -> Prepared:
        """The same network computing in float32 throughout: itself when it already does, else (CPU bf16) its fp32
        twin (PyTorch's packed network, or OpenVINO's f32 one), or (CUDA) the module without autocast and uncompiled.

        For measuring (the loss, the bound), whose figures are compared with held-out ones made in fp32: bf16
        rounding of ε̂ is small against ε̂ but not against ‖ε − ε̂‖² where ε̂ is nearly right. Shipped faces model,
        the example portrait: in bf16 the loss read 11–17 % high at t ≥ 870 and 0.3 % at t = 300, and the
        bits/dim moved by 3·10⁻⁴."""
        if self.precision == "fp32" and self.switch is None and not self.compiled:
            return self
        if self.device_type == "cpu":
            if self.fp32_model is None:
                raise ValueError("this CPU network was prepared without an fp32 twin; use prepare_cpu")
            model = self.fp32_model
        else:
            model = self.model
        runtime = replace(self.runtime, precision="fp32", compiled=False, reason="fp32 for measuring",
                          ms_per_step=None)
        return Prepared(model, self.channels_last, precision="fp32", device_type=self.device_type, runtime=runtime,
                        torch_threads=self.torch_threads)

    def ddpm_step(self, schedule: Schedule, x: Tensor, tt: Tensor, noise: Tensor, sigma_table: Tensor,
                  clip_x0: bool) -> tuple[Tensor, Tensor, Tensor]:
        """:func:`ddpm_app.samplers.ddpm_step` with this network, as one CUDA graph when compiled."""
        if not self.compiled:
            return self._step(schedule, x, tt, noise, sigma_table, clip_x0)
        torch.compiler.cudagraph_mark_step_begin()
        eps, x0, x_prev = self._step_graph(schedule, x, tt, noise, sigma_table, clip_x0)
        return eps.clone(), x0.clone(), x_prev.clone()


# ---------------------------------------------------------------------------------------------------------------
# the CPU: packed convolutions, and the choice between fp32 and bf16


def example_input(model: nn.Module, batch: int = 1) -> tuple[Tensor, Tensor]:
    """A (x_t, t) pair of the shape ``model`` samples, from its config: (B, C, H, W) noise and (B,) timesteps."""
    config = model.config
    x = torch.randn(batch, config.in_channels, config.image_size, config.image_size)
    return x.contiguous(memory_format=torch.channels_last), torch.full((batch,), 500, dtype=torch.long)


def median_ms(candidates: Mapping[str, Callable[..., object]], example: tuple[Tensor, ...], rounds: int = 3,
              warmup: int = 1, block: int = 1) -> dict[str, float]:
    """Median milliseconds per call ``candidate(*example)`` of each candidate, timed interleaved (ABAB…) so machine
    load hits all alike. With ``block`` > 1 each turn is ``block`` calls in a row, the first untimed: a runtime with
    its own thread pool (OpenVINO's) slows the call that follows it in another, which a sampler, calling one network
    step after step, does not see."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    with torch.inference_mode():
        for round_ in range(warmup + rounds):
            for name, model in candidates.items():
                for call in range(block):
                    start = time.perf_counter()
                    model(*example)
                    if round_ >= warmup and (call > 0 or block == 1):
                        times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(ts) for name, ts in times.items()}


ONEDNN_NO_BF16 = ("this PyTorch's oneDNN does not run bf16 here, although the CPU has it (limited with "
                  "ONEDNN_MAX_CPU_ISA, or built without it)")


def cpu_bf16_supported(cpu: CpuFeatures) -> bool:
    """bf16 convolutions need bf16 in hardware (AMX or AVX512-BF16) and oneDNN's packed ops, in bf16."""
    return cpu.bf16_native and onednn.bf16_available()


def choose_cpu_precision(requested: str | None, cpu: CpuFeatures, measure: Callable[[], Mapping[str, float]],
                         runtime: str = "pytorch") -> tuple[CpuVariant, str]:
    """The CPU network (a :data:`CpuVariant`) for precision ``requested`` ("auto" or None, "fp32"/"tf32", or
    "bf16") and ``runtime`` (one of :data:`CPU_RUNTIMES`), and why.

    In PyTorch, "auto" is fp32 unless the CPU does bf16 in hardware and ``measure()`` (ms per step of "fp32" and
    "bf16") shows bf16 at least 5 % faster. ``measure`` is only called when that question arises. OpenVINO runs in
    the precision asked for; "auto" is bf16 where the CPU has it in hardware (OpenVINO's own default there).
    """
    requested = requested or "auto"
    if runtime not in CPU_RUNTIMES:
        raise ValueError(f"cpu runtime must be one of {', '.join(CPU_RUNTIMES)}, got {runtime!r}")
    if requested == "fp16":
        raise ValueError("fp16 sampling is for CUDA devices; on the CPU use fp32 or bf16 (or auto)")
    if requested not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {requested!r}")
    if requested == "bf16" and not cpu.bf16_native:
        raise ValueError(f"bf16 needs a CPU with AMX or AVX512-BF16 (and PyTorch with oneDNN); this one is "
                         f"{cpu.describe()}. Use --precision fp32 (or auto).")
    if runtime == "openvino":
        if openvino_net.version() is None:
            raise ValueError("--cpu-runtime openvino: OpenVINO is not installed here (pip install openvino), or "
                             "leave --cpu-runtime at pytorch")
        if requested in ("fp32", "tf32"):
            return "openvino-fp32", "asked for"
        if requested == "bf16":
            return "openvino", "asked for"
        if cpu.bf16_native:
            return "openvino", f"auto: bf16 in hardware on {cpu.isa}"
        return "openvino-fp32", f"auto: no bf16 in hardware on {cpu.isa}"
    if requested == "bf16":
        if not cpu_bf16_supported(cpu):
            raise ValueError(f"bf16: {ONEDNN_NO_BF16}. Use --precision fp32 (or auto).")
        return "bf16", "asked for"
    if requested in ("fp32", "tf32"):
        return "fp32", "asked for"
    if not cpu.bf16_native:
        return "fp32", f"auto: no bf16 in hardware on {cpu.isa}"
    if not cpu_bf16_supported(cpu):
        return "fp32", f"auto: {ONEDNN_NO_BF16}"
    ms = measure()
    verdict = "faster" if ms["bf16"] <= BF16_MARGIN * ms["fp32"] else "not faster"
    choice: CpuVariant = "bf16" if verdict == "faster" else "fp32"
    return choice, f"auto: bf16 {verdict} on {cpu.isa}, {ms['bf16']:.1f} vs {ms['fp32']:.1f} ms/step fp32"


def _cpu_network(model: nn.Module, precision: Precision, batches: tuple[int, ...],
                 group_norm_kernels: dict[tuple, str]) -> nn.Module:
    """The network to run on the CPU, where oneDNN is there: convolutions packed for oneDNN in ``precision`` (in bf16
    the 1×1 ones as matrix products), and each GroupNorm through the kernel timed fastest for its shape at each of
    ``batches`` (:func:`ddpm_app.cpu_norm.tune_group_norms`; ``group_norm_kernels`` keeps those timings for the
    next network of the same model: the GroupNorms see float32 in either precision)."""
    if not onednn.available():
        return model
    # 1×1 convolutions as matrix products in bf16 only: that is where they were measured faster (2× at batch 4 on an
    # Intel Xeon with AMX, level elsewhere); in fp32 the two forms were within noise, and fp32 is what CPUs
    # without bf16 (AVX2 ones, say) run, where the matrix products were not measured
    bf16 = precision == "bf16"
    net = onednn.pack_convolutions(model, example_input(model, 1), torch.bfloat16 if bf16 else torch.float32,
                                   pointwise_as_matmul=bf16)
    examples = {batch: example_input(model, batch) for batch in batches}
    return cpu_norm.tune_group_norms(net, examples, lambda calls: time_group_norm_kernels(calls), group_norm_kernels)


def time_group_norm_kernels(calls: Mapping[str, Callable[[], object]]) -> dict[str, float]:
    """How :func:`_cpu_network` times the GroupNorm kernels of one shape: the median ms of 5 interleaved calls each,
    after a warm-up call."""
    return median_ms(calls, (), rounds=5, warmup=1)


def prepare_cpu(model: nn.Module, precision: str | None = "auto", cpu: CpuFeatures | None = None,
                channels_last: bool = True, batches: tuple[int, ...] = TIMED_BATCHES, timesteps: int = 1000,
                cache: PrecisionCache | None = None, runtime: str = "pytorch", threads: int | None = None) -> Prepared:
    """``model`` made fast for sampling on this CPU: packed convolutions, in fp32 or bf16 (see
    :func:`choose_cpu_precision`; with "auto" both are built and timed at each of ``batches`` where the CPU has
    bf16). The choice at the first batch size is the network's precision; where a later one chose the other
    precision, batches of that many images or more run in it (a :class:`BatchSwitch`). Wherever bf16 runs, steps
    with t below ``FP32_BELOW_T_SHARE``·``timesteps`` (T) run in fp32.

    ``runtime="openvino"`` runs OpenVINO's network instead (:class:`~ddpm_app.openvino_net.OpenVinoNetwork`, not
    timed, at every batch size), with OpenVINO's f32 network for the last steps where it runs bf16 and for
    :meth:`Prepared.in_fp32`: every step stays in OpenVINO, and PyTorch keeps one thread meanwhile (see
    :class:`Prepared`); a network OpenVINO cannot build is a ValueError that says why. ``runtime="auto"`` runs
    OpenVINO that way below :data:`OPENVINO_BELOW_BATCH` images and PyTorch's network (chosen as above, timed at that
    batch) from there up, where :func:`openvino_suits` (and where OpenVINO cannot build the network, PyTorch at every
    batch, with a warning in the log); else it is "pytorch". Networks run on ``threads`` threads (default: PyTorch's
    count now).

    With a ``cache``, "auto" first looks for timings made before under the same :class:`ChoiceKey` (this CPU,
    threads, PyTorch, model config and batch) and only builds the networks it chooses; fresh timings are stored
    there. The runtime's ``ms_per_step`` is then None: the caller times the chosen network if it wants the figure.

    ``model`` itself is switched to eval mode and, with ``channels_last``, to that layout; the packed copies are
    snapshots of its weights.
    """
    cpu = cpu or detect()
    threads = threads or torch.get_num_threads()
    prepared = None
    if runtime == "auto" and openvino_suits(precision, cpu):
        try:
            prepared = _openvino_then_pytorch(model, precision, cpu, channels_last, timesteps, cache, threads)
        except OpenVinoError as e:  # "auto" never fails where PyTorch alone would run
            log.warning("--cpu-runtime auto: %s; PyTorch runs every batch instead", e)
    if prepared is None:
        try:
            prepared = _prepare_one(model, precision, cpu, channels_last, batches, timesteps, cache,
                                    "pytorch" if runtime == "auto" else runtime, threads)
        except OpenVinoError as e:
            raise ValueError(f"--cpu-runtime openvino: {e}; leave --cpu-runtime at pytorch") from e
    log.info("sampling on %s", prepared.runtime.describe())
    return prepared


def _prepare_one(model: nn.Module, precision: str | None, cpu: CpuFeatures, channels_last: bool,
                 batches: tuple[int, ...], timesteps: int, cache: PrecisionCache | None, runtime: str,
                 threads: int) -> Prepared:
    """:func:`prepare_cpu` with one runtime, "pytorch" or "openvino" (an OpenVinoError where OpenVINO cannot build the
    network)."""
    model = model.cpu().eval().requires_grad_(False)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    built: dict[str, Prepared] = {}
    group_norm_kernels: dict[tuple, str] = {}  # timed once, for whichever network is built first
    converted: list[openvino_net.Converted] = []  # OpenVINO's graph, converted once for both of its precisions

    def network(v: str) -> Prepared:
        if v not in built:
            if v.startswith("openvino"):
                if not converted:
                    graphs = cache.path.parent / "openvino" if cache is not None else None
                    converted.append(openvino_net.convert(model, graphs))
                net: nn.Module = OpenVinoNetwork(model, threads, VARIANT_PRECISION[v], converted[0])
            else:
                net = _cpu_network(model, VARIANT_PRECISION[v], batches, group_norm_kernels)
            built[v] = Prepared(net, channels_last=channels_last, precision=VARIANT_PRECISION[v])
        return built[v]

    timed: dict[int, dict[str, float]] = {}  # batch → ms per step of each precision, timed now or remembered
    notes: dict[int, str] = {}  # batch → when a remembered timing was made
    fresh: set[int] = set()  # batches timed now, to remember

    def measure(batch: int) -> Callable[[], Mapping[str, float]]:
        def run() -> Mapping[str, float]:
            remembered = cache.lookup(ChoiceKey.of(cpu, model, batch, threads)) if cache is not None else None
            if remembered is not None:
                notes[batch] = f"timed {remembered.measured}"
                timed[batch] = dict(remembered.ms_per_step)
            else:
                timed[batch] = median_ms({p: network(p) for p in ("fp32", "bf16")}, example_input(model, batch))
                fresh.add(batch)
            return timed[batch]
        return run

    choices: list[tuple[int, str]] = []  # (batch, variant chosen there)
    for batch in batches:
        chosen, why = choose_cpu_precision(precision, cpu, measure(batch), runtime)
        if not choices:
            reason = why  # the first batch's reason; later batches add their timings below
        choices.append((batch, chosen))
        if batch not in timed:  # nothing was timed: the answer is the same at every batch size
            break
        if cache is not None and batch in fresh:
            cache.store(ChoiceKey.of(cpu, model, batch, threads), RememberedChoice(chosen, dict(timed[batch]), now()))

    first_batch, choice = choices[0]
    prepared = network(choice)
    if first_batch in timed:
        reason += f" at batch {first_batch}" + (f" ({notes[first_batch]})" if first_batch in notes else "")
    for batch, other in choices[1:]:
        ms = timed[batch]
        reason += f"; {other} at batch {batch}, {ms['bf16']:.1f} vs {ms['fp32']:.1f} ms/step fp32"
        reason += f" ({notes[batch]})" if batch in notes else ""
        if other != choice and prepared.switch is None:
            prepared.switch = BatchSwitch(batch, other, network(other).model)
            reason += f", so {other} from {batch} images up"
    if notes:
        reason += f"; remembered in {cache.path}"
    if any(VARIANT_PRECISION[c] == "bf16" for _, c in choices):
        twin = "openvino-fp32" if runtime == "openvino" else "fp32"
        prepared.fp32_model, prepared.fp32_below_t = network(twin).model, round(FP32_BELOW_T_SHARE * timesteps)
        reason += f"; fp32 for t < {prepared.fp32_below_t}"
    ms_now = timed[first_batch][choice] if first_batch in fresh else None
    engine = prepared.model.describe() if isinstance(prepared.model, openvino_net.OpenVinoNetwork) else ""
    prepared.runtime = Runtime(f"cpu: {cpu.describe()}, {threads} threads", VARIANT_PRECISION[choice],
                               onednn.available() and not engine, False, reason, ms_now, engine)
    prepared.torch_threads = threads
    return prepared


def openvino_suits(precision: str | None, cpu: CpuFeatures) -> bool:
    """Whether ``--cpu-runtime auto`` runs OpenVINO below :data:`OPENVINO_BELOW_BATCH` images: where it is installed,
    the CPU has bf16 in hardware (the two kinds it was measured faster on) and bf16 may run (precision auto/bf16)."""
    return (precision or "auto") in ("auto", "bf16") and cpu.bf16_native and openvino_net.version() is not None


def _openvino_then_pytorch(model: nn.Module, precision: str | None, cpu: CpuFeatures, channels_last: bool,
                           timesteps: int, cache: PrecisionCache | None, threads: int) -> Prepared:
    """``--cpu-runtime auto`` where OpenVINO suits: its network below OPENVINO_BELOW_BATCH images, PyTorch's from
    there up (each with its own fp32 network for the last steps)."""
    small = _prepare_one(model, precision, cpu, channels_last, (1,), timesteps, cache, "openvino", threads)
    large = _prepare_one(model, precision, cpu, channels_last, (OPENVINO_BELOW_BATCH,), timesteps, cache, "pytorch",
                         threads)
    small.switch = BatchSwitch(OPENVINO_BELOW_BATCH, large.precision, large.model, large.fp32_model or large.model)
    below = f"below {OPENVINO_BELOW_BATCH} images"
    engine = (f"{small.runtime.engine} {below}; from {OPENVINO_BELOW_BATCH} images up PyTorch {large.precision}, "
              "oneDNN pre-packed convolutions")
    reason = (f"auto: OpenVINO {below}, {small.runtime.reason.removeprefix('auto: ')}; from "
              f"{OPENVINO_BELOW_BATCH} up {large.runtime.reason}")
    small.runtime = replace(small.runtime, engine=engine, reason=reason, ms_per_step=None)
    return small


def prepare(model: nn.Module, device: torch.device | str, compile: bool | None = None,
            precision: str | None = "auto", channels_last: bool = True, timesteps: int = 1000,
            cache: PrecisionCache | None = None, cpu_runtime: str = "pytorch",
            cpu_threads: int | None = None) -> Prepared:
    """Eval mode, no grads, on ``device``. On the CPU: :func:`prepare_cpu`. On CUDA: channels_last and compiled with
    CUDA graphs unless ``compile=False``.

    ``precision``: "auto" (or None) is fp16 autocast on CUDA and :func:`choose_cpu_precision` on the CPU; else one
    of :data:`Precision`. On an H100, fp16 takes a 1,000-step chain of 16 images from 2.4 s to 1.4 s. TF32 is a
    global setting: "tf32" and "fp32" take effect inside :func:`float32_matmul`. The first call at each new batch
    size compiles (CUDA only, a few seconds). The model itself is moved and switched to eval mode in place.
    ``timesteps``: the schedule's T (the CPU's bf16 network hands the last steps to fp32). ``cache``: where the
    CPU's "auto" choice is remembered (see :func:`prepare_cpu`). ``cpu_runtime``: one of :data:`CPU_RUNTIMES`, for
    the CPU only, and ``cpu_threads`` the threads its networks run on there (default: PyTorch's count).
    """
    device = torch.device(device)
    if device.type == "cpu" and not compile:
        return prepare_cpu(model, precision, channels_last=channels_last, timesteps=timesteps, cache=cache,
                           runtime=cpu_runtime, threads=cpu_threads)
    if precision not in PRECISION_CHOICES + (None,):
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}")
    chosen: Precision = ("fp16" if device.type == "cuda" else "fp32") if precision in (None, "auto") else precision
    if chosen == "fp16" and device.type != "cuda":
        raise ValueError("fp16 sampling is for CUDA devices; use fp32 on the CPU")
    model = model.to(device).eval().requires_grad_(False)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    use_compile = device.type == "cuda" if compile is None else compile
    runtime = Runtime(str(device), chosen, False, use_compile, "auto" if precision in (None, "auto") else "asked for")
    return Prepared(model, channels_last=channels_last, compile=use_compile, precision=chosen,
                    device_type=device.type, runtime=runtime)
