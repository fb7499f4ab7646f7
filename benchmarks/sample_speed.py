"""How fast one reverse step is: ms per step on this CPU for the shipped models and the seed architecture, and
(when a GPU is present) the time of a whole 1,000-step DDPM chain for 16 images.

    python benchmarks/sample_speed.py [--threads 2] [--repeats 50] [--batches 1,2,3,4] [--precision auto]

It first prints the CPU model, its instruction sets (AVX2 / AVX-512 / AVX512-BF16 / AMX), the threads and the
network the app runs here (``ddpm_app.runtime.inference.prepare_cpu``). Then, per model and batch, the median of
``--repeats`` single network evaluations of each CPU engine, interleaved (ABAB…) so that other jobs on the machine
slow them alike: PyTorch in fp32, and OpenVINO in f32 and (where the CPU has bf16 in hardware) bf16 where it is
installed. The seed architecture is measured with random weights (speed does not depend on the values). For how the
app's network holds up while other programs use the cores, see benchmarks/cpu_busy.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddpm_app.runtime.cpu import tune_malloc, wait_passively

wait_passively()  # before torch loads OpenMP, as app.py does

import torch  # noqa: E402

from ddpm_app.diffusion import samplers
from ddpm_app.diffusion.schedule import Schedule, ScheduleConfig
from ddpm_app.io.model_folder import load_pretrained
from ddpm_app.models import SeedUNetConfig, build_model
from ddpm_app.runtime import openvino_net
from ddpm_app.runtime.inference import (
    CPU_RUNTIMES,
    PRECISION_CHOICES,
    Network,
    Runtime,
    example_input,
    median_ms,
    prepare,
    prepare_cpu,
)
from ddpm_app.runtime.isa import CpuFeatures, detect


def header(cpu: CpuFeatures, threads: int, runtime: Runtime) -> list[str]:
    """The lines that say which machine the figures below belong to."""
    flags = ", ".join(f"{name} {'yes' if has else 'no'}" for name, has in
                      (("AVX2", cpu.avx2), ("AVX-512", cpu.avx512), ("AVX512-BF16", cpu.avx512_bf16), ("AMX", cpu.amx)))
    return [f"CPU: {cpu.model}",
            f"ISA: {cpu.isa} ({flags})",
            f"Threads: {threads} (torch {torch.__version__})",
            f"Precision: {runtime.precision} ({runtime.reason})"] + ([f"Runtime: {runtime.engine}"] if runtime.engine
                                                                     else [])


def cpu_engines(model: torch.nn.Module, cpu: CpuFeatures, threads: int) -> dict[str, Network]:
    """The engines that could run ``model`` on this CPU, each at every batch size."""
    engines = {"PyTorch fp32": prepare_cpu(model, "fp32", cpu, runtime="pytorch", threads=threads)}
    if openvino_net.version() is not None:
        engines["OpenVINO f32"] = prepare_cpu(model, "fp32", cpu, runtime="openvino", threads=threads)
        if cpu.bf16_native:
            engines["OpenVINO bf16"] = prepare_cpu(model, "bf16", cpu, runtime="openvino", threads=threads)
    return engines


def chain_seconds(model, schedule: Schedule, size: int, channels: int, device: torch.device, batch: int) -> float:
    """Wall time of a full DDPM chain (every timestep), after one warm-up chain."""
    import time
    shape = (batch, channels, size, size)
    for _ in range(2):
        gen = torch.Generator(device).manual_seed(0)
        start = time.perf_counter()
        samplers.final(samplers.ddpm(model, schedule, shape, generator=gen, device=device, clip_x0=True))
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    return elapsed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--batches", default="1,2,3,4", help="CPU batch sizes, comma-separated (default: 1,2,3,4)")
    p.add_argument("--precision", default="auto", choices=[c for c in PRECISION_CHOICES if c != "fp16"])
    p.add_argument("--cpu-runtime", default="auto", choices=CPU_RUNTIMES, help="the app's --cpu-runtime")
    p.add_argument("--weights", default="weights")
    p.add_argument("--no-seed", action="store_true", help="skip the seed architecture")
    p.add_argument("--gpu-batch", type=int, default=16)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(tune_malloc(), file=sys.stderr)  # as app.py does
    batches = [int(b) for b in args.batches.split(",") if b]
    cpu = detect()

    models = [(d.name, load_pretrained(d).model) for d in sorted(Path(args.weights).iterdir())
              if (d / "config.json").is_file()]
    if not args.no_seed:
        models.append(("seed architecture (random weights)", build_model(SeedUNetConfig())))
    apps = {name: prepare_cpu(model, args.precision, cpu, runtime=args.cpu_runtime, threads=args.threads)
            for name, model in models}
    print("\n".join(header(cpu, args.threads, next(iter(apps.values())).runtime)), flush=True)

    for name, model in models:
        params = model.num_parameters() / 1e6
        print(f"\n{name}, {params:.1f} M parameters: ms per network evaluation (median of {args.repeats}); the app "
              f"runs {apps[name].runtime.engine}, {apps[name].precision}\n")
        engines = cpu_engines(model, cpu, args.threads)
        print("| batch | " + " | ".join(engines) + " | app: DDPM-1000 | app: DDIM-50 |")
        print("|---" * (len(engines) + 3) + "|")
        for batch in batches:
            ms = median_ms({**engines, "app": apps[name]}, example_input(model, batch), rounds=args.repeats, warmup=3)
            app = ms.pop("app")
            print(f"| {batch} | " + " | ".join(f"{v:.1f}" for v in ms.values())
                  + f" | {app:.0f} ms × 1000 = {app:.1f} s | {app * 50 / 1000:.2f} s |", flush=True)

    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        print(f"\nGPU: {torch.cuda.get_device_name(gpu)}; DDPM-1000, batch {args.gpu_batch}, x̂₀ clipped")
        print("\n| model | eager fp32: chain s | CUDA graph fp32: chain s | CUDA graph fp16: chain s |")
        print("|---|---|---|---|")
        for name, model in models:
            config = model.config
            schedule = Schedule(ScheduleConfig()).to(gpu)
            times = [chain_seconds(prepare(model, gpu, compile=c, precision=pr), schedule, config.image_size,
                                   config.in_channels, gpu, args.gpu_batch)
                     for c, pr in ((False, "fp32"), (True, "fp32"), (True, "fp16"))]
            print(f"| {name} | " + " | ".join(f"{s:.2f}" for s in times) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
