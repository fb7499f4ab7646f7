"""Convert a checkpoint saved by the seed tutorial's code into a model folder (:mod:`ddpm_app.io.convert_seed`):

    python -m ddpm_app.cli.convert_seed ddpm_T1000_l2_epochs_300.pth weights/seed-celeba --image-size 96
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from ddpm_app.diffusion.schedule import SCHEDULE_KINDS, ScheduleConfig
from ddpm_app.io.convert_seed import convert
from ddpm_app.io.model_folder import ModelFolderError


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = ScheduleConfig()
    parser = argparse.ArgumentParser(
        prog="python -m ddpm_app.cli.convert_seed",
        description="Convert the seed tutorial's model.state_dict() .pth file into a model folder "
                    "(config.json + model.safetensors). The file is read with weights-only loading.")
    parser.add_argument("pth", type=Path, help="the .pth file saved with torch.save(model.state_dict(), …)")
    parser.add_argument("out_dir", type=Path, help="folder to write config.json and the safetensors weights into")
    parser.add_argument("--image-size", type=int, default=64,
                        help="side of the images the model was trained on (not stored in the .pth; "
                             "the tutorial's training code uses 96)")
    parser.add_argument("--schedule", choices=SCHEDULE_KINDS, default=defaults.kind,
                        help="noise schedule the model was trained with (the tutorial: linear)")
    parser.add_argument("--timesteps", type=int, default=defaults.timesteps, help="T (the tutorial: 1000)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        schedule = ScheduleConfig(kind=args.schedule, timesteps=args.timesteps)
        directory, config = convert(args.pth, args.out_dir, image_size=args.image_size, schedule=schedule)
    except (ValueError, ModelFolderError, OSError) as e:  # ConversionError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    widths = ", ".join(map(str, config.model.down_channels))
    print(f"wrote {directory} (seed U-Net, widths {widths}, {config.image_size}×{config.image_size}, "
          f"{config.schedule.kind} schedule, T = {config.schedule.timesteps})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
