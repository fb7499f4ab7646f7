"""Where a network evaluation's time goes on this CPU: torch.profiler tables per precision and batch size.

    python benchmarks/profile_cpu_step.py weights/faces [--threads 2] [--batches 1,4] [--precisions fp32,bf16]

For each precision (the app's packed network, :func:`ddpm_app.inference.prepare_cpu`) and batch: the ops by self
CPU time over ``--calls`` evaluations at t = 500, then the convolutions and norms grouped by input shape. Pin it to
the cores you mean (``taskset -c 0,1``) and name the CPU with its figures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddpm_app.inference import example_input, prepare_cpu  # noqa: E402
from ddpm_app.isa import detect  # noqa: E402
from ddpm_app.model_folder import load_pretrained  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="model folder")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", default="1,4")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--rows", type=int, default=18)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = detect()
    print(f"CPU: {cpu.model} ({cpu.describe()}), {torch.get_num_threads()} threads, torch {torch.__version__}")
    model = load_pretrained(args.model).model
    for precision in args.precisions.split(","):
        net = prepare_cpu(model, precision, cpu)
        for batch in (int(b) for b in args.batches.split(",")):
            x, t = example_input(model, batch)
            with torch.inference_mode():
                for _ in range(3):
                    net(x, t)
                with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                    for _ in range(args.calls):
                        net(x, t)
            print(f"\n=== {precision}, batch {batch}, {args.calls} calls", flush=True)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
            print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total",
                                                                     row_limit=args.rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
