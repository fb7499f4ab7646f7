"""The U-Net run by OpenVINO on the CPU (``app.py --cpu-runtime auto`` where the CPU has bf16 in hardware, or
``openvino``): converted from the PyTorch network when a model is loaded, compiled for this CPU, and called like the
network it came from, at every batch size.

OpenVINO fuses ops that PyTorch runs one by one (GroupNorm with SiLU, the residual adds), and per-op overhead is
what a batch of a few images on a CPU is bound by; its bf16 kernels give a seed the same image in a batch of one or
four. ``requirements.txt`` installs it on x86-64 Linux and Windows; the app runs without it. The converted graph is
not kept on disk: converting takes a few seconds at each start, and a kept graph would be one more file to trust.

ε̂ comes back as float32 whatever the hint; inputs are (B, C, H, W) float32 x_t and (B,) integer t, any batch size.
OpenVINO is handed t's sinusoidal features, computed here in float32 (the network's ``time_features``), not t:
with the bf16 hint it would compute t·ω_k in bf16, which cannot tell t = 800 from 802, and ε̂ of a small test
network was 16 % off fp32 at t = 800 that way, 1.3 % with the features.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
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


def convert(model: nn.Module) -> Converted:
    """``model`` (with ``forward_features``) as OpenVINO's graph of ε̂ from x_t and t's features, any batch size; a
    snapshot of its weights. Raises :class:`OpenVinoError` when OpenVINO is missing or cannot convert it."""
    installed = version()
    if installed is None:
        raise OpenVinoError("OpenVINO is not installed (pip install openvino)")
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


# Calls of up to this many images (sampling: at most 4, a comparison's two runs 8) keep their buffers for the next
# call; a larger one (a teaching view's loss curve: 75 inputs) gives them back, so it does not hold hundreds of MiB
# for the life of the server.
KEPT_BATCH = 16


class OpenVinoNetwork(nn.Module):
    """ε_θ(x_t, t) of the network ``converted`` was made from, computed by OpenVINO on the CPU with ``threads``
    threads, in ``hint`` precision (bf16: OpenVINO's bf16 inference precision, which it keeps to f32 where the CPU has
    no bf16); ``time_features`` is that network's (parameter-free) map from t to its sinusoidal features.

    One rule for the batch: with two threads or more the network is compiled as two streams of half the threads
    each; a single image runs on one stream, and a batch of two or more is split into two equal halves (an odd one
    with its last image repeated) run at once, one per stream. Two reasons (docs/performance.md has the measurements):
    - every image is computed by one stream's threads, whatever its batch. OpenVINO's bf16 results depend on how
      many threads share an op: a single image on both threads came out up to 5 grey levels away from the same seed
      in a batch after DDIM-20, where on one stream it is the same image;
    - inside one request every parallel op waits for its slowest thread, and where other programs share the cores
      that thread is often the one the scheduler has put aside; two streams never wait for each other inside an op.
    The streams are not pinned to cores: a stream pinned to the core that a busy program runs on waits for it while
    the other core idles.

    Compiled at the first call, or by :meth:`compile`. Each calling thread gets its own inference requests, so users
    sampling at once do not share one. Raises :class:`OpenVinoError` when it cannot be compiled.
    """

    def __init__(self, converted: Converted, time_features: Callable[[Tensor], Tensor], threads: int,
                 hint: Hint = "bf16"):
        super().__init__()
        self.converted, self.time_features = converted, time_features
        self.hint, self.threads, self.version = hint, threads, converted.version
        self.streams = 2 if threads >= 2 else 1
        self.seconds = converted.seconds  # to convert and compile, paid when the model is loaded
        self._compiled = None  # openvino.CompiledModel
        self._lock = threading.Lock()
        self._local = threading.local()

    def compile(self):
        """OpenVINO's compiled network (an ``openvino.CompiledModel``), compiled once."""
        with self._lock:
            if self._compiled is None:
                start = time.perf_counter()
                settings = {"INFERENCE_NUM_THREADS": self.streams * (self.threads // self.streams),
                            "NUM_STREAMS": self.streams, "ENABLE_CPU_PINNING": False,
                            "INFERENCE_PRECISION_HINT": _OPENVINO_HINT[self.hint]}
                try:
                    self._compiled = _core().compile_model(self.converted.graph, "CPU", settings)
                except Exception as e:  # OpenVINO raises its own types (and RuntimeError) for what it cannot compile
                    raise OpenVinoError(f"OpenVINO could not compile the network: {type(e).__name__}: {e}") from e
                self.seconds += time.perf_counter() - start
            return self._compiled

    def describe(self) -> str:
        return f"OpenVINO {self.version} ({self.hint}, built in {self.seconds:.1f} s)"

    def _requests(self) -> list[object]:
        """This thread's inference requests, one per stream."""
        requests = getattr(self._local, "requests", None)
        if requests is None:
            compiled = self.compile()
            requests = self._local.requests = [compiled.create_infer_request() for _ in range(self.streams)]
        return requests

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        requests = self._requests()
        x = x.detach().float().contiguous()  # OpenVINO reads NCHW: a channels_last x_t is copied
        features = self.time_features(t.detach().reshape(-1).expand(x.shape[0])).contiguous()
        x, features = x.numpy(), features.numpy()
        n = len(x)
        if n == 1 or len(requests) == 1:
            eps = torch.from_numpy(requests[0].infer({"x": x, "features": features})[0].copy())  # its buffer is reused
        else:
            if n % 2:  # two equal halves: an image more costs less than a stream that waits with one image fewer
                x, features = np.concatenate([x, x[-1:]]), np.concatenate([features, features[-1:]])
            half = len(x) // 2
            for request, part in zip(requests, (slice(0, half), slice(half, None))):
                request.start_async({"x": x[part], "features": features[part]})
            for request in requests:
                request.wait()
            eps = torch.from_numpy(np.concatenate([request.get_output_tensor(0).data for request in requests])[:n])
        if n > KEPT_BATCH:
            self.release_memory()
        return eps

    def release_memory(self) -> None:
        """Give back the buffers the largest call so far left behind (OpenVINO keeps them for the life of the
        compiled network: a few MiB per image). This thread's next call makes new inference requests."""
        self._local.requests = None
        with self._lock:
            try:
                self._compiled.release_memory()
            except RuntimeError as e:  # another thread's request is running: its buffers stay until a later release
                log.debug("OpenVINO kept its buffers: %s", e)


class _FeaturesInput(nn.Module):
    """``model`` as OpenVINO converts it: ε̂ from x_t and t's sinusoidal features."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, features: Tensor) -> Tensor:
        return self.model.forward_features(x, features)
