"""The held-out figures: what a model scores on the held-out split of its data, kept beside its weights as
``heldout.json``.

Two numbers a learner compares their own photo with: the loss against t (:func:`ddpm_app.diffusion.loss.loss_curve`) and the
bound in bits/dim (:func:`ddpm_app.diffusion.likelihood.bits_per_dim`), both over the data pack's ``test/`` split. The file is
optional: a model folder without it loads as before, and the app says the comparison is missing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ddpm_app.diffusion.likelihood import BitsPerDim, bits_per_dim
from ddpm_app.diffusion.loss import LossCurve, curve_timesteps, loss_curve
from ddpm_app.diffusion.samplers import EpsModel
from ddpm_app.diffusion.schedule import Schedule
from ddpm_app.image import from_uint8
from ddpm_app.io.data import DatasetError, load_pack
from ddpm_app.text import CatalogueError

HELDOUT_NAME = "heldout.json"
LOSS_TIMESTEPS = 50  # points of the stored loss curve, evenly spaced over the schedule
HELDOUT_IMAGES = 256  # images of the held-out figures measured at export (the first of the split)
BOUND_TIMESTEPS = 100  # timesteps of the bits/dim estimate at export (the decoder and 99 strata)


class HeldOutError(CatalogueError, ValueError):
    """heldout.json exists but cannot be read; the message names the file."""


@dataclass(frozen=True)
class HeldOut:
    """Held-out figures of one model: where they come from and how they were computed."""

    data: str  # e.g. "utkface-64.zip, split test"
    method: str  # how: images, timesteps, draws, device
    loss: LossCurve | None
    bpd: BitsPerDim | None

    def to_dict(self) -> dict:
        return dict(data=self.data, method=self.method, loss=self.loss and self.loss.to_dict(),
                    bpd=self.bpd and asdict(self.bpd))

    @classmethod
    def from_dict(cls, data: dict) -> HeldOut:
        bpd = data.get("bpd")
        if bpd is not None:
            bpd = BitsPerDim(**(bpd | {"per_timestep": [tuple(row) for row in bpd["per_timestep"]]}))
        loss = data.get("loss")
        return cls(str(data.get("data", "")), str(data.get("method", "")),
                   None if loss is None else LossCurve.from_dict(loss), bpd)


def save(heldout: HeldOut, folder: str | Path) -> Path:
    path = Path(folder) / HELDOUT_NAME
    path.write_text(json.dumps(heldout.to_dict(), indent=1) + "\n")
    return path


def load(folder: str | Path) -> HeldOut | None:
    """The folder's held-out figures, or None if it has none (a model exported before they were kept)."""
    path = Path(folder) / HELDOUT_NAME
    if not path.is_file():
        return None
    try:
        return HeldOut.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise HeldOutError("heldout.unreadable", path=path, error=f"{type(e).__name__}: {e}") from None


def measure(model: EpsModel, schedule: Schedule, images: torch.Tensor, data: str, *,
            loss_timesteps: int = LOSS_TIMESTEPS, draws: int = 1, bound_timesteps: int | None = BOUND_TIMESTEPS,
            batch_size: int = 256, seed: int = 0, device: torch.device | str = "cpu",
            bpd: BitsPerDim | None = None, where: str | None = None) -> HeldOut:
    """The loss curve and the bits/dim bound of uint8 images (N, C, H, W) under ``model`` (on ``device``).

    ``bpd``: a bound measured elsewhere (e.g. exactly, by :mod:`ddpm_app.metrics.evaluate`) to store instead of estimating
    one here; ``where`` names the machine in the record of how the figures were made."""
    device = torch.device(device)
    x0 = from_uint8(images).to(device)
    curve = loss_curve(model, schedule, x0, curve_timesteps(schedule.timesteps, loss_timesteps), draws=draws,
                       generator=torch.Generator(device).manual_seed(seed), batch_size=batch_size)
    method = (f"loss: {len(images)} held-out images, {len(curve.timesteps)} timesteps × {draws} ε per image "
              f"(on {where or device.type})")
    if bpd is None:
        bpd = bits_per_dim(model, schedule, images, num_timesteps=bound_timesteps, batch_size=batch_size,
                           generator=torch.Generator(device).manual_seed(seed + 1), clip_x0=True, device=device)
        method += f"; {bpd.label} over the same images, x̂₀ clipped"
    else:
        method += f"; {bpd.label} over {bpd.num_images} held-out images, measured separately"
    return HeldOut(data, method, curve, bpd)


def measure_folder(folder: str | Path, data: str | Path, *, split: str = "test", limit: int = HELDOUT_IMAGES,
                   device: torch.device | str = "cpu", **kwargs) -> HeldOut | None:
    """Measure the model in ``folder`` on the ``split`` of its data pack and save heldout.json beside it; None
    (and no file) when the pack has no such split."""
    from ddpm_app.io.loading import load_local
    from ddpm_app.runtime.inference import prepare

    loaded = load_local(folder, device)
    try:
        pack = load_pack(data, loaded.config.image_size, split=split, limit=limit)
    except DatasetError:
        return None
    images = pack.images if loaded.config.channels == 3 else pack.images.float().mean(1, keepdim=True).round().byte()
    network = prepare(loaded.model, device, compile=False, precision="fp32")
    heldout = measure(network, loaded.schedule.to(device), images, f"{Path(data).name}, split {split}",
                      device=device, **kwargs)
    save(heldout, folder)
    return heldout
