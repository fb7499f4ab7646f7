"""Store a model folder's held-out figures (heldout.json): the loss against t and the bits/dim bound.

    python experiments/heldout_stats.py MODEL_DIR PACK.zip [--images N] [--timesteps K] [--draws D]
                                    [--bpd-from EVAL.json] [--device cpu]

The loss curve is measured here on the first N images of the pack's test/ split, K timesteps evenly spaced
over the schedule, D fresh ε per (image, t). The bits/dim comes either from an evaluation report of
``python -m ddpm_app.cli.evaluate`` (``--bpd-from``: there, the exact bound over all T and every held-out image) or is
estimated here from ``--bound-timesteps`` timesteps on the same N images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from ddpm_app.diffusion.likelihood import BitsPerDim
from ddpm_app.io.data import load_pack
from ddpm_app.io.loading import load_local
from ddpm_app.metrics import heldout
from ddpm_app.runtime.inference import prepare
from ddpm_app.runtime.isa import cpu_model_name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--split", default="test")
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--timesteps", type=int, default=25)
    p.add_argument("--draws", type=int, default=1)
    p.add_argument("--bpd-from", default=None, help="an evaluate report (JSON) whose 'bpd' to store")
    p.add_argument("--bound-timesteps", type=int, default=50)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    loaded = load_local(args.model, device)
    pack = load_pack(args.data, loaded.config.image_size, split=args.split, limit=args.images)
    bpd = None
    if args.bpd_from:
        row = json.loads(Path(args.bpd_from).read_text())["bpd"]
        bpd = BitsPerDim(**(row | {"per_timestep": [tuple(r) for r in row["per_timestep"]]}))
    where = f"CPU {cpu_model_name()}" if device.type == "cpu" else torch.cuda.get_device_name(device)
    start = time.perf_counter()
    stats = heldout.measure(prepare(loaded.model, device, compile=False, precision="fp32"), loaded.schedule,
                            pack.images, f"{Path(args.data).name}, split {args.split}", loss_timesteps=args.timesteps,
                            draws=args.draws, bound_timesteps=args.bound_timesteps, batch_size=32, device=device,
                            bpd=bpd, where=where)
    path = heldout.save(stats, args.model)
    print(f"{path} ({time.perf_counter() - start:.0f} s): {stats.method}")
    print("loss:", " ".join(f"t={t}:{v:.4f}" for t, v in zip(stats.loss.timesteps, stats.loss.mean)))
    print(f"bits/dim: {stats.bpd.total:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
