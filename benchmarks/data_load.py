"""How long a training pack takes to decode: ``load_pack`` as it chooses (one thread for small files) against the
same pack decoded in its thread pool, alternated, quiet and beside busy processes.

    python benchmarks/data_load.py PACK [--size 64] [--split train] [--repeats 3] [--busy 0,2]

``--busy N`` starts N processes that spin on the CPU for the measurement's length, like the other programs of a
shared machine. Prints the median seconds of each way per load.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toy_lab import cpu_name

from ddpm_app.io import data


def seconds(pack: str, size: int, split: str | None, small_file_bytes: int) -> float:
    data.SMALL_FILE_BYTES, kept = small_file_bytes, data.SMALL_FILE_BYTES
    try:
        start = time.perf_counter()
        data.load_pack(pack, size, split)
        return time.perf_counter() - start
    finally:
        data.SMALL_FILE_BYTES = kept


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pack")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--split", default="train")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--busy", default="0,2")
    args = p.parse_args()
    names = data.list_images(args.pack, args.split)
    print(f"# {cpu_name()}, {len(names)} images of {args.pack} ({args.split}), {args.size}×{args.size}")
    print("| busy processes | as chosen (one thread for small files) | in the thread pool (8 threads) |")
    print("|---|---|---|")
    ways = {"chosen": data.SMALL_FILE_BYTES, "pool": 0}  # 0: every file counts as large
    for busy in map(int, args.busy.split(",")):
        spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            times = {way: [] for way in ways}
            for _ in range(args.repeats):
                for way, small in ways.items():
                    times[way].append(seconds(args.pack, args.size, args.split, small))
        finally:
            for s in spinners:
                s.kill()
        print(f"| {busy} | {statistics.median(times['chosen']):.2f} s | {statistics.median(times['pool']):.2f} s |",
              flush=True)


if __name__ == "__main__":
    main()
