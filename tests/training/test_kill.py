"""kill -9 a training process, mid-checkpoint-write and at random moments, then --resume until it finishes.

After every kill, ``checkpoint.pt`` is absent or a whole, loadable checkpoint no older than the one before, and
temp files never stand in for it. The run that survives ends with the same step and the same bits as a run that
was never interrupted.

The subprocess is train.py behind a launcher that makes ``torch.save`` write in slow chunks, so that a
checkpoint write lasts long enough (~0.1 s) to be killed in the middle of.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import PATIENCE
from tiny_runs import PYTHON, REPO, subprocess_env, train_args, write_folder

from ddpm_app.training.checkpoint import CHECKPOINT_NAME, load_checkpoint

pytestmark = pytest.mark.slow

STEPS = 32

SLOW_SAVE_LAUNCHER = """
import io, sys, time
import torch
sys.path.insert(0, {repo!r})

_save = torch.save

def slow_save(obj, f, *args, **kwargs):
    buf = io.BytesIO()
    _save(obj, buf, *args, **kwargs)
    data = buf.getvalue()
    chunk = len(data) // 8 + 1
    for i in range(0, len(data), chunk):
        f.write(data[i:i + chunk])
        f.flush()
        time.sleep(0.012)

torch.save = slow_save
import train
sys.exit(train.main(sys.argv[1:]))
"""


def temp_files(out: Path) -> list[Path]:
    return list(out.glob(CHECKPOINT_NAME + ".tmp*"))


def wait(condition, proc: subprocess.Popen, timeout: float = PATIENCE) -> bool:
    """Poll ``condition`` every 2 ms; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, "the training process made no progress"
        time.sleep(0.002)
    return True


def test_kill_9_at_random_points_then_resume_matches_an_uninterrupted_run(tmp_path):
    data = write_folder(tmp_path / "pictures")
    out = tmp_path / "run"
    launcher = tmp_path / "slow_save_train.py"
    launcher.write_text(SLOW_SAVE_LAUNCHER.format(repo=str(REPO)))
    args = train_args(data, out, "--split", "", "--save-every", "2", "--log-every", "2", steps=STEPS)

    def start() -> subprocess.Popen:
        resume = ["--resume"] if (out / CHECKPOINT_NAME).is_file() else []
        with (tmp_path / "stderr.txt").open("w") as log:  # a file, not a pipe: a full pipe would stall the process
            return subprocess.Popen([PYTHON, str(launcher), *args, *resume], cwd=REPO, env=subprocess_env(),
                                    stdout=subprocess.DEVNULL, stderr=log)

    def stderr() -> str:
        return (tmp_path / "stderr.txt").read_text()

    rng = random.Random(20240611)
    last_step, mid_write_kills, stale = 0, 0, []
    for trigger in ("mid-write", "random", "mid-write"):
        proc = start()
        own_temp = out / f"{CHECKPOINT_NAME}.tmp{proc.pid}"
        # let this process finish one checkpoint first, so that every round moves the run forward
        alive = wait(own_temp.exists, proc) and wait(lambda: not own_temp.exists(), proc)
        if trigger == "mid-write":
            alive = alive and wait(own_temp.exists, proc)  # the next write has begun
        else:
            time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert alive and proc.returncode == -signal.SIGKILL, stderr()[-2000:]

        if trigger == "mid-write" and own_temp.exists():  # killed with a half-written temp file on disk
            mid_write_kills += 1
        stale += temp_files(out)
        ckpt = load_checkpoint(out / CHECKPOINT_NAME)  # always a whole checkpoint under the final name
        assert ckpt["step"] % 2 == 0 and last_step <= ckpt["step"] < STEPS
        assert ckpt["step"] > 0
        last_step = ckpt["step"]
    assert mid_write_kills >= 1 and stale  # (a very late poll could let one write finish before the kill)

    # the last resume runs to the end; stale temp files are cleared, not read
    proc = start()
    proc.wait(timeout=PATIENCE)
    assert proc.returncode == 0, stderr()[-3000:]
    assert f"resuming at step {last_step}" in stderr()
    assert temp_files(out) == []
    final = load_checkpoint(out / CHECKPOINT_NAME)
    assert final["step"] == STEPS
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(2, STEPS + 1, 2))  # logged past a checkpoint, killed, logged again: kept once

    # the same bits as a run that was never interrupted, in a fresh process as each part of this one was (what earlier
    # tests did to this process, OpenVINO's or a thread setting, must not decide a bit)
    reference = subprocess.run([PYTHON, "train.py", *train_args(data, tmp_path / "reference", "--split", "",
                                                                "--save-every", str(STEPS), "--log-every", str(STEPS),
                                                                steps=STEPS)],
                               cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=PATIENCE)
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = load_checkpoint(tmp_path / "reference" / CHECKPOINT_NAME)
    assert final["images_seen"] == expected["images_seen"] == STEPS * 8
    for key in ("model", "ema"):
        for name, value in expected[key].items():
            assert torch.equal(final[key][name], value), f"{key}.{name}"
    for i, state in expected["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(final["optimizer"]["state"][i][name], value)
    assert torch.equal(final["generator"], expected["generator"])
