"""ms per network step at batch 1 of diffusers' UNet2DModel with the exact configs of google/ddpm-cifar10-32 and
google/ddpm-celebahq-256 (random weights: no download), as the app runs it on the CPU (fp32, PyTorch).

    python benchmarks/diffusers_speed.py [--rounds 3] [--only cifar10-32] [--baseline weights/faces]

The configs are written from the published unet/config.json of those repos. Each figure is the median of
``--rounds`` timed calls after one untimed one; the 256² model takes seconds per call on a small CPU. On a shared
machine, ``--baseline`` times a model folder of the app's own (plain PyTorch fp32, the same loop) in the same run,
so the figures can be read against it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddpm_app.io.loading import load_pretrained
from ddpm_app.models import DiffusersUNet, DiffusersUNetConfig
from ddpm_app.runtime.isa import cpu_model_name

COMMON = dict(act_fn="silu", attention_head_dim=None, center_input_sample=False, downsample_padding=0,
              flip_sin_to_cos=False, freq_shift=1, in_channels=3, out_channels=3, layers_per_block=2,
              mid_block_scale_factor=1, norm_eps=1e-6, norm_num_groups=32, time_embedding_type="positional")
CONFIGS = {
    "cifar10-32": dict(COMMON, sample_size=32, block_out_channels=[128, 256, 256, 256],
                       down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
                       up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]),
    "celebahq-256": dict(COMMON, sample_size=256, block_out_channels=[128, 128, 256, 256, 512, 512],
                         down_block_types=["DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D",
                                           "AttnDownBlock2D", "DownBlock2D"],
                         up_block_types=["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D",
                                         "UpBlock2D"]),
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", choices=list(CONFIGS), default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--baseline", default=None, help="a model folder of the app's own to time alongside")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    where = f"CUDA {torch.cuda.get_device_name(device)}" if device.type == "cuda" else \
        f"CPU {cpu_model_name()}, {torch.get_num_threads()} threads"
    print(f"{where}; torch {torch.__version__}; load average {os.getloadavg()[0]:.2f} at start")
    networks = {}
    if args.baseline:
        networks[args.baseline] = load_pretrained(args.baseline).model
    for name, values in CONFIGS.items():
        if not args.only or name == args.only:
            torch.manual_seed(0)
            networks[f"google/ddpm-{name}"] = DiffusersUNet(DiffusersUNetConfig.from_unet(values))
    for name, net in networks.items():
        net = net.to(device).eval()
        size = net.config.image_size
        x = torch.randn(1, net.config.in_channels, size, size, device=device)
        t = torch.tensor([500], device=device)
        times = []
        with torch.inference_mode():
            for i in range(args.rounds + 1):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                net(x, t)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i:
                    times.append((time.perf_counter() - start) * 1000)
        ms = statistics.median(times)
        print(f"{name} ({size}²): {net.num_parameters() / 1e6:.1f} M parameters, {ms:.0f} ms per step at batch 1 "
              f"(min {min(times):.0f}, max {max(times):.0f}); DDPM-1000 ≈ {ms:.0f} s, DDIM-50 ≈ {ms * 50 / 1000:.0f} s; "
              f"load average {os.getloadavg()[0]:.2f}", flush=True)

if __name__ == "__main__":
    main()
