"""The models in weights/: each loads, has its card and license, stays under the file-size limit, and samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ddpm_app import samplers
from ddpm_app.inference import prepare
from ddpm_app.model_folder import load_pretrained
from ddpm_app.schedule import Schedule

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
SHIPPED = sorted(d.name for d in WEIGHTS.iterdir() if (d / "config.json").is_file())
MAX_FILE_BYTES = 16 * 2 ** 20


def test_the_faces_and_emoji_models_ship():
    assert {"faces", "emoji"} <= set(SHIPPED)


@pytest.fixture(scope="module", params=SHIPPED)
def shipped(request):
    return request.param, load_pretrained(WEIGHTS / request.param)


def test_files_are_small_enough_and_the_card_names_the_license(shipped):
    name, _ = shipped
    folder = WEIGHTS / name
    assert all(f.stat().st_size <= MAX_FILE_BYTES for f in folder.iterdir())
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: ddpm-app\nlicense: ")
    assert "## Evaluation" in card and "![samples](samples.png)" in card
    assert (folder / "samples.png").is_file()
    expected = {"faces": "non-commercial", "emoji": "CC-BY-4.0"}.get(name)
    if expected:
        assert expected in card


def test_config_records_the_training(shipped):
    name, loaded = shipped
    training = json.loads((WEIGHTS / name / "config.json").read_text())["training"]
    assert training["weights"] == "ema" and training["images_seen"] > 1_000_000 and training["hardware"]
    assert loaded.config.image_size == 64 and loaded.config.channels == 3


def test_a_few_steps_on_cpu_give_images_that_depend_on_the_seed(shipped):
    _, loaded = shipped
    model = prepare(loaded.model, "cpu")
    schedule = Schedule(loaded.config.schedule)
    outs = []
    for seed in (0, 1):
        gen = torch.Generator().manual_seed(seed)
        x = samplers.final(samplers.ddim(model, schedule, (2, 3, 64, 64), steps=4, generator=gen, clip_x0=True))
        assert x.shape == (2, 3, 64, 64) and torch.isfinite(x).all()
        assert x.abs().max() <= 1.0 + 1e-5  # with clipping, the last DDIM step returns x̂₀ in [−1, 1]
        outs.append(x)
    assert (outs[0] - outs[1]).abs().mean() > 0.1


def test_early_guesses_are_saturated_noise_and_the_layout_settles_by_t700(shipped):
    """What the Frames help says about x̂₀ along a clipped DDIM chain: at t = 999 most values sit at ±1 and
    neighbouring pixels differ like noise (not a blurry average); by t ≈ 700 x̂₀ is close to the final image."""
    _, loaded = shipped
    model = prepare(loaded.model, "cpu")
    schedule = Schedule(loaded.config.schedule)
    steps = list(samplers.ddim(model, schedule, (2, 3, 64, 64), steps=20, clip_x0=True,
                               generator=torch.Generator().manual_seed(0)))
    final = steps[-1].x_prev
    first = steps[0].pred_x0
    assert steps[0].t == 999
    assert (first.abs() > 0.99).float().mean() > 0.4  # saturated colours
    neighbour_difference = (first[..., 1:, :] - first[..., :-1, :]).abs().mean()
    assert neighbour_difference > 5 * (final[..., 1:, :] - final[..., :-1, :]).abs().mean()  # noise, not blur
    settled = next(s for s in steps if s.t <= 700).pred_x0
    assert torch.corrcoef(torch.stack([settled.flatten(), final.flatten()]))[0, 1] > 0.7
