"""What streaming previews cost in the app: time to the first preview and total time, streaming on vs off.

    python benchmarks/app_stream.py [--weights weights] [--model NAME] [--batch 4] [--repeats 5]
                                    [--interval 0.2] [--samplers ddpm,ddim] [--device cpu]
                                    [--precision fp32] [--cpu-runtime pytorch] [--no-handler]
                                    [--compare-app OTHER_CHECKOUT/app.py]

For DDPM over all T steps and DDIM-50, each measured three ways:

- ``sampler``: the bare sampler generator drained on the library's device thread, no pictures and no server:
  the floor (its "first preview" is when the first step was done);
- ``handler``: the app's generate handler iterated in-process (stores every step, makes the preview pictures);
- ``server``: ``python app.py`` started on localhost in its own process and driven with gradio_client, timed
  from submit to the first streamed output and to the last: what a browser sees, including the queue, the
  encoding of the pictures and transport (the client does not download the picture files).

"off" sends only the final images (``--preview-interval -1`` in app.py); "on" sends a preview at most every
``--interval`` seconds (fewer where making them would take more than the app's preview budget) plus the last
step. ``--compare-app`` also runs another checkout's app.py the same way, interleaved with this one, to compare two
versions of the server on a shared machine.

The header prints how the bare sampler and each server run the network (a server's own log line), so that a
difference between the rows is not a different network.

Prints a Markdown table per sampler: for each variant the median of ``--repeats`` runs (and the range of the
totals), the CPU seconds the process spent (the server's own process for ``server``: on a busy machine this moves
much less than wall time), and the outputs streamed. The variants are interleaved so that a busy spell hits all of
them alike, and below each table the ratio of streaming on to off within each repeat (its median and range). The
header names the CPU (model and ISA) and the load average when the runs began and ended.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, NamedTuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from ddpm_app.diffusion.samplers import DEFAULT_DDIM_STEPS, SamplerSettings
from ddpm_app.runtime.cpu import cpu_budget, tune_malloc
from ddpm_app.runtime.inference import resolve_device
from ddpm_app.runtime.isa import detect
from ddpm_app.serve.library import ModelLibrary
from ddpm_app.serve.runs import DEFAULT_PREVIEW_INTERVAL
from ddpm_app.ui import page as ui
from ddpm_app.views.state import UserState

SEED = 1234
ROOT = Path(__file__).resolve().parents[1]


class Timed(NamedTuple):
    """One run of one variant."""

    first: float  # seconds to the first streamed output
    total: float  # seconds to the last
    cpu: float  # CPU seconds the process doing the work spent meanwhile
    outputs: int  # outputs streamed (previews and the final one)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` and all its threads so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def timed(outputs, cpu: Callable[[], float]) -> Timed:
    """Drain ``outputs`` (an iterator of streamed outputs), timing the first and the last."""
    cpu_start, start = cpu(), time.perf_counter()
    first, count = None, 0
    for _ in outputs:
        first = first or time.perf_counter() - start
        count += 1
    total = time.perf_counter() - start
    return Timed(first or total, total, cpu() - cpu_start, count)


def time_sampler(library: ModelLibrary, settings: SamplerSettings, batch: int) -> Timed:
    return library.worker.run(  # on the thread the app samples on
        lambda: timed(library.get().sample(settings, batch, SEED), time.process_time))


def time_handler(library: ModelLibrary, interval: float | None, settings: SamplerSettings, batch: int) -> Timed:
    handlers = ui.Handlers(library, preview_interval=interval)
    return timed(handlers.generate(settings.sampler, settings.steps, settings.eta, SEED, batch, True, False,
                                   UserState()), time.process_time)


def start_server(app: Path, args, interval: float | None, log: Path | None = None) -> tuple[subprocess.Popen, str]:
    """``python app.py`` in its own process (as users run it), and its URL once it answers; its stderr goes to
    ``log`` (default: nowhere)."""
    import httpx

    port = free_port()
    cmd = [sys.executable, str(app), "--weights", str(Path(args.weights).resolve()), "--port", str(port),
           "--preview-interval", str(-1 if interval is None else interval)]
    for flag in ("model", "device", "threads", "precision", "cpu_runtime"):  # optional: other scripts' args too
        if getattr(args, flag, None):
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    with open(log or os.devnull, "w") as err:  # the child keeps its own copy of the file
        proc = subprocess.Popen(cmd, cwd=app.parent, stdout=subprocess.DEVNULL, stderr=err,
                                env=dict(os.environ, GRADIO_ANALYTICS_ENABLED="False"))
    url = f"http://127.0.0.1:{port}/"
    for _ in range(3000):
        if proc.poll() is not None:
            raise RuntimeError(f"{app} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{app} did not start")


def runs_on(log: Path) -> str:
    """How a server says it runs its model (its "sampling on" log line), or a note that it did not say."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("sampling on ")]
    return lines[-1].removeprefix("sampling on ") if lines else f"(no 'sampling on' line in {log})"


def network_of(runs: str) -> str:
    """The network part of a "sampling on" description (device, precision, engine), without the reasons."""
    return runs.split(" (", 1)[0]


def time_server(client, pid: int, settings: SamplerSettings, batch: int) -> Timed:
    job = client.submit(settings.sampler, settings.steps, settings.eta, SEED, batch, True, False,
                        api_name="/generate")
    run = timed(job, lambda: process_cpu_seconds(pid))  # iterating blocks until each streamed output arrives
    job.result()
    return run


def load_average() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"


