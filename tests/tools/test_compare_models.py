"""experiments/compare_models.py: two model folders on the same held-out images, timesteps and noise."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from conftest import perturb
from tiny_packs import utkface_pack

from ddpm_app.io.model_folder import save_pretrained

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
import compare_models  # noqa: E402


def figures(out: str) -> dict[str, tuple[float, float]]:
    rows = re.findall(r"^(.+?): held-out ε-MSE ([0-9.]+) .*?bits/dim ([0-9.]+) ", out, re.M)
    return {name: (float(mse), float(bpd)) for name, mse, bpd in rows}


def test_a_model_against_itself_differs_by_exactly_nothing(tiny_model_dir, tmp_path, capsys):
    pack = utkface_pack(tmp_path)
    assert compare_models.main([str(tiny_model_dir), str(tiny_model_dir), "--data", str(pack), "--bound-images", "4",
                                "--bound-timesteps", "6"]) == 0
    out = capsys.readouterr().out
    assert "B − A bits/dim: +0.0000 ± 0.0000 (paired" in out


def test_the_paired_difference_is_the_difference_of_the_two_models_figures(tiny_model, tiny_diffusion_config,
                                                                           tiny_model_dir, tmp_path, capsys):
    perturb(tiny_model, seed=1)  # another model than tiny_model_dir's
    other = save_pretrained(tiny_model, tiny_diffusion_config, tmp_path / "other")
    pack = utkface_pack(tmp_path)
    assert compare_models.main([str(tiny_model_dir), str(other), "--data", str(pack), "--bound-images", "6",
                                "--bound-timesteps", "6"]) == 0
    out = capsys.readouterr().out
    rows = figures(out)
    (mse_a, bpd_a), (mse_b, bpd_b) = rows[str(tiny_model_dir)], rows[str(other)]
    assert mse_a != mse_b
    difference = float(re.search(r"B − A bits/dim: ([-+0-9.]+)", out).group(1))
    assert difference == pytest.approx(bpd_b - bpd_a, abs=2e-4)  # the printed figures are rounded to 4 places
    assert abs(difference) > 1e-3
