"""experiments/profile_stream.py: how py-spy stacks of the server are sorted into parts of the work."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "experiments")]
import app_stream  # noqa: E402
import profile_stream  # noqa: E402


def test_stacks_are_counted_by_part_with_the_sampler_first_and_shares_summing_to_100():
    raw = [
        "_bootstrap (threading.py:1);advance (runs.py:2);sample (samplers.py:3);forward (unet.py:4) 90",
        "_bootstrap (threading.py:1);advance (runs.py:2);_preview (ui.py:9);preview_file (ui.py:10) 6",
        "run (asyncio/base_events.py:1);postprocess_data (blocks.py:2);postprocess (image.py:3) 3",
        "main (app.py:1);something (x.py:2) 1",
        "garbage line without a count",
    ]
    rows = profile_stream.shares(raw)
    assert rows[0] == ("network and sampler", 90, pytest.approx(90.0))
    assert dict((name, n) for name, n, _ in rows) == {"network and sampler": 90, "preview JPEG files": 6,
                                                       "Gradio postprocess": 3, "other": 1}
    assert sum(share for _, _, share in rows) == pytest.approx(100.0)
    assert profile_stream.part_of("a;EpollSelector.select (selectors.py:1)") == "event loop waiting"


def test_the_server_is_started_with_only_the_flags_its_caller_has(monkeypatch, tmp_path):
    """app_stream.start_server serves both benchmarks: a flag their arguments lack is left to app.py's default."""
    started = []

    class Stop(Exception):
        pass

    def popen(cmd, **kwargs):
        started.append(cmd)
        raise Stop

    monkeypatch.setattr(subprocess, "Popen", popen)
    with pytest.raises(Stop):  # profile_stream's arguments: no --cpu-runtime, --device or --precision of its own
        app_stream.start_server(tmp_path / "app.py", argparse.Namespace(weights="w", model="faces", threads=2), 0.2)
    with pytest.raises(Stop):
        app_stream.start_server(tmp_path / "app.py", argparse.Namespace(
            weights="w", model=None, device="cpu", threads=None, precision="fp32", cpu_runtime="pytorch"), None)
    first, second = (cmd[2:] for cmd in started)
    assert first[first.index("--model"):] == ["--model", "faces", "--threads", "2"]
    assert "--preview-interval" in first and first[first.index("--preview-interval") + 1] == "0.2"
    assert second[second.index("--device"):] == ["--device", "cpu", "--precision", "fp32", "--cpu-runtime", "pytorch"]
    assert second[second.index("--preview-interval") + 1] == "-1"


def test_a_servers_log_says_how_it_runs_and_rows_on_other_networks_are_told_apart(monkeypatch, tmp_path):
    """app_stream prints each server's "sampling on" line: a row whose server chose bf16 while the bare sampler
    chose fp32 compares precisions, not the server's overhead."""
    logged = []

    class Stop(Exception):
        pass

    def popen(cmd, stderr=None, **kwargs):
        stderr.write("torch threads: 2\nsampling on cpu: X, 2 threads, bf16 (auto: bf16 faster)\n")
        logged.append(stderr.name)
        raise Stop

    monkeypatch.setattr(subprocess, "Popen", popen)
    log = tmp_path / "server-on.log"
    with pytest.raises(Stop):
        app_stream.start_server(tmp_path / "app.py", argparse.Namespace(weights="w"), 0.2, log)
    assert logged == [str(log)]
    runs = app_stream.runs_on(log)
    assert runs == "cpu: X, 2 threads, bf16 (auto: bf16 faster)"
    assert app_stream.network_of(runs) == "cpu: X, 2 threads, bf16"
    assert app_stream.network_of("cpu: X, 2 threads, fp32 (auto: bf16 slower)") != app_stream.network_of(runs)
    (tmp_path / "quiet.log").write_text("torch threads: 2\n")
    assert "no 'sampling on' line" in app_stream.runs_on(tmp_path / "quiet.log")
