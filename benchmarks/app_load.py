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
   (when this script started the server) the server's CPU time must stop growing;
5. come and go (``--phases memory``): ``--visitors`` clients come, ``--visitors-at-once`` at a time, each runs
   DDIM-``--visitor-steps`` × 4 images and leaves (closes its client); the server's memory before, at the peak,
   when the last has left and ``--linger`` seconds later;
6. exports (``--phases exports``): ``--failed-exports`` exports with nothing to export, then ``--good-exports``
   real ones (GIF, PNG and MP4 in turn); the size and file count of the app's export folder and of Gradio's
   file cache afterwards;
7. refused bodies (``--phases refused``): ``--refused`` API calls each carrying a photo as a base64 ``data:`` URL of
   ``--refused-mb`` MB, over the upload limit (over the server's body cap too, so answered 413 before being read),
   then as many of 20.5 MB (under the body cap, refused by the app's size check); the server's memory meanwhile,
   just after and ``--settle`` seconds later;
8. loss curve (``--phases curve``): the first ``/loss_curve`` of the server (run this phase first, on a fresh
   server); its memory before, at the peak, just after and ``--settle`` seconds later;
9. large inputs (``--phases inputs``): ``--visitors`` clients come, ``--visitors-at-once`` at a time, each sends
   one value of ``--input-mb`` MB (``/show_run``'s choice of run, refused with a message: Gradio records the value
   in the session before the app sees it) and leaves; the server's memory as in phase 5.

Phases 5, 7, 8 and 9 also give the server's memory just after it started ("fresh start"). Phases 5 to 9 need the
server started here (``--url`` not given); it then runs with its own temporary folder (TMPDIR and GRADIO_TEMP_DIR),
so its files can be counted. The phases run in the order curve, refused, memory, inputs, exports, load. Prints one
Markdown table per phase.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import socket
import subprocess
import sys
import tempfile
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


def start_app(args: argparse.Namespace, temp: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", TMPDIR=str(temp),
               GRADIO_TEMP_DIR=str(temp / "gradio"))
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


class PeakMemory:
    """The process's RSS, sampled every 50 ms from a thread while the block runs: ``.before`` and ``.peak``."""

    def __init__(self, pid: int):
        self.pid, self.before, self.peak = pid, rss_mib(pid), rss_mib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_mib(self.pid))

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def folder_size(folder: Path) -> tuple[float, int]:
    """(MiB, number of files) under ``folder``."""
    files = [f for f in folder.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files) / 2**20, len(files)


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


def come_and_go(url: str, pid: int, fresh: float, args: argparse.Namespace) -> None:
    """Phase 5: users come, each runs DDIM × 4 images and leaves; the server's memory meanwhile and after."""
    def visit(i: int) -> str:
        c = client(url)
        try:
            return c.predict("ddim", args.visitor_steps, 0.0, 3000 + i, 4, True, False, api_name="/generate")[3]
        except Exception as e:
            return f"{type(e).__name__}: {e}"
        finally:
            c.close()  # the user leaves: its heartbeat connection closes

    warm = client(url)
    warm.predict("ddim", args.visitor_steps, 0.0, 1, 4, True, False, api_name="/generate")
    warm.close()
    time.sleep(5)
    with PeakMemory(pid) as memory:
        with ThreadPoolExecutor(args.visitors_at_once) as pool:
            answers = list(pool.map(visit, range(args.visitors)))
    left = rss_mib(pid)
    done = sum("Done" in a for a in answers)
    print("\n" + MEMORY_HEADER.format(settle=args.linger))
    print(memory_row(f"{args.visitors} users, {args.visitors_at_once} at a time, DDIM-{args.visitor_steps} × 4 images "
                     f"each ({done} finished); before = after a first run", fresh, memory, left,
                     settled_rss(pid, args.linger)))
    errors = [a for a in answers if "Done" not in a]
    if errors:
        print(f"\nErrors: {errors[:3]!r}")


def large_inputs(url: str, pid: int, fresh: float, args: argparse.Namespace) -> None:
    """Phase 9: users come, each sends one large value and leaves; what the server keeps of it."""
    value = "x" * int(args.input_mb * 2**20)

    def visit(i: int) -> str:
        c = client(url)
        try:
            c.predict(value, api_name="/show_run")
            return "answered"
        except Exception as e:
            return "refused" if "must be one of" in str(e) else f"{type(e).__name__}: {str(e)[:80]}"
        finally:
            c.close()  # the user leaves: its heartbeat connection closes

    with PeakMemory(pid) as memory:
        with ThreadPoolExecutor(args.visitors_at_once) as pool:
            answers = list(pool.map(visit, range(args.visitors)))
    left = rss_mib(pid)
    kinds = ", ".join(f"{answers.count(a)}× {a}" for a in sorted(set(answers)))
    print("\n" + MEMORY_HEADER.format(settle=args.linger))
    print(memory_row(f"{args.visitors} users, {args.visitors_at_once} at a time, each sending {args.input_mb:g} MB as "
                     f"/show_run's run ({kinds})", fresh, memory, left, settled_rss(pid, args.linger)))


def settled_rss(pid: int, seconds: float) -> float:
    """The server's RSS ``seconds`` from now."""
    time.sleep(seconds)
    return rss_mib(pid)


def memory_row(label: str, fresh: float, memory: PeakMemory, after: float, later: float) -> str:
    return (f"| {label} | {fresh:.0f} | {memory.before:.0f} | {memory.peak:.0f} | {after:.0f} | {later:.0f} | "
            f"{later - fresh:+.0f} |")


MEMORY_HEADER = ("| MiB | fresh start | before | peak | just after | {settle:.0f} s later | later − fresh |\n"
                 "|---|---|---|---|---|---|---|")


def refused(url: str, pid: int, fresh: float, args: argparse.Namespace) -> None:
    """Phase 7: photos over the size limit sent as data: URLs; what the server keeps of them."""
    import base64

    import httpx

    def send(megabytes: float) -> str:
        photo = "data:image/png;base64," + base64.b64encode(bytes(int(megabytes * 2**20))).decode()
        c = client(url)
        try:
            c.predict(photo, 40, True, 5, api_name="/noise")
            return "answered"
        except httpx.HTTPStatusError as e:
            return f"HTTP {e.response.status_code}"
        except Exception as e:
            return "too large" if "too large" in str(e) else f"{type(e).__name__}: {str(e)[:80]}"
        finally:
            c.close()

    print("\n" + MEMORY_HEADER.format(settle=args.settle))
    for megabytes in (args.refused_mb, 20.5):
        with PeakMemory(pid) as memory:
            answers = [send(megabytes) for _ in range(args.refused)]
        after = rss_mib(pid)
        kinds = ", ".join(f"{answers.count(a)}× {a}" for a in sorted(set(answers)))
        print(memory_row(f"{args.refused} photos of {megabytes:g} MB as data: URLs ({kinds})", fresh, memory, after,
                         settled_rss(pid, args.settle)))


def first_curve(url: str, pid: int, fresh: float, args: argparse.Namespace) -> None:
    """Phase 8: the server's first loss curve (a photo's loss at many t)."""
    from gradio_client import handle_file

    c = client(url)
    with PeakMemory(pid) as memory:
        c.predict(handle_file(str(ROOT / "ddpm_app" / "assets" / "portrait.png")), 100, api_name="/loss_curve")
    after = rss_mib(pid)
    c.close()
    print("\n" + MEMORY_HEADER.format(settle=args.settle))
    print(memory_row("the first loss curve", fresh, memory, after, settled_rss(pid, args.settle)))


def exports(url: str, temp: Path, args: argparse.Namespace) -> None:
    """Phase 6: failed and good exports; what stays on disk."""
    failed = 0
    c = client(url)  # a user with nothing to export yet
    for _ in range(args.failed_exports):
        try:
            c.predict(api_name="/export_gif")
        except Exception as e:
            failed += "nothing to export" in str(e)
    c.predict("ddim", 20, 0.0, 5, 4, True, False, api_name="/generate")
    good = 0
    for i in range(args.good_exports):
        kind = ("gif", "png", "mp4")[i % 3]
        try:
            good += Path(c.predict(api_name=f"/export_{kind}")).stat().st_size > 0
        except Exception as e:
            print(f"export {kind} failed: {e}")
    c.close()
    folders = sorted(temp.glob("ddpm_app_*"))
    app_mib, app_files = folder_size(folders[0]) if folders else (float("nan"), 0)
    app_dirs = sum(1 for _ in folders[0].iterdir()) if folders else 0
    cache_mib, cache_files = folder_size(temp / "gradio")
    print(f"\n| exports: {args.failed_exports} failed, then {args.good_exports} good (GIF/PNG/MP4 in turn, DDIM-20 × 4) "
          "| failed as expected | good | export folder: MiB | files | sub-folders | Gradio file cache: MiB | files |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| after all | {failed}/{args.failed_exports} | {good}/{args.good_exports} | {app_mib:.1f} | {app_files} | "
          f"{app_dirs} | {cache_mib:.1f} | {cache_files} |")


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
    p.add_argument("--phases", default="load",
                   help="comma-separated: load (phases 1-4), memory, exports, refused, curve, inputs")
    p.add_argument("--visitors", type=int, default=20, help="users who come and go (memory phase)")
    p.add_argument("--visitors-at-once", type=int, default=4)
    p.add_argument("--visitor-steps", type=int, default=50, help="DDIM steps of each visitor's run")
    p.add_argument("--linger", type=float, default=60, help="seconds to wait after the last visitor left")
    p.add_argument("--refused", type=int, default=30, help="photos over the size limit sent (refused phase)")
    p.add_argument("--refused-mb", type=float, default=25, help="size of each of them in MB")
    p.add_argument("--input-mb", type=float, default=5, help="size of each user's value in MB (inputs phase)")
    p.add_argument("--settle", type=float, default=10, help="seconds to wait after the refused and curve phases")
    p.add_argument("--failed-exports", type=int, default=100)
    p.add_argument("--good-exports", type=int, default=20)
    args = p.parse_args(argv)
    phases = set(args.phases.split(","))

    proc = None
    url = args.url
    temp = Path(tempfile.mkdtemp(prefix="app_load_"))
    if url is None:
        proc, url = start_app(args, temp)
    elif phases - {"load"}:
        sys.exit("the memory, exports, refused, curve and inputs phases measure the server: leave out --url")
    pid = proc.pid if proc else None
    fresh = rss_mib(pid) if pid else float("nan")
    print(f"\nMachine: {cpu_model()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")
    try:
        if "curve" in phases:
            first_curve(url, pid, fresh, args)
        if "refused" in phases:
            refused(url, pid, fresh, args)
        if "memory" in phases:
            come_and_go(url, pid, fresh, args)
        if "inputs" in phases:
            large_inputs(url, pid, fresh, args)
        if "exports" in phases:
            exports(url, temp, args)
        if "load" in phases:
            load(url, pid, args)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load(url: str, pid: int | None, args: argparse.Namespace) -> None:
    """Phases 1-4: solo, concurrent, burst, cancel."""
    seeds = [1000 + i for i in range(args.users)]
    c = client(url)
    generate(c, args, 0)  # warm-up: first-request costs (model compile paths, caches)
    solo = {s: generate(c, args, s) for s in seeds}
    solo_times = [t for t, _ in solo.values()]

    wall, results = concurrent(url, args, seeds)
    ok = [t for (t, img), s in zip(results, seeds) if isinstance(img, np.ndarray)]
    same = sum(isinstance(img, np.ndarray) and np.array_equal(img, solo[s][1])
               for (_, img), s in zip(results, seeds))

    print(f"\n{args.sampler.upper()}{'-' + str(args.steps) if args.sampler == 'ddim' else ''}, "
          f"batch {args.batch}, queue size {args.queue_size}\n")
    print("| phase | runs | wall (s) | runs/s | p50 latency (s) | p95 latency (s) | results equal to solo |")
    print("|---|---|---|---|---|---|---|")
    print(f"| solo, one at a time | {len(seeds)} | {sum(solo_times):.2f} | {len(seeds) / sum(solo_times):.2f} | "
          f"{percentile(solo_times, 50):.2f} | {percentile(solo_times, 95):.2f} | (reference) |")
    print(f"| {args.users} users at once | {len(ok)} | {wall:.2f} | {len(ok) / wall:.2f} | "
          f"{percentile(ok, 50):.2f} | {percentile(ok, 95):.2f} | {same}/{len(seeds)} |")

    # burst: more requests than the queue holds
    memory = PeakMemory(pid) if pid else None
    burst_seeds = [2000 + i for i in range(args.burst)]
    with memory or contextlib.nullcontext():
        burst_wall, burst = concurrent(url, args, burst_seeds)
    peak = [memory.before, memory.peak] if memory else [float("nan")]
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


if __name__ == "__main__":
    main()