def percent(x: float) -> str:
    return f"{100 * x:+.1f} %"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=os.environ.get("DDPM_WEIGHTS_DIR", "weights"))
    p.add_argument("--model", default=None)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--interval", type=float, default=DEFAULT_PREVIEW_INTERVAL)
    p.add_argument("--samplers", default="ddpm,ddim",
                   help=f"comma-separated: ddpm (all T steps), ddim ({DEFAULT_DDIM_STEPS} steps)")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores, as app.py)")
    p.add_argument("--precision", default=None,
                   help="the servers' --precision (default: theirs, auto); fp32 keeps two versions comparable")
    p.add_argument("--cpu-runtime", default=None,
                   help="the servers' --cpu-runtime (default: theirs, auto): or pytorch, openvino")
    p.add_argument("--no-handler", action="store_true", help="skip the in-process handler rows")
    p.add_argument("--compare-app", type=Path, default=None,
                   help="another checkout's app.py, served the same way and interleaved with this one")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so the servers below are stopped too

    from gradio_client import Client

    device = resolve_device(args.device or "auto")
    threads = None
    if device.type == "cpu":
        threads = args.threads or cpu_budget().threads
        torch.set_num_threads(threads)  # as app.py does
        tune_malloc()
    library = ModelLibrary(args.weights, device, default=args.model, precision=args.precision or "auto",
                           cpu_runtime=args.cpu_runtime or "auto", cpu_threads=threads)
    served = library.get()
    T = served.timesteps
    cases = {"ddpm": SamplerSettings("ddpm", T, 1.0, True), "ddim": SamplerSettings()}
    cases = {k: cases[k] for k in args.samplers.split(",")}

    apps = {"server": ROOT / "app.py"} | ({"other server": args.compare_app.resolve()} if args.compare_app else {})
    servers, logs = {}, Path(tempfile.mkdtemp(prefix="app_stream-"))
    for label, app in apps.items():
        for mode, interval in (("off", None), ("on", args.interval)):
            log = logs / f"{label.replace(' ', '-')}-{mode}.log"
            proc, url = start_server(app, args, interval, log)
            # the browser is on another machine: the client here does not fetch the image files, so that its
            # work does not compete with the server's for this machine's cores
            servers[label, mode] = (proc, Client(url, verbose=False, download_files=False))

    cpu = detect()
    print(f"model {served.name}: {served.config.arch}, {served.loaded.num_parameters / 1e6:.1f} M parameters, "
          f"{served.config.image_size}×{served.config.image_size}×{served.config.channels}, T = {T}; "
          f"batch {args.batch}; device {device}, {threads or torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"preview every {args.interval} s when on; median of {args.repeats}, variants interleaved")
    print(f"CPU: {cpu.describe()}; load average (1/5/15 min) at start: {load_average()}")
    if args.compare_app:
        print(f"other server: {args.compare_app.resolve()}")
    networks = {"sampler": served.runtime.describe()}
    networks |= {f"{label} ({mode})": runs_on(logs / f"{label.replace(' ', '-')}-{mode}.log")
                 for label, mode in servers}
    for who, runs in networks.items():
        print(f"{who} runs on {runs}")
    if len({network_of(runs) for runs in networks.values()}) > 1:
        print("note: not all rows run the same network (above): their times compare runtimes as well")
    try:
        for name, settings in cases.items():
            label = f"DDPM-{T}" if name == "ddpm" else f"DDIM-{settings.steps}"
            warm = SamplerSettings("ddim", 2, 0.0, True)
            time_sampler(library, warm, args.batch)
            for proc, client in servers.values():
                time_server(client, proc.pid, warm, args.batch)
            # every repeat runs each variant once, interleaved, so a busy spell on the machine hits all alike
            variants = {("sampler", "—"): lambda s=settings: time_sampler(library, s, args.batch)}
            if not args.no_handler:
                for mode, interval in (("off", None), ("on", args.interval)):
                    variants["handler", mode] = lambda i=interval, s=settings: time_handler(library, i, s, args.batch)
            for key, (proc, client) in servers.items():
                variants[key] = lambda c=client, pid=proc.pid, s=settings: time_server(c, pid, s, args.batch)
            runs: dict[tuple[str, str], list[Timed]] = {key: [] for key in variants}
            for _ in range(args.repeats):
                for key, measure in variants.items():
                    runs[key].append(measure())

            print(f"\n| {label} | streaming | first output (s) | total (s) | range of totals (s) | CPU s | outputs "
                  "| total vs sampler only |")
            print("|---|---|---|---|---|---|---|---|")
            base = statistics.median(r.total for r in runs["sampler", "—"])
            for (measured, mode), timings in runs.items():
                total = statistics.median(r.total for r in timings)
                totals = [r.total for r in timings]
                print(f"| {measured} | {mode} | {statistics.median(r.first for r in timings):.2f} | {total:.2f} | "
                      f"{min(totals):.2f}–{max(totals):.2f} | {statistics.median(r.cpu for r in timings):.2f} | "
                      f"{statistics.median(r.outputs for r in timings):g} | {percent(total / base - 1)} |", flush=True)
            # on a shared machine a run next to another is the fairest comparison: the ratio within each repeat
            print()
            for measured in [m for m in ("handler", *apps) if (m, "on") in runs]:
                for what in ("total", "cpu"):
                    ratios = [getattr(on, what) / getattr(off, what) - 1
                              for on, off in zip(runs[measured, "on"], runs[measured, "off"])]
                    print(f"{label}, {measured}, streaming on against off within each repeat, "
                          f"{'wall time' if what == 'total' else 'CPU time'}: median {percent(statistics.median(ratios))} "
                          f"(from {percent(min(ratios))} to {percent(max(ratios))})")
            print(f"load average at end: {load_average()}", flush=True)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
