"""Two OpenVINO streams against one request on all threads, with and without busy processes on the same cores.

    taskset -c 0,1 python experiments/openvino_streams.py [--model weights/faces] [--rounds 15] [--busy 0,1,2,0,1,2]

The app runs its network as one inference request on all its threads (OpenVINO's latency hint). Every parallel
section then waits for its slowest thread, and on a machine whose cores other programs share, that thread is often
descheduled. Here the same compiled graph is also compiled with two streams of one thread each, and a batch of n
images is split into halves (⌈n/2⌉ and ⌊n/2⌋) run at once, one per stream, so that neither waits for the other
inside an op. Prints, per busy level, the median ms per call of each at batches 1–4, timed interleaved.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ddpm_app.io.loading import load_pretrained  # noqa: E402
from ddpm_app.runtime import openvino_net  # noqa: E402
from ddpm_app.runtime.inference import example_input  # noqa: E402
from ddpm_app.runtime.isa import detect  # noqa: E402


def busy(count: int, seconds: float = 300) -> list[subprocess.Popen]:
    code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="weights/faces")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--busy", default="0,1,2,0,1,2")
    args = p.parse_args()
    torch.set_num_threads(2)
    net = load_pretrained(args.model).model.eval()
    graph = openvino_net.convert(net).graph
    core = openvino_net._core()
    base = {"INFERENCE_NUM_THREADS": 2, "INFERENCE_PRECISION_HINT": "bf16"}
    latency = core.compile_model(graph, "CPU", base | {"PERFORMANCE_HINT": "LATENCY"}).create_infer_request()
    streams = core.compile_model(graph, "CPU", base | {"NUM_STREAMS": 2})
    halves = [streams.create_infer_request() for _ in range(2)]

    def one_request(x, f):
        latency.infer({"x": x, "features": f})

    def two_streams(x, f):
        if len(x) == 1:
            halves[0].infer({"x": x, "features": f})
            return
        h = (len(x) + 1) // 2
        halves[0].start_async({"x": x[:h], "features": f[:h]})
        halves[1].start_async({"x": x[h:], "features": f[h:]})
        halves[0].wait()
        halves[1].wait()

    cpu = detect()
    print(f"CPU: {cpu.model}; 2 threads; torch {torch.__version__}; load at start {os.getloadavg()[0]:.1f}")
    print("| busy processes | load (1 min) | " + " | ".join(f"batch {n}: one request / two streams (ms)" for n in range(1, 5)) + " |")
    print("|---|---|" + "---|" * 4)
    for level in (int(b) for b in args.busy.split(",")):
        procs = busy(level)
        time.sleep(1)
        cells = []
        for n in range(1, 5):
            x, t = example_input(net, n)
            x, f = x.contiguous().float().numpy(), net.time_features(t).contiguous().numpy()
            times = {one_request: [], two_streams: []}
            for run in times:
                run(x, f)
            for _ in range(args.rounds):
                for run, ts in times.items():
                    start = time.perf_counter()
                    run(x, f)
                    ts.append((time.perf_counter() - start) * 1000)
            cells.append(" / ".join(f"{statistics.median(ts):.1f}" for ts in times.values()))
        load = os.getloadavg()[0]
        for proc in procs:
            proc.kill()
        print(f"| {level} | {load:.1f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
