"""Profile our trainer's step on the GPU: the CUDA kernels that take the most time.

    python experiments/profile_train_step.py [--config ddpm] [--batch 256] [--no-compile] [--no-channels-last]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from train_throughput import CONFIGS, fake_pack  # noqa: E402

from ddpm_app.diffusion.schedule import ScheduleConfig
from ddpm_app.training.config import TrainConfig
from ddpm_app.training.trainer import Trainer


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="ddpm")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="memory format (default: the trainer's choice for the architecture)")
    args = p.parse_args()
    config = CONFIGS[args.config]
    cfg = TrainConfig(out="/tmp/profile-run", steps=10_000, batch_size=args.batch, sample_every=0, save_every=0,
                      compile=args.compile, channels_last=args.channels_last, warmup_steps=10,
                      background_compile=False)
    trainer = Trainer(cfg, config, ScheduleConfig(), pack=fake_pack(4096, config.image_size))
    for _ in range(15):
        trainer.train_step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(20):
        trainer.train_step()
    torch.cuda.synchronize()
    step_ms = (time.perf_counter() - start) / 20 * 1000
    print(f"{args.config} batch {args.batch} compile={args.compile} channels_last={trainer.channels_last}: "
          f"{step_ms:.1f} ms/step, {args.batch / step_ms * 1000:,.0f} images/s")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            trainer.train_step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
    return 0


if __name__ == "__main__":
    sys.exit(main())
