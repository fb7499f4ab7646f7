"""A seed-net model folder whose first block sees the amplitude of x_t: a warm start for fine-tuning.

    python scripts/seed_input_affine.py weights/seed-faces PACK.zip runs/seed-affine-start [--images 2048]

The tutorial's first ``GroupNorm(32, 32)`` normalises each channel of ``init_conv``'s output by the image's own mean
and standard deviation, which makes ε̂ blind to the amplitude of x_t (see ``ddpm_app/models/seed.py``). The folder
written here has ``input_group_norm: false``: that layer keeps its weight and bias and drops the statistics. So that
the network starts close to the one it comes from, the statistics the layer saw on average are folded into its
weight and bias: y = w·(h − μ̄)/σ̄ + b, with μ̄ and σ̄ each channel's mean and standard deviation over x_t of the
pack's training images at t drawn uniformly (as in training). One pair of figures cannot match every t (σ grows
about fivefold from t = 0 to t = T): the network still needs fine-tuning (``train.py --init-from`` this folder).
The folder's sampling defaults are dropped: it is sampled like any other model.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ddpm_app.data import load_pack  # noqa: E402
from ddpm_app.image import from_uint8  # noqa: E402
from ddpm_app.model_folder import DiffusionConfig, load_pretrained, save_pretrained  # noqa: E402
from ddpm_app.models import SeedUNet  # noqa: E402
from ddpm_app.schedule import Schedule  # noqa: E402


def input_statistics(model: SeedUNet, schedule: Schedule, x0: Tensor, generator: torch.Generator,
                     batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """Per channel of ``init_conv(x_t)``: the mean over images of its spatial mean and of its spatial standard deviation
    (as GroupNorm computes it, with its ε), x_t ~ q(x_t | x₀) at t uniform. (C,) each."""
    means, stds = [], []
    with torch.no_grad():
        for batch in x0.split(batch_size):
            t = torch.randint(0, schedule.timesteps, (batch.shape[0],), generator=generator)
            x_t = schedule.q_sample(batch, t, torch.randn(batch.shape, generator=generator))
            h = model.init_conv(x_t)  # (B, C, H, W)
            means.append(h.mean((2, 3)))
            stds.append((h.var((2, 3), unbiased=False) + model.downs[0].norm1.eps).sqrt())
    return torch.cat(means).mean(0), torch.cat(stds).mean(0)


def without_input_norm(model: SeedUNet, mean: Tensor, std: Tensor) -> SeedUNet:
    """``model`` with ``input_group_norm=False``: the first norm's weight w and bias b become w/σ̄ and b − w·μ̄/σ̄, the
    same map as the GroupNorm for an input whose statistics are (μ̄, σ̄)."""
    norm = model.downs[0].norm1
    state = dict(model.state_dict())
    state["downs.0.norm1.weight"] = norm.weight.detach() / std
    state["downs.0.norm1.bias"] = norm.bias.detach() - norm.weight.detach() * mean / std
    folded = SeedUNet(dataclasses.replace(model.config, input_group_norm=False))
    folded.load_state_dict(state)
    return folded.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a seed-net model folder with the tutorial's input GroupNorm")
    p.add_argument("data", help="the data pack it was trained on (its train/ split gives the statistics)")
    p.add_argument("out", help="the model folder to write")
    p.add_argument("--images", type=int, default=2048, help="training images the statistics are measured on")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    loaded = load_pretrained(args.model)
    model = loaded.model.float()
    if not isinstance(model, SeedUNet) or not model.config.input_group_norm:
        raise SystemExit(f"{args.model}: not a seed net with the tutorial's input GroupNorm")
    generator = torch.Generator().manual_seed(args.seed)
    images = load_pack(args.data, model.config.image_size, "train").images  # file order sorts by age: draw at random
    x0 = from_uint8(images[torch.randperm(len(images), generator=generator)[:args.images]])
    mean, std = input_statistics(model, loaded.schedule, x0, generator)
    folded = without_input_norm(model, mean, std)
    config = DiffusionConfig(folded.config, loaded.config.schedule,
                             training={"from": str(args.model), "input_statistics": {
                                 "images": len(x0), "mean": mean.tolist(), "std": std.tolist()}})
    save_pretrained(folded, config, args.out)
    print(f"wrote {args.out}: σ̄ from {std.min():.3f} to {std.max():.3f} over {len(std)} channels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
