"""Another user's run while a model loads: the latency of DDIM-3 (one image) for a user whose model is in memory,
alone and while a second model loads for someone else.

    python benchmarks/load_while_sampling.py [--weights weights] [--running faces] [--loading seed-faces]
                                             [--runs 10] [--cpu-runtime auto]

Runs the app's handlers in this process, as ``app.py`` would (threads as ``app.py`` sets them, the CPU runtime
given); each load builds its networks as at a first start. Prints the CPU, the load average and a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddpm_app.runtime.cpu import cpu_budget
from ddpm_app.serve.library import ModelLibrary
from ddpm_app.ui import page as ui
from ddpm_app.views.state import UserState


def ddim3(handlers: ui.Handlers, user: UserState) -> float:
    """Seconds for one DDIM-3 run of one image, from the call to the final images."""
    start = time.perf_counter()
    for _ in handlers.generate("ddim", 3, 0.0, 1, 1, True, False, user):
        pass
    return time.perf_counter() - start


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default="weights")
    p.add_argument("--running", default="faces", help="the other user's model, in memory")
    p.add_argument("--loading", default="seed-faces", help="the model that loads meanwhile")
    p.add_argument("--runs", type=int, default=10, help="DDIM-3 runs alone")
    p.add_argument("--cpu-runtime", default="auto")
    args = p.parse_args()
    threads = cpu_budget().threads
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as cache:
        library = ModelLibrary(args.weights, "cpu", default=args.running, precision="auto",
                               cpu_runtime=args.cpu_runtime, cpu_threads=threads)
        handlers = ui.Handlers(library, preview_interval=None, export_dir=Path(cache) / "exports")
        other = UserState()
        handlers.select_model(args.running, other)
        ddim3(handlers, other)  # warm up
        alone = [ddim3(handlers, other) for _ in range(args.runs)]

        loaded = threading.Event()
        started = time.perf_counter()
        load_seconds: list[float] = []

        def load() -> None:
            handlers.select_model(args.loading, UserState())
            load_seconds.append(time.perf_counter() - started)
            loaded.set()

        threading.Thread(target=load).start()
        during = []
        while not loaded.is_set():
            during.append(ddim3(handlers, other))
        print(f"CPU: {cpu_name()}, {os.cpu_count()} cores, torch threads {threads}; load average "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end; --cpu-runtime {args.cpu_runtime}")
        print(f"loading {args.loading!r} took {load_seconds[0]:.1f} s; the other user ran DDIM-3 {len(during)} times "
              "meanwhile\n")
        print("| DDIM-3, 1 image | runs | median | min | max |\n|---|---|---|---|---|")
        for label, times in (("alone", alone), (f"while {args.loading} loads", during)):
            print(f"| {label} | {len(times)} | {statistics.median(times):.2f} s | {min(times):.2f} s | "
                  f"{max(times):.2f} s |")


if __name__ == "__main__":
    main()
