"""Every benchmark, experiment and script starts as its docstring says (``python benchmarks/x.py``), from any
folder: its ``--help`` answers, so its imports of the package resolve without an installed package or a PYTHONPATH;
and every such command in them and in the docs names a file that is there."""

from __future__ import annotations

import re
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


def test_every_command_names_a_script_that_is_there():
    """``python experiments/x.py`` in a script, the README or a page of docs/ runs a file of that path: a script that
    moves takes its usage lines along (docs/speed/ keeps the commands that made old measurements, as they ran)."""
    command = re.compile(r"(?:python|bash) ((?:benchmarks|experiments|scripts)/[\w/]+\.(?:py|sh))")
    texts = [p for folder in ("benchmarks", "experiments", "scripts") for p in sorted((ROOT / folder).iterdir())
             if p.suffix in (".py", ".sh")] + [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    named = {(str(p.relative_to(ROOT)), path) for p in texts for path in command.findall(p.read_text())}
    assert len(named) >= 20  # the pattern finds the commands
    missing = sorted((where, path) for where, path in named if not (ROOT / path).is_file())
    assert not missing, missing
