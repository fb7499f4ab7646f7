"""What streaming previews cost in the app: time to the first preview and total time, streaming on vs off.

    python benchmarks/app_stream.py [--weights weights] [--model NAME] [--batch 4] [--repeats 2]
                                    [--interval 0.15] [--samplers ddpm,ddim] [--device cpu]

For DDPM over all T steps and DDIM-50, each measured three ways:

- ``sampler``: the bare sampler generator drained on the library's device thread, no pictures and no server:
  the floor (its "first preview" is when the first step was done);
- ``handler``: the app's generate handler iterated in-process (stores every step, makes the preview pictures);
- ``server``: ``python app.py`` started on localhost in its own process and driven with gradio_client, timed
  from submit to the first streamed output and to the last: what a browser sees, including the queue, PNG
  encoding and transport.

"off" sends only the final images (``--preview-interval -1`` in app.py); "on" sends a preview at most every
``--interval`` seconds plus the last step. Prints a Markdown table: the best of ``--repeats`` runs of each
variant, the variants interleaved so that a busy spell on a shared machine does not favour one of them.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from ddpm_app import ui  # noqa: E402
from ddpm_app.app import DEFAULT_PREVIEW_INTERVAL, ModelLibrary, UserState  # noqa: E402
from ddpm_app.inference import resolve_device  # noqa: E402
from ddpm_app.samplers import DEFAULT_DDIM_STEPS, SamplerSettings  # noqa: E402

SEED = 1234
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_sampler(library: ModelLibrary, settings: SamplerSettings, batch: int) -> tuple[float, float]:
    def drain() -> tuple[float, float]:
        start = time.perf_counter()
        first = None
        for _ in library.get().sample(settings, batch, SEED):
            first = first or time.perf_counter() - start
        return first, time.perf_counter() - start
    return library.worker.run(drain)  # on the thread the app samples on


def time_handler(library: ModelLibrary, interval: float | None, settings: SamplerSettings,
                 batch: int) -> tuple[float, float]:
    handlers = ui.Handlers(library, preview_interval=interval)
    start = time.perf_counter()
    first = None
    for _ in handlers.generate(settings.sampler, settings.steps, settings.eta, SEED, batch, True, False,
                               UserState()):
        first = first or time.perf_counter() - start
    return first, time.perf_counter() - start


def start_server(args, interval: float | None) -> tuple[subprocess.Popen, str]:
    """``python app.py`` in its own process (as users run it), and its URL once it answers."""
    import httpx

    port = free_port()
    cmd = [sys.executable, str(ROOT / "app.py"), "--weights", args.weights, "--port", str(port),
           "--preview-interval", str(-1 if interval is None else interval)]
    if args.model:
        cmd += ["--model", args.model]
    if args.device:
        cmd += ["--device", args.device]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, GRADIO_ANALYTICS_ENABLED="False"))
    url = f"http://127.0.0.1:{port}/"
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("app.py did not start")


def time_server(client, settings: SamplerSettings, batch: int) -> tuple[float, float]:
    start = time.perf_counter()
    job = client.submit(settings.sampler, settings.steps, settings.eta, SEED, batch, True, False,
                        api_name="/generate")
    first = None
    for _ in job:  # blocks until each streamed output arrives
        first = first or time.perf_counter() - start
    job.result()
    total = time.perf_counter() - start
    return first or total, total


def best(runs: list[tuple[float, float]]) -> tuple[float, float]:
    """The fastest of the repeats (first preview and total separately): on a shared machine, the least disturbed."""
    return min(r[0] for r in runs), min(r[1] for r in runs)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=os.environ.get("DDPM_WEIGHTS_DIR", "weights"))
    p.add_argument("--model", default=None)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--interval", type=float, default=DEFAULT_PREVIEW_INTERVAL)
    p.add_argument("--samplers", default="ddpm,ddim", help=f"comma-separated: ddpm (all T steps), ddim ({DEFAULT_DDIM_STEPS} steps)")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores, as app.py)")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so the servers below are stopped too

    from gradio_client import Client

    device = resolve_device(args.device or "auto")
    if device.type == "cpu":
        torch.set_num_threads(args.threads or os.cpu_count() or 1)  # as app.py does
    library = ModelLibrary(args.weights, device, default=args.model)
    served = library.get()
    T = served.timesteps
    cases = {"ddpm": SamplerSettings("ddpm", T, 1.0, True), "ddim": SamplerSettings()}
    cases = {k: cases[k] for k in args.samplers.split(",")}

    servers = {}
    for mode, interval in (("off", None), ("on", args.interval)):
        proc, url = start_server(args, interval)
        # the browser is on another machine: the client here does not fetch the image files, so that its work
        # does not compete with the server's for this machine's cores
        servers[mode] = (proc, Client(url, verbose=False, download_files=False))

    print(f"model {served.name}: {served.config.arch}, {served.loaded.num_parameters / 1e6:.1f} M parameters, "
          f"{served.config.image_size}×{served.config.image_size}×{served.config.channels}, T = {T}; "
          f"batch {args.batch}; device {device}, {torch.get_num_threads()} torch threads, "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}); preview every "
          f"{args.interval} s when on; best of {args.repeats}, variants interleaved\n")
    print("| sampler | measured | streaming | first preview (s) | total (s) | vs sampler only |")
    print("|---|---|---|---|---|---|")
    try:
        for name, settings in cases.items():
            label = f"DDPM-{T}" if name == "ddpm" else f"DDIM-{settings.steps}"
            warm = SamplerSettings("ddim", 2, 0.0, True)
            time_sampler(library, warm, args.batch)
            for _, client in servers.values():
                time_server(client, warm, args.batch)
            # every repeat runs each variant once, interleaved, so a busy spell on the machine hits all alike
            variants = {("sampler", "—"): lambda s=settings: time_sampler(library, s, args.batch)}
            for mode, interval in (("off", None), ("on", args.interval)):
                variants["handler", mode] = lambda i=interval, s=settings: time_handler(library, i, s, args.batch)
            for mode, (_, client) in servers.items():
                variants["server", mode] = lambda c=client, s=settings: time_server(c, s, args.batch)
            runs = {key: [] for key in variants}
            for _ in range(args.repeats):
                for key, measure in variants.items():
                    runs[key].append(measure())
            rows = [(measured, mode, best(runs[measured, mode])) for measured, mode in variants]
            base = rows[0][2]
            for measured, mode, (first, total) in rows:
                print(f"| {label} | {measured} | {mode} | {first:.2f} | {total:.2f} | "
                      f"{100 * (total / base[1] - 1):+.1f} % |", flush=True)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
