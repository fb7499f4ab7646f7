"""Compiling the training step in another process while this one trains uncompiled.

``torch.compile`` spends minutes on a network's first step when its cache is empty, and a run that waits for it
prints no loss until then. It keeps what it compiles (graphs and kernels) in a cache folder, and a second process
that compiles the same step finds it there and loads it in seconds. So a run starts a child process that builds the
same network with the same settings, runs one compiled step on random images of the run's shape and exits, while the
run itself trains uncompiled; once the child has exited, the run compiles its own step, now from the cache.

The child needs no data and no weights: the compiled graph depends on the network's config, the batch's shape and
the settings of the step, not on the images or the parameter values.

The child is ``python -m ddpm_app.cli.compile_step SPEC_JSON`` (:class:`BackgroundCompile` starts it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

LOG_NAME = "compile.log"
CHILD = "ddpm_app.cli.compile_step"


@dataclass(frozen=True)
class CompileReady:
    """How compiling in the background went, reported when the child has exited."""

    ok: bool  # the child compiled and ran a step
    background_s: float  # from starting the child to its exit
    note: str = ""  # if not ok: the last line of its log


class BackgroundCompile:
    """The child process compiling a run's step (see the module's docstring); its output goes to ``log``."""

    def __init__(self, train_config: dict, diffusion_config: dict, device: str, log: Path):
        """Start the child on the run's settings (its recipe filled in), its model and schedule, and its device."""
        self.log = log
        self.started = time.perf_counter()
        # the CPU's kernels are generated for the number of threads, so that is part of what is compiled
        spec = json.dumps({"train_config": train_config, "diffusion_config": diffusion_config, "device": device,
                           "threads": torch.get_num_threads()})
        env = dict(os.environ)  # the same cache folder; one core left to the run's own steps
        env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(max(1, len(os.sched_getaffinity(0)) - 1)))
        with log.open("w") as out:  # a session of its own, so that stop() ends its compile workers too
            self.process = subprocess.Popen([sys.executable, "-m", CHILD, spec], stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)

    def ready(self) -> CompileReady | None:
        """None while the child runs; afterwards how it went."""
        code = self.process.poll()
        if code is None:
            return None
        seconds = time.perf_counter() - self.started
        if code == 0:
            return CompileReady(True, seconds)
        lines = [line for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        return CompileReady(False, seconds, f"exit code {code}: {lines[-1] if lines else 'no output'}")

    def stop(self) -> None:
        """End the child and its compile workers if it is still running (the run ended first, or was stopped)."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:  # exited in between
            pass
