"""How fast one reverse step is: ms per step on CPU for the shipped models and the seed architecture,
and (when a GPU is present) the time of a whole 1,000-step DDPM chain for 16 images.

    python benchmarks/sample_speed.py [--threads 2] [--repeats 50] [--weights weights]

CPU figures are the median of ``--repeats`` timed single steps at batch 1 (after warm-up), with the same
inference settings the app uses (``ddpm_app.inference.prepare``). The seed architecture is measured with
random weights (speed does not depend on the values).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddpm_app import samplers  # noqa: E402
from ddpm_app.inference import prepare  # noqa: E402
from ddpm_app.model_folder import load_pretrained  # noqa: E402
from ddpm_app.models import SeedUNetConfig, build_model  # noqa: E402
from ddpm_app.schedule import Schedule, ScheduleConfig  # noqa: E402


def ms_per_step(model, size: int, channels: int, device: torch.device, repeats: int, batch: int = 1) -> float:
    x = torch.randn(batch, channels, size, size, device=device)
    t = torch.full((batch,), 500, device=device, dtype=torch.long)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 5):
            start = time.perf_counter()
            model(x, t)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 5:
                times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def chain_seconds(model, schedule: Schedule, size: int, channels: int, device: torch.device, batch: int) -> float:
    """Wall time of a full DDPM chain (every timestep), after one warm-up chain."""
    shape = (batch, channels, size, size)
    for _ in range(2):
        gen = torch.Generator(device).manual_seed(0)
        start = time.perf_counter()
        samplers.final(samplers.ddpm(model, schedule, shape, generator=gen, device=device, clip_x0=True,
                                     step_fn=model.ddpm_step))
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    return elapsed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--weights", default="weights")
    p.add_argument("--gpu-batch", type=int, default=16)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")

    models = [(d.name, load_pretrained(d)) for d in sorted(Path(args.weights).iterdir()) if (d / "config.json").is_file()]
    seed = build_model(SeedUNetConfig()).eval()
    print(f"CPU: {args.threads} threads, torch {torch.__version__}")
    print("\n| model | params | CPU ms/step (batch 1, median) | DDPM-1000 chain (est.) | DDIM-50 (est.) |")
    print("|---|---|---|---|---|")
    rows = [(name, lm.model, lm.config.image_size, lm.config.channels) for name, lm in models]
    rows.append(("seed architecture (random weights)", seed, 64, 3))
    for name, model, size, ch in rows:
        fast = prepare(model, cpu)
        ms = ms_per_step(fast, size, ch, cpu, args.repeats)
        n = model.num_parameters() / 1e6
        print(f"| {name} | {n:.1f} M | {ms:.1f} | {ms:.0f} ms × 1000 = {ms:.1f} s | {ms * 50 / 1000:.2f} s |")

    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        print(f"\nGPU: {torch.cuda.get_device_name(gpu)}; DDPM-1000, batch {args.gpu_batch}, x̂₀ clipped")
        print("\n| model | eager fp32: chain s | CUDA graph fp32: chain s | CUDA graph fp16: chain s |")
        print("|---|---|---|---|")
        for name, model, size, ch in rows:
            schedule = Schedule(ScheduleConfig()).to(gpu)
            times = [chain_seconds(prepare(model, gpu, compile=c, precision=pr), schedule, size, ch, gpu,
                                   args.gpu_batch) for c, pr in ((False, "fp32"), (True, "fp32"), (True, "fp16"))]
            print(f"| {name} | " + " | ".join(f"{s:.2f}" for s in times) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
