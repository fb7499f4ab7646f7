"""How the app's CPU network holds up while other programs use the cores: ms per step at each batch size with 0, 1
and 2 competing busy processes, and the same through the real server (DDIM-50, one and four images).

    taskset -c 0,1 python benchmarks/cpu_busy.py [--weights weights] [--model faces] [--threads 2] [--busy 0,1,2]
                                                 [--batches 1,2,3,4] [--repeats 15] [--server] [--server-repeats 2]
                                                 [--cpu-runtime auto]

A busy process is ``python -c`` spinning in a loop for at most ``--busy-seconds``; it inherits this process's CPU
affinity, so under ``taskset`` it competes for the same cores (a free Space's shared vCPUs, a laptop at work). Each
level starts its busy processes, waits a second, measures, and ends them. This process sets OMP_WAIT_POLICY as
app.py does before torch loads.

Prints the CPU (model and ISA) and the network (``prepare_cpu``'s description), then a Markdown table per part: per
busy level the load average when it ended, the median ms per step at each batch (``--repeats`` calls after a warm-up
call), the largest ratio of per-image time at batch n+1 to batch n (a cliff where it is over 1.2), and each figure's
ratio to the quiet row (targets: one busy process at most 2×, two at most 3×). ``--server`` starts ``python app.py``
(with ``--preview-interval -1``) and times DDIM-50 of one and of four images submitted with gradio_client, the
median of ``--server-repeats`` runs per level.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from ddpm_app.runtime.cpu import tune_malloc, wait_passively

WAITING = wait_passively()  # before torch loads OpenMP, as app.py does

import torch  # noqa: E402

from ddpm_app.diffusion.samplers import SamplerSettings
from ddpm_app.io.loading import load_pretrained
from ddpm_app.runtime.inference import CPU_RUNTIMES, example_input, median_ms, prepare_cpu
from ddpm_app.runtime.isa import detect

ROOT = Path(__file__).resolve().parents[1]


def start_busy(count: int, seconds: float) -> list[subprocess.Popen]:
    """``count`` processes that each spin on a core for at most ``seconds``."""
    code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]


def stop(processes: list[subprocess.Popen]) -> None:
    for proc in processes:
        proc.kill()
        proc.wait()


def under_load(count: int, seconds: float, measure):
    """``measure()`` while ``count`` busy processes run, and the 1-minute load average when it is done."""
    busy = start_busy(count, seconds)
    try:
        time.sleep(1.0 if count else 0.0)
        result = measure()
        return result, os.getloadavg()[0]
    finally:
        stop(busy)


def largest_step_up(ms: dict[int, float]) -> float:
    """max over n of (ms per image at batch n+1) / (ms per image at batch n), over the batches measured."""
    batches = sorted(ms)
    return max(((ms[b] / b) / (ms[a] / a) for a, b in zip(batches, batches[1:])), default=1.0)


def table(title: str, columns: list[str], rows: dict[int, tuple[dict, float]], unit: str, cliff: bool) -> list[str]:
    """A Markdown table: one row per busy level, its figures and their ratio to the quiet row."""
    quiet = rows.get(0, (None,))[0]
    head = ["busy processes", "load (1 min)"] + [f"{c} ({unit})" for c in columns]
    head += ["largest per-image step-up"] * cliff + ["× quiet"] * (quiet is not None)
    lines = [f"\n{title}\n", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for count, (figures, load) in rows.items():
        cells = [str(count), f"{load:.1f}"] + [f"{figures[c]:.1f}" for c in figures]
        cells += [f"{largest_step_up(figures):.2f}"] * cliff
        if quiet is not None:
            cells.append(" / ".join(f"{figures[c] / quiet[c]:.1f}" for c in figures))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def network_part(args, levels: list[int]) -> list[str]:
    loaded = load_pretrained(Path(args.weights) / args.model)
    net = prepare_cpu(loaded.model, "auto", runtime=args.cpu_runtime, threads=args.threads)
    batches = [int(b) for b in args.batches.split(",")]

    def measure() -> dict[int, float]:
        return {b: median_ms({"step": net}, example_input(loaded.model, b), rounds=args.repeats)["step"]
                for b in batches}

    rows = {count: under_load(count, args.busy_seconds, measure) for count in levels}
    return [f"network: {net.runtime.describe()}"] + table(
        f"{args.model}: ms per step (median of {args.repeats}) at batch {', '.join(map(str, batches))}",
        [f"batch {b}" for b in batches], rows, "ms", cliff=True)


def server_part(args, levels: list[int]) -> list[str]:
    from app_stream import start_server, time_server
    from gradio_client import Client

    log = Path(tempfile.mkdtemp(prefix="cpu_busy-")) / "app.log"
    server_args = argparse.Namespace(weights=args.weights, model=args.model, threads=args.threads,
                                     cpu_runtime=args.cpu_runtime, device="cpu", precision=None)
    proc, url = start_server(ROOT / "app.py", server_args, None, log)
    try:
        client = Client(url, verbose=False, download_files=False)
        settings = SamplerSettings()  # DDIM-50, η = 0: the app's default
        time_server(client, proc.pid, SamplerSettings("ddim", 2, 0.0, True), 4)  # warm-up

        def measure() -> dict[int, float]:
            return {b: statistics.median(time_server(client, proc.pid, settings, b).total
                                         for _ in range(args.server_repeats)) for b in (1, 4)}

        rows = {count: under_load(count, args.busy_seconds, measure) for count in levels}
    finally:
        proc.kill()
        proc.wait()
    runs = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("sampling on ")]
    return [f"server: {runs[-1] if runs else '(no sampling line)'}"] + table(
        f"{args.model} through python app.py: DDIM-{settings.steps}, seconds per run (median of "
        f"{args.server_repeats})", ["1 image", "4 images"], rows, "s", cliff=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default="weights")
    p.add_argument("--model", default="faces")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--busy", default="0,1,2", help="numbers of busy processes, comma-separated (default: 0,1,2)")
    p.add_argument("--busy-seconds", type=float, default=300, help="the longest a busy process runs")
    p.add_argument("--batches", default="1,2,3,4")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--cpu-runtime", default="auto", choices=CPU_RUNTIMES)
    p.add_argument("--server", action="store_true", help="also time DDIM-50 through python app.py")
    p.add_argument("--server-repeats", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tune_malloc()
    levels = [int(n) for n in args.busy.split(",")]
    cpu = detect()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"CPU: {cpu.describe()}; {affinity} cores for this process, {args.threads} threads; torch "
          f"{torch.__version__}; {WAITING}; load average at start {os.getloadavg()[0]:.1f}", flush=True)
    for line in network_part(args, levels):
        print(line, flush=True)
    if args.server:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        for line in server_part(args, levels):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
