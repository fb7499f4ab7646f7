"""experiments/ddim_brightness.py: how much of each sample's brightness its starting noise's mean decides."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from tiny_packs import utkface_pack

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
import ddim_brightness  # noqa: E402


def test_corr_is_pearsons():
    a = torch.tensor([1.0, 2.0, 4.0, 8.0])
    assert ddim_brightness.corr(a, 3 * a + 1) == pytest.approx(1.0)
    assert ddim_brightness.corr(a, -a) == pytest.approx(-1.0)
    b = torch.tensor([1.0, -1.0, -1.0, 1.0])
    expected = float(torch.corrcoef(torch.stack([a, b]))[0, 1])  # torch's own, an independent computation
    assert ddim_brightness.corr(a, b) == pytest.approx(expected)


def test_a_row_per_model_and_eta_and_the_grid(tiny_model_dir, tmp_path, capsys):
    pack = utkface_pack(tmp_path)
    grid = tmp_path / "grid.png"
    assert ddim_brightness.main([str(pack), "--models", str(tiny_model_dir), "--samples", "6", "--steps", "5",
                                 "--grid", str(grid)]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\| (\S+) \| ([01]) \| (-?[0-9.]+) \| (-?[0-9.]+) \| (-?[0-9.]+) \| (\d+) of 6 \|$", out, re.M)
    assert [(r[0], r[1]) for r in rows] == [(str(tiny_model_dir), "0"), (str(tiny_model_dir), "1")]
    assert all(-1 <= float(v) <= 1 for r in rows for v in r[2:5])
    assert grid.is_file()
    assert torch.is_grad_enabled()  # the tests after this one train

