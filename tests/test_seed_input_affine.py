"""scripts/seed_input_affine.py: a seed net without the input GroupNorm's statistics, started from one with them."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import torch
from conftest import perturb, seeded_init

from ddpm_app.model_folder import DiffusionConfig, SamplingDefaults, load_pretrained, save_pretrained
from ddpm_app.models import SeedUNet, SeedUNetConfig
from ddpm_app.schedule import Schedule, ScheduleConfig
from tiny_packs import utkface_pack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import seed_input_affine  # noqa: E402

CONFIG = SeedUNetConfig(image_size=64, down_channels=(32, 64), dropout=0.0)


def test_folding_an_images_own_statistics_gives_the_same_network_for_that_image():
    """y = w·(h − μ)/σ + b is what the GroupNorm computes when (μ, σ) are the input's own statistics."""
    model = perturb(seeded_init(lambda: SeedUNet(CONFIG)), scale=0.02).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([250])
    with torch.no_grad():
        h = model.init_conv(x)
        mean = h.mean((0, 2, 3))
        std = (h.var((0, 2, 3), unbiased=False) + model.downs[0].norm1.eps).sqrt()
        folded = seed_input_affine.without_input_norm(model, mean, std)
        assert folded.config == replace(CONFIG, input_group_norm=False)
        torch.testing.assert_close(folded(x, t), model(x, t), rtol=1e-4, atol=1e-4)
        # another image has other statistics: the folded network now sees what the GroupNorm hid
        assert not torch.allclose(folded(2 * x, t), model(2 * x, t), atol=1e-3)


def test_input_statistics_follow_the_amplitude_of_x_t():
    model = perturb(seeded_init(lambda: SeedUNet(CONFIG)), scale=0.02).eval()
    schedule = Schedule(ScheduleConfig(timesteps=100))
    x0 = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    mean, std = seed_input_affine.input_statistics(model, schedule, x0, torch.Generator().manual_seed(2))
    assert mean.shape == std.shape == (CONFIG.init_dim,) and (std > 0).all()
    with torch.no_grad():  # x_t has about unit variance, so init_conv's output has about its weights' spread
        spread = model.init_conv.weight.flatten(1).norm(dim=1)
    assert 0.3 < float((std / spread).median()) < 3


def test_cli_writes_a_folder_without_the_input_norm_or_the_old_sampling_defaults(tmp_path, capsys):
    model = perturb(seeded_init(lambda: SeedUNet(CONFIG)), scale=0.02).eval()
    source = save_pretrained(model, DiffusionConfig(CONFIG, ScheduleConfig(timesteps=50),
                                                    sampling=SamplingDefaults(ddim_eta=1.0, why="noise")),
                             tmp_path / "tutorial")
    out = tmp_path / "start"
    assert seed_input_affine.main([str(source), str(utkface_pack(tmp_path)), str(out), "--images", "6"]) == 0
    assert "wrote" in capsys.readouterr().out
    loaded = load_pretrained(out)
    assert loaded.config.model == replace(CONFIG, input_group_norm=False)
    assert loaded.config.sampling == SamplingDefaults() and loaded.config.schedule == ScheduleConfig(timesteps=50)
    saved = json.loads((out / "config.json").read_text())
    assert saved["training"]["input_statistics"]["images"] == 6
    for name, tensor in model.state_dict().items():  # only the first norm's weight and bias differ
        same = torch.equal(loaded.model.state_dict()[name], tensor)
        assert same != name.startswith("downs.0.norm1."), name
