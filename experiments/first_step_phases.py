"""Where a process's first uncompiled training step spends its time on a GPU, phase by phase.

    python experiments/first_step_phases.py [--batch 1024] [--no-cudnn-benchmark] [--device cuda]

``train.py``'s first step (uncompiled while another process compiles) is several times slower on a fresh machine
than on the same machine again (docs/training.md has the figures). This splits such a step: importing torch, CUDA's start, the first cuDNN convolution and the
first cuBLAS matmul (each loads its library), building the shipped U-Net, then the first two steps' forward,
backward and optimizer step, each followed by a synchronisation, as the trainer runs them (bf16 autocast, fused
AdamW, cuDNN's benchmark on unless ``--no-cudnn-benchmark``). Run it first on a fresh machine, then again.
``--device cpu`` runs the same phases on the CPU (a check that the script works, at a small batch).
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

IMPORTED = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class Phases:
    def __init__(self, device: torch.device):
        self.device, self.last = device, IMPORTED
        print(f"| import torch | {IMPORTED - START:.2f} s |", flush=True)

    def __call__(self, name: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        print(f"| {name} | {now - self.last:.2f} s |", flush=True)
        self.last = now


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--no-cudnn-benchmark", action="store_true")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here (--device cpu checks the script on the CPU)")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"# {name}, torch {torch.__version__}, batch {args.batch}, cuDNN benchmark "
          f"{'off' if args.no_cudnn_benchmark else 'on'}")
    print("| phase | seconds |\n|---|---|", flush=True)
    phase = Phases(device)
    torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    torch.zeros(1, device=device)
    phase("the device's start (CUDA: context, first kernel)")
    x = torch.randn(8, 16, 32, 32, device=device, dtype=torch.bfloat16)
    torch.nn.functional.conv2d(x, torch.randn(16, 16, 3, 3, device=device, dtype=torch.bfloat16), padding=1)
    phase("first cuDNN convolution")
    a = torch.randn(256, 256, device=device, dtype=torch.bfloat16)
    a @ a
    phase("first cuBLAS matmul")

    from ddpm_app.diffusion.loss import diffusion_loss
    from ddpm_app.diffusion.schedule import Schedule
    from ddpm_app.models import UNetConfig, build_model
    config = UNetConfig()
    model = build_model(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    schedule = Schedule().to(device)
    phase("import ddpm_app, build the U-Net and its optimizer")
    for step in (1, 2):
        x0 = torch.rand(args.batch, config.in_channels, config.image_size, config.image_size, device=device) * 2 - 1
        t = torch.randint(0, schedule.timesteps, (args.batch,), device=device)
        noise = torch.randn_like(x0)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = diffusion_loss(model, schedule, x0, t, noise)
        phase(f"step {step}: forward")
        loss.backward()
        phase(f"step {step}: backward")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        phase(f"step {step}: optimizer")
    print(f"| total from the start | {time.perf_counter() - START:.2f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
