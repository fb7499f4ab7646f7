"""torchrun with 2 CPU processes (gloo): data shards, rank-0-only output, a stop both ranks agree on, resume, export.

train.py runs under ``python -m torch.distributed.run`` through a small launcher that records, per rank, the
data shard it trains on and the state of its random stream (in a folder of its own, not the run folder).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import PATIENCE
from tiny_runs import PYTHON, REPO, subprocess_env, train_args, write_folder

from ddpm_app.io.data import load_pack
from ddpm_app.io.loading import load_pretrained
from ddpm_app.training.checkpoint import CHECKPOINT_NAME, load_checkpoint

pytestmark = pytest.mark.slow

LAUNCHER = """
import os, sys
import torch
sys.path.insert(0, {repo!r})
from ddpm_app.training import trainer as training
import train

record = os.environ["TRAIN_TEST_RECORD"]
init = training.Trainer.__init__

def recording_init(self, *args, **kwargs):
    init(self, *args, **kwargs)
    path = os.path.join(record, f"rank{{self.dist.rank}}.pt")
    torch.save({{"rank": self.dist.rank, "world_size": self.dist.world_size, "pid": os.getpid(),
                "step": self.step, "shard": self.images, "generator": self.gen.get_state()}}, path + ".tmp")
    os.replace(path + ".tmp", path)

training.Trainer.__init__ = recording_init
sys.exit(train.main(sys.argv[1:]))
"""


def torchrun(launcher: Path, args: list[str], record: Path) -> subprocess.Popen:
    """Start 2 ranks of train.py; output goes to ``record/log.txt``, each rank's record to ``record/rankR.pt``."""
    record.mkdir(parents=True, exist_ok=True)
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(launcher), *args]
    env = subprocess_env() | {"TRAIN_TEST_RECORD": str(record)}
    with (record / "log.txt").open("w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log = record / "log.txt"
    return proc


def finish(proc: subprocess.Popen, timeout: float = PATIENCE) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"torchrun did not finish in {timeout} s (a rank left waiting?):\n{proc.log.read_text()[-3000:]}")
    out = proc.log.read_text()
    assert proc.returncode == 0, out[-3000:]
    return out


def wait_for(condition, proc: subprocess.Popen, timeout: float = PATIENCE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"torchrun exited early:\n{proc.log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("timed out waiting for the run to start")
        time.sleep(0.05)


def records(folder: Path) -> list[dict]:
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def test_two_process_run_shards_stops_together_resumes_and_exports(tmp_path):
    data = write_folder(tmp_path / "pictures", n=10)
    out = tmp_path / "run"
    launcher = tmp_path / "launch_train.py"
    launcher.write_text(LAUNCHER.format(repo=str(REPO)))

    # 1. a long run; Ctrl-C reaches rank 1 only. Both ranks must stop at the same step, with a checkpoint.
    first = torchrun(launcher, train_args(data, out, "--split", "", steps=1000), tmp_path / "rec1")
    wait_for(lambda: (tmp_path / "rec1" / "rank1.pt").is_file() and (out / "metrics.jsonl").is_file()
             and (out / "metrics.jsonl").read_text().count("\n") >= 1, first)
    rank1_pid = torch.load(tmp_path / "rec1" / "rank1.pt", weights_only=True)["pid"]
    os.kill(rank1_pid, signal.SIGINT)
    log = finish(first)
    stopped = load_checkpoint(out / CHECKPOINT_NAME)
    s = stopped["step"]
    assert 0 < s < 1000 and s % 10 == 0  # ranks agree on a stop every 10 steps
    assert log.count(f"stopped at step {s} of 1000") == 1  # printed by rank 0 only

    # every rank trains on its own shard: rank r gets images r, r+2, r+4, … of the pack
    pack = load_pack(data, 16)
    rec = records(tmp_path / "rec1")
    assert [r["rank"] for r in rec] == [0, 1] and {r["world_size"] for r in rec} == {2}
    for r in (0, 1):
        assert torch.equal(rec[r]["shard"], pack.images[r::2])
    assert len(rec[0]["shard"]) + len(rec[1]["shard"]) == len(pack)
    # ... with a random stream of its own, saved per rank in the checkpoint
    assert not torch.equal(rec[0]["generator"], rec[1]["generator"])
    saved_streams = stopped["rank_generators"]
    assert len(saved_streams) == 2 and not torch.equal(saved_streams[0], saved_streams[1])
    assert torch.equal(saved_streams[0], stopped["generator"])

    # 2. resume on 2 processes to s + 4 steps: each rank picks up its own stream; rank 0 exports
    second = torchrun(launcher, ["--out", str(out), "--resume", "--steps", str(s + 4)], tmp_path / "rec2")
    log = finish(second)
    rec = records(tmp_path / "rec2")
    for r in (0, 1):
        assert rec[r]["step"] == s
        assert torch.equal(rec[r]["generator"], saved_streams[r])
    assert log.count("exported to") == 1 and log.count("training ddpm U-Net") == 1
    final = load_checkpoint(out / CHECKPOINT_NAME)
    assert final["step"] == s + 4 and final["images_seen"] == (s + 4) * 8

    # only rank 0 wrote: each logged step once, no stray files
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == s + 4
    assert sorted(p.name for p in out.iterdir()) == [CHECKPOINT_NAME, "export", "loss.png", "metrics.jsonl",
                                                     "samples"]
    loaded = load_pretrained(out / "export")
    assert loaded.config.training["steps"] == s + 4
    exported = loaded.model.state_dict()  # the EMA of the final checkpoint, written once by rank 0
    assert exported.keys() == final["ema"].keys() and all(torch.equal(exported[k], final["ema"][k]) for k in exported)
