"""Does a faster CPU path change the samples? bf16 (or any precision) against the fp32 path, same seeds.

    python experiments/precision_quality.py [--model weights/faces] [--precision bf16] [--batch 4] [--threads 2]
                                           [--samplers ddim,ddpm] [--cpu-runtime auto]

The network compared is the one the app runs with ``--precision`` and ``--cpu-runtime`` (bf16: OpenVINO's), against
PyTorch's fp32 network.

Prints three things:
1. the relative error ‖ε̂ − ε̂_fp32‖ / ‖ε̂_fp32‖ at every timestep of the fp32 chains run, on their x_t (with DDPM
   every t = 999 … 0): median, 99th percentile and maximum over t, and the worst t;
2. the PSNR of the final 8-bit images of DDIM-50 and DDPM-1000 chains from the same seed against the fp32 chains,
   with x̂₀ clipped as in the app (and, for scale, the PSNR between two fp32 chains from different seeds);
3. the time each chain took.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddpm_app.diffusion import samplers
from ddpm_app.image import to_uint8
from ddpm_app.io.model_folder import load_pretrained
from ddpm_app.runtime.inference import CPU_RUNTIMES, prepare_cpu
from ddpm_app.runtime.isa import detect


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two uint8 image batches (peak 255); inf if equal."""
    mse = (a.double() - b.double()).square().mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def run(model, schedule, shape, seed: int, sampler: str) -> tuple[list[samplers.Step], float]:
    start = time.perf_counter()
    settings = samplers.SamplerSettings(sampler, 50, 0.0, clip_x0=True)
    steps = list(settings.run(model, schedule, shape, generator=torch.Generator().manual_seed(seed)))
    return steps, time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="weights/faces")
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samplers", default="ddim,ddpm", help="chains to compare: ddim (50 steps), ddpm (all T)")
    p.add_argument("--cpu-runtime", default="auto", choices=CPU_RUNTIMES)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = load_pretrained(args.model)
    cfg = loaded.config
    shape = (args.batch, cfg.channels, cfg.image_size, cfg.image_size)
    cpu = detect()
    T = loaded.schedule.timesteps
    ref = prepare_cpu(loaded.model, "fp32", cpu)
    fast = prepare_cpu(loaded.model, args.precision, cpu, runtime=args.cpu_runtime)
    print(f"CPU: {cpu.describe()}, {args.threads} threads; {args.model}, batch {args.batch}, seed {args.seed}")
    print(f"{args.precision} path: {fast.runtime.describe()}\n")

    chains = {}
    runs = [name for name in ("ddim", "ddpm") if name in args.samplers.split(",")]
    for sampler in runs:
        for name, model in (("fp32", ref), (args.precision, fast)):
            chains[sampler, name], seconds = run(model, loaded.schedule, shape, args.seed, sampler)
            print(f"{sampler} {name}: {seconds:.1f} s", flush=True)

    errors = []  # raw network outputs: a step's pred_eps is re-derived from the clipped x̂₀
    with torch.inference_mode():
        for step in (step for sampler in runs for step in chains[sampler, "fp32"]):
            tt = torch.full((args.batch,), step.t, dtype=torch.long)
            a, b = ref(step.x_t, tt), fast(step.x_t, tt)
            errors.append((float((b - a).norm() / a.norm()), step.t))
    values = sorted(e for e, _ in errors)
    worst = max(errors)
    print(f"\nrelative error of ε̂ over the {len(values)} timesteps of the fp32 chains: "
          f"median {values[len(values) // 2]:.4%}, 99th percentile {values[int(0.99 * (len(values) - 1))]:.4%}, "
          f"max {worst[0]:.4%} (t = {worst[1]})")
    for sampler, label in (("ddim", "DDIM-50"), ("ddpm", f"DDPM-{T}")):
        if sampler not in runs:
            continue
        a = to_uint8(chains[sampler, "fp32"][-1].x_prev)
        b = to_uint8(chains[sampler, args.precision][-1].x_prev)
        print(f"PSNR of final {label} images, {args.precision} vs fp32 (same seed): {psnr(b, a):.1f} dB")
    if "ddim" in runs:
        other, _ = run(ref, loaded.schedule, shape, args.seed + 1, "ddim")
        print(f"for scale, DDIM-50 fp32 seed {args.seed} vs seed {args.seed + 1}: "
              f"{psnr(to_uint8(other[-1].x_prev), to_uint8(chains['ddim', 'fp32'][-1].x_prev)):.1f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
