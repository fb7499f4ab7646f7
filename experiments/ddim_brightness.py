"""How much of a deterministic DDIM sample's brightness its starting noise's mean decides.

    python experiments/ddim_brightness.py PACK.zip [--models weights/faces weights/seed-faces] [--samples 64]
                                          [--steps 50] [--grid brightness.png]

At η = 0 the chain is a fixed map from x_T to the image, so whatever x_T holds at low frequencies (its mean over the
image, per RGB channel, and its coarse layout) can decide the image's brightness and colour. With the linear schedule
x_T still holds √ᾱ_T ≈ 0.006 of a training image, so on the training distribution x_T's mean does carry a little
information about the image's; a network that uses it, followed along a path that never adds noise, turns a random
tilt of x_T into a pale or dark face. DDPM and DDIM at η > 0 add fresh noise at every step, which the network treats
as noise, so the final image largely forgets x_T's tilt.

On the CPU, for each model, DDIM (50 steps) from the same ``--samples`` x_T at η = 0 and η = 1 (x̂₀ clipped), then:

- the correlation over samples between x_T's mean (over pixels and channels) and the image's mean brightness;
- the same per channel (x_T's channel mean against the image's), averaged over the channels;
- the correlation between x_T and the image at 4×4 (each averaged over blocks of a quarter of the side, per
  channel), pooled;
- how many images lie outside the range of 98 % of the test faces' mean brightness (the 1st to 99th percentile).
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
from ddpm_app.image import from_uint8, save_grid  # noqa: E402
from ddpm_app.io.data import load_pack  # noqa: E402
from ddpm_app.io.loading import load_pretrained  # noqa: E402


def corr(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of two flat samples."""
    a, b = a.flatten().double() - a.double().mean(), b.flatten().double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


@torch.no_grad()  # a context, not set_grad_enabled(False): main also runs inside the tests' process
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", help="the faces pack (its test/ gives the brightness range of real faces)")
    p.add_argument("--models", nargs="+", default=["weights/faces", "weights/seed-faces"])
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--grid", default=None, help="save the images: per model, a row of η = 0 above one of η = 1")
    args = p.parse_args(argv)
    models = [load_pretrained(folder) for folder in args.models]
    size, channels = models[0].config.image_size, models[0].config.channels
    if any((m.config.image_size, m.config.channels) != (size, channels) for m in models):
        raise SystemExit("the models must share their image size and channels: they start from the same x_T")
    test = from_uint8(load_pack(args.data, size, "test").images)
    low, high = torch.quantile(test.mean((1, 2, 3)), torch.tensor([0.01, 0.99], dtype=test.dtype)).tolist()
    x_T = torch.randn(args.samples, channels, size, size, generator=torch.Generator().manual_seed(0))
    print(f"{args.samples} x_T (seed 0); test faces' mean brightness, 1st–99th percentile: {low:.3f} … {high:.3f}")
    print("| model | η | corr(x_T mean, image mean) | per channel | at 4×4 | outside the test range |")
    print("|---|---|---|---|---|---|")
    rows = []
    for folder, loaded in zip(args.models, models):
        net = loaded.model.float().eval()
        for eta in (0.0, 1.0):
            x = samplers.final(samplers.ddim(net, loaded.schedule, tuple(x_T.shape), steps=args.steps, eta=eta,
                                             x_start=x_T, clip_x0=True, generator=torch.Generator().manual_seed(1)))
            x = x.clamp(-1, 1)
            rows.append(x[:8])
            whole = corr(x_T.mean((1, 2, 3)), x.mean((1, 2, 3)))
            channel = sum(corr(x_T[:, c].mean((1, 2)), x[:, c].mean((1, 2))) for c in range(channels)) / channels
            coarse = corr(F.avg_pool2d(x_T, size // 4), F.avg_pool2d(x, size // 4))
            brightness = x.mean((1, 2, 3))
            outside = int(((brightness < low) | (brightness > high)).sum())
            print(f"| {folder} | {eta:g} | {whole:.2f} | {channel:.2f} | {coarse:.2f} | {outside} of {len(x)} |",
                  flush=True)
    if args.grid:
        save_grid(torch.cat(rows), args.grid, nrow=8)
        print(f"grid → {args.grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
