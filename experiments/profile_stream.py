"""Where the real server's CPU time goes while a run streams: `python app.py` sampled by py-spy, all threads.

    pip install py-spy
    python experiments/profile_stream.py [--sampler ddpm] [--batch 4] [--interval 0.2] [--weights weights]

Starts the app as users do, runs one warm-up, then samples the server's threads (py-spy, 200 Hz) while one
Generate run streams to a client that does not download the pictures. Prints the share of samples per part of
the work: the network and sampler, storing frames for the scrubber, drawing and encoding the previews, Gradio's
postprocessing and the web server. On Linux py-spy may need ptrace permission (root, or CAP_SYS_PTRACE).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (part, any of these in a stack puts the sample there); the first match wins, so the sampler comes before the rest
PARTS = [
    ("network and sampler", ("samplers.py",)),
    ("storing frames for the scrubber", ("Trajectory.add",)),
    ("preview JPEG files", ("preview_file",)),
    ("preview pictures (uint8 grids)", ("picture", "noise_picture")),
    ("status line", ("status_html", "equation_text", "step_breakdown")),
    ("Gradio postprocess", ("postprocess",)),
    ("event loop waiting", ("EpollSelector.select", "Condition.wait")),
    ("web server and messages", ("uvicorn", "starlette", "h11", "anyio", "asyncio", "orjson")),
]


def part_of(stack: str) -> str:
    """The part of the work a py-spy stack (frames joined by ';') belongs to."""
    for name, needles in PARTS:
        if any(n in stack for n in needles):
            return name
    return "other"


def shares(raw_lines: list[str]) -> list[tuple[str, int, float]]:
    """(part, samples, % of all) from py-spy's raw format ("frame;frame;... count" per line), largest first."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw_lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if stack and count.isdigit():
            counts[part_of(stack)] += int(count)
    total = sum(counts.values()) or 1
    return [(name, n, 100 * n / total) for name, n in counts.most_common()]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddpm")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--interval", type=float, default=0.2, help="the app's --preview-interval")
    p.add_argument("--weights", default=str(ROOT / "weights"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default=None, help="model folder in --weights (default: the app's)")
    p.add_argument("--cpu-runtime", default=None, help="the app's --cpu-runtime (default: its own, pytorch)")
    args = p.parse_args(argv)
    args.device = args.precision = None  # the app's defaults (read by app_stream.start_server)
    if shutil.which("py-spy") is None:
        sys.exit("error: py-spy is not installed; `pip install py-spy` and run again")
    from gradio_client import Client

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from app_stream import start_server  # the app started as users start it, once it answers

    server, url = start_server(ROOT / "app.py", args, args.interval)
    out = Path(tempfile.mkdtemp()) / "stacks.txt"
    try:
        client = Client(url, verbose=False, download_files=False)
        client.predict("ddim", 50, 0.0, 1, args.batch, True, False, api_name="/generate")  # warm-up
        spy = subprocess.Popen(["py-spy", "record", "-p", str(server.pid), "-r", "200", "-f", "raw", "-o", str(out),
                                "--threads", "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)
        start, outputs = time.perf_counter(), 0
        steps = 1000 if args.sampler == "ddpm" else 50
        job = client.submit(args.sampler, steps, 0.0, 1, args.batch, True, False, api_name="/generate")
        for _ in job:
            outputs += 1
        job.result()
        seconds = time.perf_counter() - start
        spy.send_signal(2)
        _, err = spy.communicate(timeout=60)
        if not out.exists():
            sys.exit(f"error: py-spy wrote no profile: {err.decode(errors='replace').strip()[-400:]}")
    finally:
        server.terminate()
        server.wait()
    print(f"{args.sampler.upper()}-{steps}, batch {args.batch}, previews every {args.interval} s at most: "
          f"{seconds:.1f} s, {outputs} outputs streamed; py-spy samples of the server's busy threads:")
    print("| part | samples | share |\n|---|---|---|")
    for name, n, share in shares(out.read_text().splitlines()):
        print(f"| {name} | {n} | {share:.1f} % |")


if __name__ == "__main__":
    main()
