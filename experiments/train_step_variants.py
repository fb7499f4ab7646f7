"""Which changes make the trainer's step faster on the GPU? Times variants of one training step side by side.

    python experiments/train_step_variants.py [--config ddpm] [--batch 1024] [--variants cl,nchw,...] [--profile NAME]

Every variant runs in its own process. They compile at the same time (compilation is CPU work), then take turns
on the GPU behind a file lock, so each one is timed alone: 10 warm-up steps, then the median of windows of 10
steps. A variant is a layout (``cl`` channels_last, ``nchw``) joined by ``+`` with changes to try:
``nodrop`` (dropout 0, to see what dropout costs), ``default`` (compile mode default instead of CUDA graphs),
``gnview`` (GroupNorm computed on a view of the channels split into groups, which keeps channels_last),
``layoutopt`` (Inductor's layout optimisation forced on: its convolutions and what lies between them in
channels_last inside the compiled graph, whatever the tensors' layout outside it), ``interp`` (the nearest ×2
upsampling by ``F.interpolate``, whose gradient Inductor computes as a scatter-add, instead of the U-Net's repeat of
each pixel, whose gradient is a sum over the four copies), ``cdt``
(Inductor's coordinate-descent tuning of its own kernels' block sizes), ``mat`` (Inductor's max-autotune: its
convolutions and matmuls benchmarked against its Triton templates).
``--profile NAME`` also prints the CUDA kernels of that variant's step.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_throughput import BF16_PEAK, CONFIGS, fake_pack, training_flops_per_image  # noqa: E402

from ddpm_app.diffusion.schedule import ScheduleConfig  # noqa: E402
from ddpm_app.models import unet  # noqa: E402
from ddpm_app.training.config import TrainConfig  # noqa: E402
from ddpm_app.training.trainer import Trainer  # noqa: E402

FLAGS = {"cl", "nchw", "nodrop", "default", "gnview", "layoutopt", "interp", "cdt", "mat"}


def group_norm_on_a_view(self, x):
    """GroupNorm with its groups split off the channel axis as a view, so channels_last stays channels_last."""
    b, c = x.shape[:2]
    xg = x.unflatten(1, (self.num_groups, c // self.num_groups))
    var, mean = torch.var_mean(xg.float(), dim=tuple(range(2, xg.dim())), keepdim=True, correction=0)
    y = ((xg - mean) * torch.rsqrt(var + self.eps)).flatten(1, 2)
    shape = (1, c) + (1,) * (x.dim() - 2)
    return y * self.weight.view(shape) + self.bias.view(shape)


def upsample_by_interpolate(x, pattern):
    """The U-Net's nearest ×2 (einops ``repeat``) as ``F.interpolate`` computes it: the same values."""
    assert pattern == "b c h w -> b c (h 2) (w 2)", pattern
    return torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")


def worker(name: str, args, ready_dir: Path, lock_path: Path, count: int) -> None:
    flags = set(name.split("+"))
    config = CONFIGS[args.config]
    if "nodrop" in flags:
        config = dataclasses.replace(config, dropout=0.0)
    if "gnview" in flags:
        torch.nn.GroupNorm.forward = group_norm_on_a_view
    if "layoutopt" in flags:  # Inductor's own choice of channels_last inside the graph, which its heuristic
        torch._inductor.config.force_layout_optimization = True  # turns down for convs with in ≥ 2·out (the decoder)
    if "interp" in flags:
        unet.repeat = upsample_by_interpolate
    if "cdt" in flags:
        torch._inductor.config.coordinate_descent_tuning = True
    if "mat" in flags:
        torch._inductor.config.max_autotune = True
    mode = "default" if "default" in flags else "reduce-overhead"
    cfg = TrainConfig(out=tempfile.mkdtemp(), steps=100_000, batch_size=args.batch, sample_every=0, save_every=0,
                      warmup_steps=10, compile_mode=mode, channels_last="cl" in flags,
                      background_compile=False)
    trainer = Trainer(cfg, config, ScheduleConfig(), pack=fake_pack(4096, config.image_size))
    start = time.perf_counter()
    for _ in range(3):
        trainer.train_step()
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - start
    (ready_dir / name).touch()
    while len(list(ready_dir.iterdir())) < count:
        time.sleep(0.5)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for _ in range(10):
            trainer.train_step()
        torch.cuda.synchronize()
        windows = []
        for _ in range(args.windows):
            t0 = time.perf_counter()
            for _ in range(10):
                loss = trainer.train_step()
            loss.item()
            windows.append((time.perf_counter() - t0) / 10)
        step = statistics.median(windows)
        flops = training_flops_per_image(config, torch.device("cuda"))
        peak = next((v for k, v in BF16_PEAK.items() if k in torch.cuda.get_device_name()), None)
        mfu = f"{flops * args.batch / step / peak:.1%}" if peak else "n/a"
        print(f"| {name} | {step * 1000:.1f} ({min(windows) * 1000:.1f}–{max(windows) * 1000:.1f}) | "
              f"{args.batch / step:,.0f} | {mfu} | {compile_s:.0f} s | "
              f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB |", flush=True)
        if args.profile == name:
            from torch.profiler import ProfilerActivity, profile
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    trainer.train_step()
                torch.cuda.synchronize()
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=90),
                  flush=True)
        fcntl.flock(lock, fcntl.LOCK_UN)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="ddpm", choices=sorted(CONFIGS))
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--variants", default="cl,nchw,cl+nodrop,nchw+nodrop,nchw+default")
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--profile", default="")
    p.add_argument("--worker", default="")
    p.add_argument("--ready", default="")
    p.add_argument("--count", type=int, default=0)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args, Path(args.ready), Path(args.ready).with_suffix(".lock"), args.count)
        return 0
    variants = args.variants.split(",")
    for v in variants:
        flags = set(v.split("+"))
        if not flags <= FLAGS or len(flags & {"cl", "nchw"}) != 1:
            raise SystemExit(f"bad variant {v!r}: one of cl, nchw, then any of "
                             f"{', '.join(sorted(FLAGS - {'cl', 'nchw'}))}, joined by +")
    if not torch.cuda.is_available():
        raise SystemExit("this experiment needs a CUDA GPU")
    ready = Path(tempfile.mkdtemp()) / "ready"
    ready.mkdir()
    print(f"# {args.config}, batch {args.batch}; {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| variant | ms/step median (range) | images/s | MFU | compile + 3 steps | peak memory |", flush=True)
    print("|---|---|---|---|---|---|", flush=True)
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", v, "--ready", str(ready), "--count",
                               str(len(variants)), "--config", args.config, "--batch", str(args.batch),
                               "--windows", str(args.windows), "--profile", args.profile], env=os.environ)
             for v in variants]
    return max(proc.wait() for proc in procs)


if __name__ == "__main__":
    sys.exit(main())
