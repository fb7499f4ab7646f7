"""The app under load: concurrent gradio_client users, each generating with its own seed.

    python benchmarks/app_load.py [--url http://127.0.0.1:7860/] [--weights weights] [--users 8]
                                  [--sampler ddim] [--steps 10] [--batch 1] [--burst 24] [--queue-size 16]

Without ``--url`` it starts ``python app.py`` (``--weights``, ``--queue-size``) on a free localhost port in its
own process and stops it at the end; with ``--url`` it drives an app that is already running (then the server's
memory and CPU are not measured and ``--queue-size`` only labels the output).

1. solo: each seed run alone, one after another: the reference images and the latency of an unloaded app;
2. concurrent: ``--users`` clients submit at once; every result must equal the same seed run alone;
   throughput (runs/s) and p50/p95 latency from submit to the final images;
3. burst: ``--burst`` clients submit at once, more than the queue holds: how many are answered "busy"
   (gradio_client's QueueError "Queue is full"), how many finish, and the server's peak memory meanwhile;
4. cancel: a long DDPM run is cancelled after its first preview; then a short run must start at once, and
   (when this script started the server) the server's CPU time must stop growing.

Prints one Markdown table per phase.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "app.py", "--weights", args.weights, "--port", str(port),
                             "--queue-size", str(args.queue_size)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"app.py exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    sys.exit("app.py did not start")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client(url: str):
    from gradio_client import Client
    return Client(url, verbose=False)


def generate(c, args: argparse.Namespace, seed: int) -> tuple[float, np.ndarray | str]:
    """(seconds from submit to the final images, the images as an array — or the error text)."""
    started = time.perf_counter()
    try:
        out = c.predict(args.sampler, args.steps, 0.0, seed, args.batch, True, False, api_name="/generate")
    except Exception as e:  # QueueError ("Queue is full") or an AppError
        return time.perf_counter() - started, f"{type(e).__name__}: {e}"
    return time.perf_counter() - started, np.asarray(Image.open(out[0]))


def concurrent(url: str, args: argparse.Namespace, seeds: list[int]) -> tuple[float, list]:
    clients = [client(url) for _ in seeds]
    barrier = threading.Barrier(len(seeds))

    def one(i: int):
        barrier.wait()
        return generate(clients[i], args, seeds[i])

    started = time.perf_counter()
    with ThreadPoolExecutor(len(seeds)) as pool:
        results = list(pool.map(one, range(len(seeds))))
    return time.perf_counter() - started, results


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=None, help="a running app (default: start app.py here)")
    p.add_argument("--weights", default="weights")
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"])
    p.add_argument("--steps", type=int, default=10, help="DDIM steps")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--burst", type=int, default=24, help="clients submitting at once in the busy phase")
    p.add_argument("--queue-size", type=int, default=16, help="the app's queue size (app.py --queue-size)")
    args = p.parse_args(argv)

    proc = None
    url = args.url
    if url is None:
        proc, url = start_app(args)
    pid = proc.pid if proc else None
    try:
        seeds = [1000 + i for i in range(args.users)]
        c = client(url)
        generate(c, args, 0)  # warm-up: first-request costs (model compile paths, caches)
        solo = {s: generate(c, args, s) for s in seeds}
        solo_times = [t for t, _ in solo.values()]

        wall, results = concurrent(url, args, seeds)
        ok = [t for (t, img), s in zip(results, seeds) if isinstance(img, np.ndarray)]
        same = sum(isinstance(img, np.ndarray) and np.array_equal(img, solo[s][1])
                   for (_, img), s in zip(results, seeds))

        print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
              f"{args.sampler.upper()}{'-' + str(args.steps) if args.sampler == 'ddim' else ''}, "
              f"batch {args.batch}, queue size {args.queue_size}\n")
        print("| phase | runs | wall (s) | runs/s | p50 latency (s) | p95 latency (s) | results equal to solo |")
        print("|---|---|---|---|---|---|---|")
        print(f"| solo, one at a time | {len(seeds)} | {sum(solo_times):.2f} | {len(seeds) / sum(solo_times):.2f} | "
              f"{percentile(solo_times, 50):.2f} | {percentile(solo_times, 95):.2f} | (reference) |")
        print(f"| {args.users} users at once | {len(ok)} | {wall:.2f} | {len(ok) / wall:.2f} | "
              f"{percentile(ok, 50):.2f} | {percentile(ok, 95):.2f} | {same}/{len(seeds)} |")

        # burst: more requests than the queue holds
        peak = [rss_mib(pid) if pid else float("nan")]
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                peak.append(rss_mib(pid))
                time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        if pid:
            watcher.start()
        burst_seeds = [2000 + i for i in range(args.burst)]
        burst_wall, burst = concurrent(url, args, burst_seeds)
        stop.set()
        busy = [r for _, r in burst if isinstance(r, str) and "Queue is full" in r]
        other = [r for _, r in burst if isinstance(r, str) and "Queue is full" not in r]
        done = [t for t, r in burst if isinstance(r, np.ndarray)]
        print("\n| burst | submitted | finished | answered busy | other errors | wall (s) | p95 latency (s) | "
              "server RSS before → peak (MiB) |")
        print("|---|---|---|---|---|---|---|---|")
        print(f"| {args.burst} at once | {args.burst} | {len(done)} | {len(busy)} | {len(other)} | {burst_wall:.2f} | "
              f"{percentile(done, 95):.2f} | {peak[0]:.0f} → {max(peak):.0f} |")
        if busy:
            print(f"\nThe busy answer: {busy[0]!r}")
        if other:
            print(f"Other errors: {other[:3]!r}")

        # cancel: a long run stopped after its first preview frees the worker
        long = c.submit("ddpm", 1, 0.0, 7, 4, True, False, api_name="/generate")
        deadline = time.monotonic() + 120
        while not long.outputs() and time.monotonic() < deadline:
            time.sleep(0.02)
        long.cancel()
        after, _ = generate(client(url), args, 1)
        idle = None
        if pid:
            time.sleep(0.5)
            before = cpu_seconds(pid)
            time.sleep(2.0)
            idle = (cpu_seconds(pid) - before) / 2.0
        print("\n| cancel | next short run after cancel (s) | solo p50 (s) | server CPU after (cores busy) |")
        print("|---|---|---|---|")
        print(f"| DDPM over all T, batch 4, cancelled at its first preview | {after:.2f} | "
              f"{percentile(solo_times, 50):.2f} | {'n/a' if idle is None else f'{idle:.2f}'} |")
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
