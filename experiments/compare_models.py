"""Two model folders compared on the same held-out images, the same timesteps and the same noise.

A paired comparison: both models see identical (x₀, t, ε), so the difference of their figures has far less noise
than either figure alone, and a few minutes of CPU are enough to tell which model is better. Printed:
- the held-out ε-MSE on the trainer's fixed set (``--eval-every``'s: 1,000 test images, t and ε from seed 0);
- the variational bound in bits/dim on ``--bound-images`` test images, estimated from ``--bound-timesteps``
  timesteps (the library's stratified estimate: the first steps one by one, then geometrically growing strata),
  with the per-image paired difference and its standard error.

    python experiments/compare_models.py weights/faces runs/faces-more/export --data utkface-64.zip
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ddpm_app.diffusion.likelihood import bound_timesteps, variational_bound
from ddpm_app.io.data import load_pack
from ddpm_app.io.loading import load_local
from ddpm_app.metrics.eps_mse import held_out_mse, held_out_set
from ddpm_app.runtime.inference import prepare
from ddpm_app.runtime.isa import cpu_model_name


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="model folder A (e.g. the shipped one)")
    p.add_argument("b", help="model folder B (e.g. a continued run's export)")
    p.add_argument("--data", required=True, help="data pack with a test/ folder")
    p.add_argument("--split", default="test")
    p.add_argument("--mse-images", type=int, default=1000)
    p.add_argument("--bound-images", type=int, default=128)
    p.add_argument("--bound-timesteps", type=int, default=60, help="timesteps per image for the bound (≥ T: exact)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    models = {name: load_local(name, "cpu") for name in (args.a, args.b)}
    first = next(iter(models.values()))
    if any(m.config.schedule != first.config.schedule for m in models.values()):
        print("error: the two models use different noise schedules; a paired comparison needs the same one",
              file=sys.stderr)
        return 2
    pack = load_pack(args.data, first.config.image_size, split=args.split, limit=max(args.mse_images, args.bound_images))
    schedule = first.schedule
    held = held_out_set(pack.images[:args.mse_images], schedule.timesteps)
    ts, weights = bound_timesteps(schedule.timesteps, args.bound_timesteps, torch.Generator().manual_seed(args.seed))
    print(f"CPU: {cpu_model_name()}, {torch.get_num_threads()} threads")

    totals = {}
    for name, loaded in models.items():
        start = time.perf_counter()
        network = prepare(loaded.model, "cpu", compile=False, precision="fp32")
        mse = held_out_mse(network, schedule, held, batch_size=args.batch_size)
        bound = variational_bound(network, schedule, pack.images[:args.bound_images], timesteps=ts, weights=weights,
                                  batch_size=args.batch_size, generator=torch.Generator().manual_seed(args.seed),
                                  clip_x0=True)
        totals[name] = bound.total
        print(f"{name}: held-out ε-MSE {mse:.5f} ({len(held.t)} images); bits/dim {float(bound.total.mean()):.4f} "
              f"(decoder {float(bound.decoder.mean()):.4f}, diffusion {float(bound.diffusion.mean()):.4f}) "
              f"on {args.bound_images} images [{time.perf_counter() - start:.0f} s]")
    diff = totals[args.b] - totals[args.a]
    stderr = float(diff.std() / math.sqrt(len(diff)))
    print(f"B − A bits/dim: {float(diff.mean()):+.4f} ± {stderr:.4f} (paired, same images, t and ε)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
