"""``python app.py`` as a real server on a free localhost port, for the tests that drive it over HTTP."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

from conftest import PATIENCE, make_tiny_config, perturb, seeded_init

from ddpm_app.diffusion.schedule import ScheduleConfig
from ddpm_app.io.model_folder import DiffusionConfig, save_pretrained
from ddpm_app.models import UNet

ROOT = Path(__file__).resolve().parents[1]
ENDPOINTS = {"/generate", "/frame", "/export_gif", "/export_mp4", "/export_png", "/noise", "/denoise",
             "/select_model", "/download_model", "/show_run", "/train_step", "/loss_curve", "/likelihood", "/pin",
             "/compare", "/interpolate", "/export_figure", "/load_folder",
             "/rescan_models", "/toy_forward", "/toy_train", "/toy_continue", "/toy_sample",
             *(f"/toy_export_{what}_{kind}" for what in ("training", "paths") for kind in ("gif", "mp4"))}
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serving_app(weights: Path, log: Path, *extra: str, errors_expected: bool = False
                ) -> contextlib.AbstractContextManager:
    """Run ``app.py --weights WEIGHTS`` on a free localhost port until the block ends; yields (url, process)."""
    port = free_port()
    return serving(["--weights", str(weights), "--port", str(port), *extra], app_env(), port, log,
                   errors_expected=errors_expected)


# What a healthy server never writes to its log: Python's tracebacks, warnings (Gradio's, PyTorch's, ffmpeg's),
# and Gradio's complaint about a handler that returns a different number of values than its outputs.
LOG_TROUBLE = ("Traceback (most recent call last)", "Warning", "warning", "returned too many output values",
               "didn't return enough output values")
def log_trouble(text: str) -> list[str]:
    """The lines of a server log that name a traceback, a warning or a mismatch of outputs."""
    return [line for line in text.splitlines() if any(word in line for word in LOG_TROUBLE)]


@contextlib.contextmanager
def serving(args: list[str], env: dict[str, str], port: int, log: Path, errors_expected: bool = False
            ) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run ``python app.py ARGS`` with ``env``, which must serve on ``port``, until the block ends; yields (url,
    process) once it answers. When the block ends normally the log must hold no traceback, warning or output
    mismatch (see ``log_trouble``), unless ``errors_expected`` (a test that provokes server errors on purpose)."""
    proc = subprocess.Popen([sys.executable, "app.py", *args], cwd=ROOT, env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_serving(proc, url, log)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if not errors_expected:
        trouble = log_trouble(log.read_text(errors="replace"))
        assert not trouble, f"the server's log ({log}) has trouble:\n" + "\n".join(trouble[:20])


@contextlib.contextmanager
def serving_tiny_model(root: Path, timesteps: int, *extra: str, errors_expected: bool = False
                       ) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """``serving_app`` with one tiny 16×16 RGB model, "faces", of ``timesteps`` steps: yields (url, process, log)."""
    config = DiffusionConfig(make_tiny_config(), ScheduleConfig(timesteps=timesteps), training={"dataset": "noise"})
    save_pretrained(perturb(seeded_init(lambda: UNet(config.model))), config, root / "weights" / "faces")
    with serving_app(root / "weights", root / "app.log", *extra, errors_expected=errors_expected) as (url, proc):
        yield url, proc, root / "app.log"


def wait_until_serving(proc: subprocess.Popen, url: str, log: Path, timeout: float = PATIENCE) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"app.py did not start within {timeout} s:\n{log.read_text()}")


def app_env() -> dict[str, str]:
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("GRADIO_SERVER_NAME", None)
    env.pop("GRADIO_SERVER_PORT", None)
    return env


def dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


