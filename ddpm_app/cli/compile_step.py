"""The child process of a run that compiles its training step in the background
(:mod:`ddpm_app.training.background_compile`): it builds the run's network in a trainer of its own, runs one compiled
step on random images of the run's shape, and exits, leaving the compiled graphs and kernels in torch.compile's cache.

    python -m ddpm_app.cli.compile_step SPEC_JSON     # SPEC_JSON: what BackgroundCompile passes
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import replace

import torch

from ddpm_app.io.data import ImagePack
from ddpm_app.io.model_folder import DiffusionConfig
from ddpm_app.training.config import TrainConfig
from ddpm_app.training.trainer import Trainer


def compile_step(spec: dict) -> None:
    """Build the spec's network in a trainer of its own over random images and run one compiled step, which leaves
    the compiled graphs and kernels in torch.compile's cache. ``spec``: the run's settings, model and schedule,
    device and torch's thread count (:class:`~ddpm_app.training.background_compile.BackgroundCompile`)."""
    torch.set_num_threads(spec["threads"])
    diffusion = DiffusionConfig.from_dict(spec["diffusion_config"])
    model = diffusion.model
    images = torch.randint(0, 256, (2, model.in_channels, model.image_size, model.image_size), dtype=torch.uint8)
    with tempfile.TemporaryDirectory() as out:
        cfg = replace(TrainConfig(**spec["train_config"]), out=out, device=spec["device"], init_from="", eval_every=0,
                      sample_every=0, save_every=0, max_minutes=0.0, background_compile=False)
        trainer = Trainer(cfg, model, diffusion.schedule, pack=ImagePack(images, ["a", "b"], []))
        trainer.use_compiled()
        trainer.train_step()
        if trainer.is_cuda:
            torch.cuda.synchronize(trainer.device)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    started = time.perf_counter()
    compile_step(json.loads(args[0]))
    print(f"compiled one training step in {time.perf_counter() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
