"""Whether another runtime runs the U-Net faster on this CPU than the app's network: OpenVINO and ONNX Runtime.

    pip install openvino onnxruntime onnx          # optional: a runtime that is missing is reported and skipped
    python benchmarks/cpu_runtimes.py [--model weights/faces] [--threads 2] [--batches 1,4] [--blocks 3]

Prints the CPU and its ISA, then per batch size the median ms per network evaluation and the relative error of ε̂
against the float32 PyTorch network on the same input (t = 500) for: the app's PyTorch network (``prepare_cpu``,
its ``auto`` precision, and in fp32 where that chose bf16), OpenVINO in f32 and in bf16 (its
``INFERENCE_PRECISION_HINT``; it falls back to f32 where the CPU has no bf16), and ONNX Runtime in fp32. Each
variant runs in blocks of 10 calls after a warm-up call, and the blocks of all variants are interleaved, since
runtimes with their own thread pools disturb a call that follows theirs immediately; ONNX Runtime's threads are
told not to spin. The conversion and compile times of each runtime, which an app would pay at start-up, are
printed too.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddpm_app.cpu import tune_malloc  # noqa: E402
from ddpm_app.inference import example_input, median_ms, prepare_cpu  # noqa: E402
from ddpm_app.isa import detect  # noqa: E402
from ddpm_app.model_folder import load_pretrained  # noqa: E402

RUNTIMES = {"openvino": "openvino", "onnxruntime": "onnxruntime (needs onnx to export)"}
BLOCK = 10  # timed calls per block; a block of each variant in turn, each after one untimed call


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    """‖out − ref‖ / ‖ref‖ over the whole batch."""
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def openvino_networks(model: torch.nn.Module, threads: int, example: tuple[torch.Tensor, torch.Tensor]) -> dict:
    import openvino as ov

    start = time.perf_counter()
    converted = ov.convert_model(model, example_input=example,
                                 input=[("x", [-1, *example[0].shape[1:]], ov.Type.f32), ("t", [-1], ov.Type.i64)])
    print(f"OpenVINO {ov.__version__}: converted in {time.perf_counter() - start:.1f} s")
    core, compiled = ov.Core(), {}
    for hint in ("f32", "bf16"):
        start = time.perf_counter()
        compiled[hint] = core.compile_model(converted, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                               "INFERENCE_PRECISION_HINT": hint,
                                                               "PERFORMANCE_HINT": "LATENCY"})
        print(f"OpenVINO {hint}: compiled in {time.perf_counter() - start:.1f} s")
    return {f"OpenVINO {hint}": (lambda net: lambda x, t: net([x, t])[0])(net) for hint, net in compiled.items()}


def onnxruntime_network(model: torch.nn.Module, threads: int, example: tuple[torch.Tensor, torch.Tensor]) -> dict:
    import onnxruntime as ort

    path = Path(tempfile.mkdtemp()) / "unet.onnx"
    start = time.perf_counter()
    torch.onnx.export(model, example, str(path), input_names=["x", "t"], output_names=["eps"], opset_version=17,
                      dynamic_axes={"x": {0: "batch"}, "t": {0: "batch"}, "eps": {0: "batch"}}, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    print(f"ONNX Runtime {ort.__version__}: exported and loaded in {time.perf_counter() - start:.1f} s")
    return {"ONNX Runtime fp32": lambda x, t: session.run(None, {"x": x, "t": t})[0]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(Path(__file__).resolve().parents[1] / "weights" / "faces"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", default="1,4")
    p.add_argument("--blocks", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(tune_malloc())  # as app.py does
    batches = [int(b) for b in args.batches.split(",")]
    cpu = detect()
    print(f"CPU: {cpu.model}\nISA: {cpu.isa}\nThreads: {args.threads} (torch {torch.__version__})")
    model = load_pretrained(args.model).model.float().eval()
    app = prepare_cpu(model, "auto", cpu=cpu, batches=tuple(batches))
    print(f"app's network: {app.runtime.describe()}")
    app_fp32 = prepare_cpu(model, "fp32", cpu=cpu) if app.precision != "fp32" else None
    x1, t1 = example_input(model, 1)
    example = (x1.contiguous(), t1)
    others: dict[str, Callable] = {}
    for module, label in RUNTIMES.items():
        if not installed(module) or (module == "onnxruntime" and not installed("onnx")):
            print(f"{label}: not installed, skipped")
            continue
        make = openvino_networks if module == "openvino" else onnxruntime_network
        others.update(make(model, args.threads, example))
    with torch.inference_mode():
        for batch in batches:
            x, t = torch.randn(batch, *example[0].shape[1:]), torch.full((batch,), 500)
            ref = model(x, t).float().numpy()
            calls = {"app's network": lambda: app(x, t)}
            if app_fp32 is not None:
                calls["app's network in fp32"] = lambda: app_fp32(x, t)
            calls.update({name: (lambda f: lambda: f(x.numpy(), t.numpy()))(f) for name, f in others.items()})
            errors = {}
            for name, call in calls.items():
                out = call()
                errors[name] = relative_error(out.float().numpy() if torch.is_tensor(out) else out, ref)
            ms = median_ms(calls, (), rounds=args.blocks, warmup=0, block=BLOCK + 1)
            print(f"\nbatch {batch}: median of {args.blocks * BLOCK} calls\n\n| network | ms | ε̂ error vs fp32 |\n|---|---|---|")
            for name in calls:
                print(f"| {name} | {ms[name]:.2f} | {100 * errors[name]:.3f} % |")


if __name__ == "__main__":
    main()
