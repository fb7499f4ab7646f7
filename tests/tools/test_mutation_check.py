"""The mutation check's list still fits the code: every pattern occurs exactly once and the mutated file compiles.

A change that moves or rewrites a mutated line fails here, with the mutation's name, until the list in
scripts/mutation_check.py is updated; the check itself (slow) is run by hand.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "mutation_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("mutation_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_mutation_matches_its_source_exactly_once():
    script = load_script()
    assert script.check_all(script.ROOT, script.MUTATIONS) == []
    assert len(script.MUTATIONS) >= 40
    # every subpackage and module named here has mutations
    covered = {part.removesuffix(".py") for m in script.MUTATIONS for part in m.path.split("/")[1:]}
    assert {"schedule", "samplers", "likelihood", "training", "model_folder", "inference", "models", "data",
            "serve", "views", "loss", "heldout", "interpolation", "openvino_net", "cpu", "evaluate", "image"} <= covered
    paths = {m.path for m in script.MUTATIONS}
    assert {"ddpm_app/views/compare.py", "ddpm_app/views/likelihood.py", "ddpm_app/serve/served.py"} <= paths


def test_a_pattern_that_no_longer_matches_is_an_error(tmp_path):
    script = load_script()
    (tmp_path / "ddpm_app").mkdir()
    (tmp_path / "ddpm_app" / "x.py").write_text("a = 1\na = 1\n")
    twice = script.Mutation("twice", "ddpm_app/x.py", "a = 1", "a = 2", ("tests/test_x.py",), "")
    gone = script.Mutation("gone", "ddpm_app/x.py", "b = 1", "b = 2", ("tests/test_x.py",), "")
    problems = script.check_all(tmp_path, [twice, gone])
    assert any("twice: 'a = 1' occurs 2 times" in p for p in problems)
    assert any("gone: 'b = 1' occurs 0 times" in p for p in problems)
    assert any("no test file tests/test_x.py" in p for p in problems)
