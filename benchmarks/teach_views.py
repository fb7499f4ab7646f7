"""How fast the teaching views answer on this machine, with the shipped faces model (in-process handlers).

    python benchmarks/teach_views.py [--weights weights] [--model faces] [--repeats 5] [--threads N]

- training view: one update after moving t (Algorithm 1's pictures and numbers, the loss-curve plot marked at t);
- loss against t: the photo's curve (25 timesteps × 3 ε, one network call), computed afresh and plotted;
- likelihood: the bits/dim estimate (50 timesteps in 5 calls of 10), its first progress update (the 0-of-50 bar,
  and the first one with work done) and the whole estimate with its plot.

The teaching views measure with the fp32 network whatever precision sampling chose. Prints the CPU, the load
average before and after (the figures are only as good as the machine is quiet) and the median and range of
``--repeats`` runs of each.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from ddpm_app.runtime.isa import cpu_model_name
from ddpm_app.serve.library import ModelLibrary
from ddpm_app.ui import page as ui
from ddpm_app.ui.kit import ASSETS
from ddpm_app.views.state import UserState

PHOTO = Path(ASSETS) / "portrait.png"


def summary(name: str, seconds: list[float]) -> str:
    return (f"| {name} | {statistics.median(seconds):.2f} s | {min(seconds):.2f}–{max(seconds):.2f} s | "
            f"{len(seconds)} |")


def load_average() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return " / ".join(f"{x:.1f}" for x in load)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default="weights")
    p.add_argument("--model", default="faces")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    library = ModelLibrary(args.weights, "cpu", default=args.model)
    teach = ui.Handlers(library, preview_interval=0.2)
    photo = str(PHOTO)
    before = load_average()
    served = library.get(args.model)

    user = UserState()
    teach.train_step(photo, 100, 0, user)  # warm up: load the model, draw the held-out plot
    list(teach.loss_curve(photo, 100, user))

    moves = []
    for i in range(args.repeats):
        start = time.perf_counter()
        teach.train_step(photo, (50 + 173 * i) % served.timesteps, 0, user)
        moves.append(time.perf_counter() - start)

    curves = []
    for _ in range(args.repeats):
        fresh = UserState()
        start = time.perf_counter()
        list(teach.loss_curve(photo, 100, fresh))
        curves.append(time.perf_counter() - start)

    first_bar, first_work, totals = [], [], []
    for i in range(args.repeats):
        start = time.perf_counter()
        bar = work = None
        for status, *_ in teach.likelihood(photo, False, i, True, UserState()):
            now = time.perf_counter() - start
            done = re.search(r"value='(\d+)'", status)
            bar = bar if bar is not None else now
            if work is None and done and int(done.group(1)) > 0:
                work = now
        totals.append(time.perf_counter() - start)
        first_bar.append(bar)
        first_work.append(work if work is not None else totals[-1])

    print(f"CPU: {cpu_model_name()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; model "
          f"{args.model}, sampling in {served.eps_model.precision}, measuring in {served.eps_model.fp32().precision}\n"
          f"load average (1 / 5 / 15 min) before {before}, after {load_average()}\n")
    print("| measure | median | range | runs |\n|---|---|---|---|")
    print(summary("training view: update after moving t", moves))
    print(summary("loss against t (25 t × 3 ε)", curves))
    print(summary("likelihood estimate (50 t): first progress bar", first_bar))
    print(summary("likelihood estimate: first progress with work done", first_work))
    print(summary("likelihood estimate: whole", totals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
