"""Why deterministic DDIM leaves colour noise in seed-faces' samples: the network cannot see the amplitude of x_t.

    python experiments/seed_ddim_noise.py PACK.zip [--seed-net weights/seed-faces] [--faces weights/faces]
                                      [--also FOLDER ...] [--grid control.png]

On the CPU, in about five minutes:

1. **Amplitude gain**: d log‖ε̂‖ / d log c for x_t → c·x_t, on 16 noised test faces (1: ε̂ grows with the input,
   0: ε̂ cannot tell). The seed tutorial's first block normalises ``init_conv``'s output with GroupNorm(32, 32), one
   channel per group, and every block normalises its whole input, shortcut included: its gain is 0.
2. **The control**: the same DDIM-50 runs, from the same 8 x_T, for the seed net, the ``faces`` network, and the
   ``faces`` network made blind to amplitude alone (each x_t rescaled to the standard deviation that q(x_t | x₀) gives
   at its t, per image or per image and RGB channel, before the network sees it). The figure is the RMS of the
   high-frequency chroma (R − G, B − G minus their 3×3 mean) of the final images: about 0.005 for clean faces.
3. The same figure for x̂₀ along each trained network's η = 0 path: where the noise stops being taken out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ddpm_app.diffusion import samplers  # noqa: E402
from ddpm_app.io.data import load_pack  # noqa: E402
from ddpm_app.image import from_uint8, save_grid  # noqa: E402
from ddpm_app.io.loading import load_pretrained  # noqa: E402
from ddpm_app.diffusion.samplers import EpsModel  # noqa: E402
from ddpm_app.diffusion.schedule import Schedule, extract  # noqa: E402

GAIN_TIMESTEPS = (20, 100, 300, 600, 900)
SAMPLES = 8


def chroma_noise(x: Tensor) -> Tensor:
    """RMS of the high-frequency chroma of each image (B, 3, H, W) → (B,): R − G and B − G minus their 3×3 mean."""
    chroma = torch.stack([x[:, 0] - x[:, 1], x[:, 2] - x[:, 1]], 1)
    detail = chroma - F.avg_pool2d(chroma, 3, 1, 1, count_include_pad=False)
    return detail[..., 2:-2, 2:-2].pow(2).mean((1, 2, 3)).sqrt()


def amplitude_gain(model: EpsModel, schedule: Schedule, x0: Tensor, noise: Tensor, t: int) -> float:
    """d log‖ε̂‖ / d log c at c = 1, by a 10 % step, for x_t ~ q(x_t | x₀) at timestep t."""
    tt = torch.full((x0.shape[0],), t)
    x_t = schedule.q_sample(x0, tt, noise)
    eps = model(x_t, tt)
    return float(((model(1.1 * x_t, tt) - eps) * eps).sum() / eps.pow(2).sum() / 0.1)


def amplitude_blind(model: EpsModel, schedule: Schedule, variance: Tensor, per_channel: bool) -> EpsModel:
    """``model`` seeing each x_t rescaled about its mean to the standard deviation q(x_t | x₀) gives at t:
    √(ᾱ_t·v + 1 − ᾱ_t), with v the training images' mean variance within an image (per RGB channel, ``variance``)."""
    def blind(x: Tensor, t: Tensor) -> Tensor:
        abar = extract(schedule.alphas_cumprod, t, x.shape)
        expected = (abar * variance.view(1, -1, 1, 1) + 1 - abar).sqrt()  # (B, C, 1, 1)
        mean = x.mean((2, 3), keepdim=True)
        if per_channel:
            spread = x.std((2, 3), keepdim=True)
        else:
            spread = (x - mean).pow(2).mean((1, 2, 3), keepdim=True).sqrt()
            expected = expected.pow(2).mean(1, keepdim=True).sqrt()
        return model(mean + (x - mean) * expected / spread, t)
    return blind


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", help="the faces pack (test/ for the gain, train/ for the images' variance)")
    p.add_argument("--seed-net", default="weights/seed-faces")
    p.add_argument("--faces", default="weights/faces")
    p.add_argument("--also", nargs="*", default=[], help="more model folders to measure and sample")
    p.add_argument("--grid", default=None, help="save the final images, one row per network and η")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    models = {name: load_pretrained(name) for name in [args.seed_net, args.faces, *args.also]}
    for loaded in models.values():
        loaded.model.float().eval()
    schedule = models[args.faces].schedule
    x0 = from_uint8(load_pack(args.data, 64, "test", limit=16).images)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    print("amplitude gain d log|ε̂| / d log c at t = " + ", ".join(map(str, GAIN_TIMESTEPS)))
    for name, loaded in models.items():
        gains = [amplitude_gain(loaded.model, schedule, x0, noise, t) for t in GAIN_TIMESTEPS]
        print(f"  {name:40s} " + " ".join(f"{g:6.3f}" for g in gains))

    train = load_pack(args.data, 64, "train").images
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:2000]
    variance = from_uint8(train[pick]).var((2, 3)).mean(0)  # (3,)
    faces = models[args.faces].model
    nets = {name: loaded.model for name, loaded in models.items()}
    nets[f"{args.faces}, amplitude pinned per image"] = amplitude_blind(faces, schedule, variance, False)
    nets[f"{args.faces}, amplitude pinned per RGB channel"] = amplitude_blind(faces, schedule, variance, True)
    x_T = torch.randn(SAMPLES, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    print(f"\nDDIM-50, x̂₀ clipped, {SAMPLES} samples from the same x_T: high-frequency chroma RMS of each final image")
    rows, paths = [], {}
    for name, net in nets.items():
        for eta in (0.0, 1.0):
            chain = list(samplers.ddim(net, schedule, tuple(x_T.shape), steps=50, eta=eta, x_start=x_T,
                                       clip_x0=True, generator=torch.Generator().manual_seed(1)))
            x = chain[-1].x_prev
            rows.append(x)
            noise_rms = chroma_noise(x)
            print(f"  η = {eta:g}  {name:48s} mean {noise_rms.mean():.3f}:  "
                  + " ".join(f"{v:.3f}" for v in noise_rms.tolist()))
            if eta == 0 and name in models:
                paths[name] = [(step.t, float(chroma_noise(step.pred_x0).mean())) for step in chain[::5] + chain[-1:]]
    print("\nthe same in x̂₀ along the η = 0 path (mean over the samples), at t:")
    for name, path in paths.items():
        print(f"  {name:40s} " + " ".join(f"{t}: {v:.3f}" for t, v in path))
    if args.grid:
        save_grid(torch.cat(rows), args.grid, nrow=SAMPLES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
