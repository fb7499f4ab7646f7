"""Training throughput at 64×64: the seed tutorial's loop vs our trainer, in one run on one GPU.

    python benchmarks/train_throughput.py [--steps 60] [--warmup 15] [--configs seed,ddpm,...]

(a) the seed tutorial's loop on the seed architecture, as the tutorial writes it: fp32, plain Adam at 2e-4,
    per-image sum-of-squares loss, batch 128, no EMA (data comes from memory here, which only helps it:
    the tutorial decodes JPEGs in the training process);
(b) our Trainer (bf16 autocast, torch.compile, fused AdamW, EMA, clipping, NCHW on CUDA; the seed net's upsampling
    convs as transposed convs, see models/seed.py) on the seed architecture and on `ddpm` U-Net configurations.
    A run's flags can change the layout (``nchw``, ``cl``) or keep the tutorial's literal upsample-then-conv ops in
    our trainer (``literal``), to show what each part gives.
Prints images/s (median over timed windows), the ratio to (a), and the model FLOPs utilisation:
training FLOPs per image (counted by torch.utils.flop_counter on one forward + backward of the network as the
tutorial writes it) × images/s ÷ the GPU's dense bf16 peak (989 TFLOP/s for H100/H200 SXM).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddpm_app.diffusion.schedule import Schedule, ScheduleConfig
from ddpm_app.io.data import ImagePack
from ddpm_app.models import SeedUNetConfig, UNetConfig, build_model
from ddpm_app.training.config import TrainConfig
from ddpm_app.training.trainer import Trainer

BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}

CONFIGS = {
    "seed": SeedUNetConfig(),
    "ddpm": UNetConfig(),  # the default `ddpm` configuration (what the shipped models use)
    "ddpm-small": UNetConfig(base_channels=64, channel_mult=(1, 2, 2, 2), num_res_blocks=1,
                             attention_resolutions=(16, 8), patch_size=2, dropout=0.1),
    "ddpm-p2-64": UNetConfig(base_channels=64, channel_mult=(1, 2, 4), num_res_blocks=2,
                             attention_resolutions=(8,), patch_size=2, dropout=0.1),
    "ddpm-p1-32": UNetConfig(base_channels=32, channel_mult=(1, 2, 2, 4), num_res_blocks=2,
                             attention_resolutions=(16,), patch_size=1, dropout=0.1),
}


def training_flops_per_image(config, device) -> float:
    """FLOPs of one forward + backward pass, per image (counted at batch 8, fp32)."""
    from torch.utils.flop_counter import FlopCounterMode
    model = build_model(config).to(device)
    x = torch.randn(8, config.in_channels, config.image_size, config.image_size, device=device)
    t = torch.randint(0, 1000, (8,), device=device)
    with FlopCounterMode(display=False) as counter:
        model(x, t).square().mean().backward()
    return counter.get_total_flops() / 8


def fake_pack(n: int, size: int) -> ImagePack:
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)
    return ImagePack(images, [f"{i}.png" for i in range(n)], [])


def seed_loop(device, steps: int, warmup: int, batch: int = 128) -> float:
    """images/s of the tutorial's loop: fp32 Adam, sum-of-squares loss, no compile, no EMA."""
    model = build_model(SeedUNetConfig()).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    sched = Schedule(ScheduleConfig()).to(device)
    data = torch.rand(4096, 3, 64, 64, device=device) * 2 - 1
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        img = data[torch.randint(0, len(data), (batch,), device=device)]
        t = torch.randint(0, 1000, (batch,), device=device)
        noise = torch.randn_like(img)
        pred = model(sched.q_sample(img, t, noise), t)
        loss = (noise - pred).square().sum(dim=(1, 2, 3)).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        loss.item()  # the tutorial reads the loss every step it prints; sync here so timings are real
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def ours(config, device, steps: int, warmup: int, batch: int, out: str, compile_mode: str = "default",
         channels_last: bool | None = None, literal: bool = False) -> tuple[float, bool]:
    """(images/s, whether the trainer ran channels_last)."""
    cfg = TrainConfig(out=out, steps=warmup + steps, batch_size=batch, log_every=10, sample_every=0,
                      save_every=0, device=device.type, warmup_steps=10, compile_mode=compile_mode,
                      channels_last=channels_last, background_compile=False)
    trainer = Trainer(cfg, config, ScheduleConfig(), pack=fake_pack(4096, config.image_size))
    if literal:
        trainer.model.subpixel = False  # before the first step, which compiles the network
    for _ in range(warmup):  # includes compilation
        trainer.train_step()
    torch.cuda.synchronize()
    rates = []
    for _ in range(steps // 10):
        start = time.perf_counter()
        for _ in range(10):
            loss = trainer.train_step()
        loss.item()
        rates.append(10 * batch / (time.perf_counter() - start))
    return statistics.median(rates), trainer.channels_last


class Run(NamedTuple):
    config: str
    batch: int
    mode: str
    channels_last: bool | None  # None: the trainer's choice for the architecture
    literal: bool

    def label(self, channels_last: bool) -> str:
        flags = ["channels_last" if channels_last else "NCHW"] + (["tutorial's upsample ops"] if self.literal else [])
        return f"our trainer, batch {self.batch}, compile {self.mode}" + "".join(f", {f}" for f in flags)


RUN_FLAGS = ("nchw", "cl", "literal")


def parse_runs(text: str, default_batch: int, default_mode: str) -> list[Run]:
    """``CONFIG[:BATCH[:MODE[:FLAGS]]]`` items, comma-separated; FLAGS joins ``nchw``, ``cl``, ``literal`` with +."""
    runs = []
    for item in text.split(","):
        parts = item.strip().split(":")
        flags = parts[3].split("+") if len(parts) == 4 else []
        bad_flags = not set(flags) <= set(RUN_FLAGS) or {"nchw", "cl"} <= set(flags)
        if parts[0] not in CONFIGS or len(parts) > 4 or bad_flags:
            raise SystemExit(f"bad run {item!r}: expected CONFIG[:BATCH[:MODE[:FLAGS]]] with CONFIG one of "
                             f"{', '.join(CONFIGS)} and FLAGS from {', '.join(RUN_FLAGS)} joined by +")
        batch = int(parts[1]) if len(parts) > 1 else default_batch
        mode = parts[2] if len(parts) > 2 else default_mode
        if mode not in COMPILE_MODES:
            raise SystemExit(f"bad compile mode {mode!r} in {item!r}: choose one of {', '.join(COMPILE_MODES)}")
        if "literal" in flags and not isinstance(CONFIGS[parts[0]], SeedUNetConfig):
            raise SystemExit(f"bad run {item!r}: only the seed net has the tutorial's upsample ops (flag literal)")
        layout = False if "nchw" in flags else True if "cl" in flags else None
        runs.append(Run(parts[0], batch, mode, layout, "literal" in flags))
    return runs


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--batch", type=int, default=256, help="batch size for our trainer (runs that name none)")
    p.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                   help="torch.compile mode of our trainer (runs that name none)")
    p.add_argument("--configs", default="seed,ddpm,ddpm-small",
                   help="runs of our trainer, comma-separated CONFIG[:BATCH[:MODE[:FLAGS]]], e.g. "
                        f"seed:1024:reduce-overhead:literal; CONFIG is one of {', '.join(CONFIGS)}; FLAGS "
                        "joins nchw (layout NCHW), cl (channels_last), literal (the tutorial's upsample ops) with +")
    p.add_argument("--out", default="/tmp/throughput-bench")
    args = p.parse_args(argv)
    runs = parse_runs(args.configs, args.batch, args.compile_mode)
    if not torch.cuda.is_available():
        print("this benchmark needs a CUDA GPU")
        return 1
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in BF16_PEAK.items() if k in name), None)
    print(f"GPU: {name}; torch {torch.__version__}", flush=True)
    base = seed_loop(device, args.steps, args.warmup)
    flops = {"seed": training_flops_per_image(SeedUNetConfig(), device)}
    rows = [("seed tutorial loop (fp32 Adam, batch 128)", "seed", base)]
    for run in runs:
        torch._dynamo.reset()
        rate, channels_last = ours(CONFIGS[run.config], device, args.steps, args.warmup, run.batch, args.out,
                                   run.mode, run.channels_last, run.literal)
        if run.config not in flops:
            flops[run.config] = training_flops_per_image(CONFIGS[run.config], device)
        rows.append((run.label(channels_last), run.config, rate))
        print(f"{run.config}: {rows[-1][0]}: {rate:,.0f} images/s", flush=True)
    print("\n| loop | model | params | GFLOP/img (train) | images/s | × seed loop | MFU (bf16 peak) |")
    print("|---|---|---|---|---|---|---|")
    for label, key, rate in rows:
        params = build_model(CONFIGS[key]).num_parameters() / 1e6
        mfu = f"{flops[key] * rate / peak:.1%}" if peak else "n/a"
        print(f"| {label} | {key} | {params:.1f} M | {flops[key] / 1e9:.2f} | {rate:,.0f} | {rate / base:.1f}× | {mfu} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
