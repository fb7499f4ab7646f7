"""What a run leaves in its folder for a resumed run to continue from exactly: the checkpoint (model, EMA, optimizer,
step and every RNG state, written atomically) and ``metrics.jsonl`` (trimmed back to the checkpoint's step)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ddpm_app.training.config import TrainConfig
from ddpm_app.training.errors import TrainingError

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"


def save_atomic(obj: dict, path: Path) -> None:
    """Write to ``NAME.tmpPID``, fsync, then rename over ``NAME``: the final name only ever holds a whole file."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports some write failures as RuntimeError
        tmp.unlink(missing_ok=True)
        raise TrainingError(f"{path}: could not write the checkpoint ({e}); the previous checkpoint, if any, is "
                            "intact. Free some space or choose another --out, then --resume.") from None
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def remove_stale_temp_files(out: Path) -> list[Path]:
    """Delete ``checkpoint.pt.tmpPID`` files left by a killed run (not those of a live process); returns them."""
    removed = []
    for tmp in out.glob(CHECKPOINT_NAME + ".tmp*"):
        pid = tmp.name.rpartition(".tmp")[2]
        if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) is not a probe there; keep the file
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def load_checkpoint(path: str | Path) -> dict:
    """A training checkpoint, read without unpickling code (``weights_only=True``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means the file is unusable
        raise TrainingError(f"{path}: not a readable training checkpoint ({type(e).__name__}: {e})") from None


def check_writable(out: Path, need_bytes: int = 0) -> None:
    """Fail before training if the run folder cannot be written or has less than ``need_bytes`` free."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"x" * 4096)
        probe.unlink()
        free = shutil.disk_usage(out).free
    except OSError as e:
        raise TrainingError(f"{out}: cannot write the run folder ({e.strerror or e}); "
                            "choose another --out or free some space") from None
    if free < need_bytes:
        raise TrainingError(f"{out}: only {free / 1e6:.1f} MB free, but checkpoints and the export of this model "
                            f"need about {need_bytes / 1e6:.1f} MB; free some space or choose another --out")


def read_metrics(path: Path) -> list[dict]:
    """The rows of a run's ``metrics.jsonl`` (one JSON object with an integer ``step`` per line); none if absent."""
    rows = []
    for line in path.read_text(errors="replace").splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def trim_metrics(path: Path, step: int) -> None:
    """Keep the rows of ``metrics.jsonl`` up to ``step`` (a killed run may have logged past its last checkpoint)."""
    if not path.is_file():
        return
    kept = [row for row in read_metrics(path) if row["step"] <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
    os.replace(tmp, path)


def read_resume_checkpoint(out: Path) -> dict:
    """``out/checkpoint.pt``, the training state a resumed run continues from."""
    path = Path(out) / CHECKPOINT_NAME
    if not path.is_file():
        raise TrainingError(f"--resume: no checkpoint at {path}")
    return load_checkpoint(path)


def resume_config(given: dict) -> tuple[TrainConfig, dict]:
    """The run to resume in the folder ``given["out"]`` (TrainConfig's default out when not given): its settings and
    its checkpoint, read once. The rule: a resumed run keeps every setting it was started with, except the ``given``
    ones, and stays in the folder it resumes in. Its model and noise schedule are the checkpoint's, whatever is given
    (:func:`~ddpm_app.training.trainer.starting_point`)."""
    out = str(given.get("out", TrainConfig.out))
    checkpoint = read_resume_checkpoint(Path(out))
    saved = {k: v for k, v in checkpoint["train_config"].items() if k in TrainConfig.__dataclass_fields__}
    return TrainConfig(**{**saved, **given, "out": out}), checkpoint
