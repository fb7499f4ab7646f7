"""Time to a useful model in the 2-D lab: train the lab's default MLP on a data set with the lab's defaults and
print, every few hundred steps, the training time and the energy distance of DDPM samples to the data, beside
N(0, I)'s and a held-out sample's (docs/lab.md keeps the figures).

    python benchmarks/toy_lab.py [--data "two moons"] [--steps 4000] [--every 500] [--threads 2]

Sampling time is not counted as training time. "useful" is :attr:`ddpm_app.views.lab.Quality.useful`.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddpm_app.diffusion.samplers import ddpm, final
from ddpm_app.diffusion.schedule import Schedule
from ddpm_app.lab import DATASETS, Trainer, build_model, dataset
from ddpm_app.views.lab import LabSettings, quality


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        return (f"{fields['Model name'].strip()} (family {fields['CPU family'].strip()}, model "
                f"{fields['Model'].strip()}), {os.cpu_count()} CPUs")
    except (OSError, KeyError):
        return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="two moons", choices=DATASETS)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = LabSettings()
    data = dataset(args.data, args.points, torch.Generator().manual_seed(0))
    schedule = Schedule(settings.schedule)
    trainer = Trainer(build_model(settings.network, 0), schedule, data.train, settings.training)
    print(f"CPU: {cpu_name()}; torch threads {args.threads}; load average at start "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"data: {data.name}, {len(data.train)} points; {settings.describe()}; batch {settings.training.batch_size}")
    print(f"{'steps':>6} {'train s':>8} {'loss':>7} {'ED samples':>11} {'ED N(0,I)':>10} {'ED held-out':>12} useful")
    seconds, first_useful = 0.0, None
    while trainer.step < args.steps:
        start = time.perf_counter()
        losses = [r.loss for r in trainer.run(args.every)]
        seconds += time.perf_counter() - start
        samples = final(ddpm(trainer.model, schedule, (args.samples, 2), generator=torch.Generator().manual_seed(1),
                             clip_x0=True))
        q = quality(samples, data)
        first_useful = first_useful or (q.useful and (trainer.step, seconds))
        print(f"{trainer.step:6d} {seconds:8.1f} {sum(losses[-100:]) / 100:7.4f} {q.model:11.4f} {q.noise:10.4f} "
              f"{q.heldout:12.4f} {'yes' if q.useful else 'no'}")
    print(f"load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("first useful: " + (f"after {first_useful[0]} steps, {first_useful[1]:.1f} s of training" if first_useful
                              else "not within the steps run"))


if __name__ == "__main__":
    main()
