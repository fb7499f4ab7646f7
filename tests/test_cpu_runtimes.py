"""benchmarks/cpu_runtimes.py: its error measure, its interleaved timing, and what it does without the runtimes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import cpu_runtimes  # noqa: E402


def test_relative_error_is_the_norm_of_the_difference_over_the_norm_of_the_reference():
    ref = np.array([[3.0, 4.0]])  # norm 5
    assert cpu_runtimes.relative_error(ref, ref) == 0.0
    assert cpu_runtimes.relative_error(ref + np.array([[0.0, 0.5]]), ref) == pytest.approx(0.1)


def test_a_missing_runtime_is_reported_as_not_installed():
    assert cpu_runtimes.installed("numpy") and not cpu_runtimes.installed("no_such_runtime_module_here")
