"""The U-Net run by OpenVINO on the CPU (``app.py --cpu-runtime auto`` below four images, or ``openvino``):
converted from the PyTorch network when a model is loaded, compiled for this CPU, and called like the network it
came from.

OpenVINO fuses ops that PyTorch runs one by one (GroupNorm with SiLU, the residual adds), and per-op overhead is
what a batch of one image on a CPU is bound by: the likely reason it is faster there (not profiled). With its bf16
hint, every step in OpenVINO and PyTorch at one thread beside it, a one-image DDPM-1000 run through the server took
a tenth less time than with the app's PyTorch bf16 network on an AMD EPYC with AVX512-BF16 and a quarter less on
an Intel Xeon with AMX; at four images it took longer on both (see the README). ``requirements.txt`` installs it on
x86-64 Linux and Windows; the app runs without it.

ε̂ comes back as float32 whatever the hint; inputs are (B, C, H, W) float32 x_t and (B,) integer t, any batch size.
OpenVINO is handed t's sinusoidal features, computed here in float32 (the network's ``time_features``), not t:
with the bf16 hint it would compute t·ω_k in bf16, which cannot tell t = 800 from 802, and ε̂ of a small test
network was 16 % off fp32 at t = 800 that way, 1.3 % with the features (PyTorch's bf16 network: 1.0 %).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

Hint = Literal["bf16", "fp32"]
_OPENVINO_HINT = {"bf16": "bf16", "fp32": "f32"}


def version() -> str | None:
    """The installed OpenVINO's version (e.g. "2026.4.1"), or None where it is not installed."""
    if importlib.util.find_spec("openvino") is None:
        return None
    import openvino

    return openvino.__version__.split("-")[0]


@functools.lru_cache(maxsize=1)
def _core():
    """One OpenVINO Core for the process, never released. Compiling on the CPU gives the calling thread an alternate
    signal stack in OpenVINO's memory; a Core released with the last network frees that memory while the stack stays
    registered, and the next signal to that thread (Ctrl-C) then crashed the process with SIGSEGV."""
    import openvino as ov

    return ov.Core()


class OpenVinoError(RuntimeError):
    """OpenVINO is missing, or could not convert or compile the network."""


@dataclass(frozen=True)
class Converted:
    """A network converted to OpenVINO's graph, to compile in either precision (converting is the slow part)."""

    graph: object  # openvino.Model
    seconds: float  # to convert
    version: str


def graph_key(model: nn.Module, installed: str) -> str:
    """What a converted graph depends on: OpenVINO's version, the network's class and config, and every weight."""
    digest = hashlib.sha256(f"{installed}|{type(model).__name__}|{model.config!r}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:32]


def convert(model: nn.Module, cache_dir: str | Path | None = None) -> Converted:
    """``model`` (with ``forward_features``) as OpenVINO's graph of ε̂ from x_t and t's features, any batch size; a
    snapshot of its weights. Raises :class:`OpenVinoError` when OpenVINO is missing or cannot convert it.

    With ``cache_dir`` the graph is kept there (OpenVINO's IR, weights in f32) under :func:`graph_key` and read back
    at the next start instead of converting again (2.0 s of a 2.4 s build on an AMD EPYC); a file that cannot be
    read is converted afresh, and a folder that cannot be written is left as it is, each with a log line."""
    installed = version()
    if installed is None:
        raise OpenVinoError("OpenVINO is not installed (pip install openvino)")
    start = time.perf_counter()
    path = None
    if cache_dir is not None and hasattr(model, "config"):
        path = Path(cache_dir) / f"{graph_key(model, installed)}.xml"
        if path.is_file() and path.with_suffix(".bin").is_file():
            try:
                return Converted(_core().read_model(str(path)), time.perf_counter() - start, installed)
            except Exception as e:  # OpenVINO raises RuntimeError (and its own types) for a file it cannot read
                log.warning("OpenVINO graph %s could not be read (%s: %s); converting again", path,
                            type(e).__name__, e)
    converted = _convert(model, installed)
    if path is not None:
        import openvino as ov

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            ov.save_model(converted.graph, str(path), compress_to_fp16=False)  # f32 weights, as converted
        except Exception as e:  # a read-only or full disk: convert again at the next start
            log.info("OpenVINO graph not kept in %s (%s: %s)", path.parent, type(e).__name__, e)
    return Converted(converted.graph, time.perf_counter() - start, installed)


def _convert(model: nn.Module, installed: str) -> Converted:
    """:func:`convert` without the cache."""
    import openvino as ov

    if not hasattr(model, "forward_features"):
        raise OpenVinoError(f"{type(model).__name__} does not take t's features as an input (forward_features)")
    config = model.config
    shape = [-1, config.in_channels, config.image_size, config.image_size]
    features = model.time_features(torch.zeros(1, dtype=torch.long))
    example = (torch.zeros(1, *shape[1:]), features)
    start = time.perf_counter()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's deprecation and constant-shape notes: not the user's
            graph = ov.convert_model(_FeaturesInput(model.float().eval()), example_input=example,
                                     input=[("x", shape, ov.Type.f32),
                                            ("features", [-1, features.shape[1]], ov.Type.f32)])
    except Exception as e:  # OpenVINO raises its own types (and RuntimeError) for what it cannot convert
        raise OpenVinoError(f"OpenVINO could not convert the network: {type(e).__name__}: {e}") from e
    return Converted(graph, time.perf_counter() - start, installed)


class OpenVinoNetwork(nn.Module):
    """ε_θ(x_t, t) of ``model`` computed by OpenVINO on the CPU with ``threads`` threads, in ``hint`` precision
    (bf16: OpenVINO's bf16 inference precision, which it keeps to f32 where the CPU has no bf16).

    ``model`` is converted as it is now (a snapshot of its weights), unless ``converted`` is what :func:`convert` made
    of it already (the same graph compiled in another precision). Each calling thread gets its own inference
    request, so users sampling at once do not share one. Raises :class:`OpenVinoError` when it cannot be built.
    """

    def __init__(self, model: nn.Module, threads: int, hint: Hint = "bf16", converted: Converted | None = None):
        super().__init__()
        converted = converted or convert(model)
        start = time.perf_counter()
        try:
            self.compiled = _core().compile_model(converted.graph, "CPU", {
                "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": _OPENVINO_HINT[hint],
                "PERFORMANCE_HINT": "LATENCY"})
        except Exception as e:  # OpenVINO raises its own types (and RuntimeError) for what it cannot compile
            raise OpenVinoError(f"OpenVINO could not compile the network: {type(e).__name__}: {e}") from e
        # to convert and compile, paid when the model is loaded
        self.seconds = converted.seconds + time.perf_counter() - start
        self.hint, self.threads, self.version = hint, threads, converted.version
        self.time_features = model.time_features  # parameter-free: sines and cosines of t
        self._local = threading.local()

    def describe(self) -> str:
        return f"OpenVINO {self.version} ({self.hint}, built in {self.seconds:.1f} s)"

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        x = x.detach().float().contiguous()  # OpenVINO reads NCHW: a channels_last x_t is copied
        features = self.time_features(t.detach().reshape(-1).expand(x.shape[0])).contiguous()
        out = request.infer({"x": x.numpy(), "features": features.numpy()})
        return torch.from_numpy(out[0].copy())  # the request's output buffer is reused by its next call


class _FeaturesInput(nn.Module):
    """``model`` as OpenVINO converts it: ε̂ from x_t and t's sinusoidal features."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, features: Tensor) -> Tensor:
        return self.model.forward_features(x, features)
