"""One image on one thread or on two, with 0–3 busy processes on the same cores: does a single image gain from
giving up its second thread on a busy machine, and may that thread be pinned to a core?

    taskset -c 0,1 python experiments/openvino_one_image_busy.py [--model weights/faces] [--calls 21] [--busy 0,1,2,3]

A batch of one cannot be split into two independent halves as larger batches are (runtime/openvino_net.py): on all
threads each of its parallel ops waits for the slowest thread; on one stream the other core idles. Prints, per busy
level, the median ms per call of the network compiled for two threads and for one (OpenVINO's latency hint, bf16),
with the CPU seconds the process got per second of the call (median, range: what share of the cores it was given),
and of one stream of the app's two-stream network (two threads, one per stream) with OpenVINO's CPU pinning on and
off.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ddpm_app.io.loading import load_pretrained  # noqa: E402
from ddpm_app.runtime import openvino_net  # noqa: E402

SPIN = "import time\nt = time.time()\nwhile time.time() - t < 120: pass"


def timed(request, inputs: dict, calls: int) -> str:
    request.infer(inputs)
    walls, shares = [], []
    for _ in range(calls):
        wall, cpu = time.perf_counter(), time.process_time()
        request.infer(inputs)
        walls.append(time.perf_counter() - wall)
        shares.append((time.process_time() - cpu) / walls[-1])
    return (f"{statistics.median(walls) * 1000:.1f} ms, {statistics.median(shares):.2f} "
            f"({min(shares):.2f}–{max(shares):.2f}) CPU s/s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="weights/faces")
    p.add_argument("--calls", type=int, default=21)
    p.add_argument("--busy", default="0,1,2,3")
    args = p.parse_args()
    model = load_pretrained(args.model).model
    graph = openvino_net.convert(model).graph
    core = openvino_net._core()
    bf16 = {"INFERENCE_PRECISION_HINT": "bf16"}
    requests = {threads: core.compile_model(graph, "CPU", bf16 | {
        "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}).create_infer_request() for threads in (2, 1)}
    streams = {pinned: core.compile_model(graph, "CPU", bf16 | {
        "INFERENCE_NUM_THREADS": 2, "NUM_STREAMS": 2, "ENABLE_CPU_PINNING": pinned}).create_infer_request()
        for pinned in (True, False)}
    size = model.config.image_size
    inputs = {"x": np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32),
              "features": model.time_features(torch.tensor([500])).numpy()}
    print("| busy processes | two threads | one thread | one stream, pinned | one stream, unpinned |")
    print("|---|---|---|---|---|")
    for busy in (int(b) for b in args.busy.split(",")):
        spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(busy)]
        time.sleep(1)
        chosen = (requests[2], requests[1], streams[True], streams[False])
        cells = [timed(request, inputs, args.calls) for request in chosen]
        print(f"| {busy} | " + " | ".join(cells) + " |", flush=True)
        for spinner in spinners:
            spinner.kill()
        time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
