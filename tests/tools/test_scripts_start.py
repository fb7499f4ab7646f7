"""Every benchmark, experiment and script starts as its docstring says (``python benchmarks/x.py``), from any
folder: its ``--help`` answers, so its imports of the package resolve without an installed package or a PYTHONPATH."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = [p for folder in ("benchmarks", "experiments", "scripts") for p in sorted((ROOT / folder).glob("*.py"))
           if "argparse" in p.read_text()]


def test_every_script_with_options_answers_help_from_another_folder(tmp_path):
    assert len(SCRIPTS) >= 15  # the folders are where this test looks
    running = {p: subprocess.Popen([sys.executable, str(p), "--help"], cwd=tmp_path, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True) for p in SCRIPTS}  # at once: each imports torch
    failed = {}
    for path, process in running.items():
        out, err = process.communicate(timeout=600)  # a guard against a hang only
        if process.returncode != 0 or "usage:" not in out:
            failed[str(path.relative_to(ROOT))] = err.strip().splitlines()[-1:]
    assert not failed, failed
