"""The app keeps one OpenMP team: building the page and switching models do their tensor work on the device
thread, so no other thread starts OpenMP helpers (which made sampling in the server 35-50 % slower)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from conftest import PATIENCE, make_tiny_config, perturb, seeded_init

from ddpm_app.diffusion.schedule import ScheduleConfig
from ddpm_app.io.model_folder import DiffusionConfig, save_pretrained
from ddpm_app.models import UNet
from ddpm_app.serve.library import ModelLibrary
from ddpm_app.serve.worker import DeviceWorker
from ddpm_app.ui import lab, model
from ddpm_app.ui import page as ui
from ddpm_app.views.state import UserState

ROOT = Path(__file__).resolve().parents[2]


def save_tiny(directory: Path, timesteps: int = 20) -> Path:
    config = DiffusionConfig(make_tiny_config(), ScheduleConfig(timesteps=timesteps), training={"dataset": "noise"})
    return save_pretrained(perturb(seeded_init(lambda: UNet(config.model))), config, directory)


def record_threads(monkeypatch, functions: list[tuple[object, str]]) -> dict[str, set[int]]:
    """The threads each of ``functions`` (module, name) runs on from now on, by name."""
    threads: dict[str, set[int]] = {}
    for module, name in functions:
        def record(*args, _name=name, _fn=getattr(module, name), **kwargs):
            threads.setdefault(_name, set()).add(threading.get_ident())
            return _fn(*args, **kwargs)
        monkeypatch.setattr(module, name, record)
    return threads


def test_build_and_model_switch_compute_on_the_device_thread(tmp_path: Path, monkeypatch):
    save_tiny(tmp_path / "faces")
    save_tiny(tmp_path / "other")
    library = ModelLibrary(tmp_path, "cpu")
    # where the page is built, and where a model switch draws its outputs
    threads = record_threads(monkeypatch, [(ui, "schedule_plot"), (ui, "forward_numbers"), (ui, "model_card"),
                                           (ui, "model_header"), (model, "model_card"), (model, "model_header")])
    ui.build(library)
    ui.Handlers(library).select_model("other", UserState())
    worker = library.worker.run(threading.get_ident)
    assert set(threads) == {"schedule_plot", "forward_numbers", "model_card", "model_header"}
    assert all(ids == {worker} for ids in threads.values()), threads


def test_the_lab_makes_its_points_and_pictures_on_the_device_thread(monkeypatch):
    """The 2-D lab's data set (tensors drawn from a generator) and its forward-process pictures are tensor work too."""
    worker = DeviceWorker()
    handlers = lab.LabHandlers(worker)
    threads = record_threads(monkeypatch, [(lab, "dataset"), (lab, "data_picture"), (lab, "forward_pictures")])
    user = UserState()
    handlers.show_data("preset", "two moons", "DDPM", None, None, "", 200, 0, user=user)
    handlers.forward(10, 1, "linear", 100, 1e-4, 0.02, user)
    assert set(threads) == {"dataset", "data_picture", "forward_pictures"}
    assert all(ids == {worker.run(threading.get_ident)} for ids in threads.values()), threads


SCRIPT = """
import os, sys
import torch
torch.set_num_threads(2)
from ddpm_app.ui import page as ui
from ddpm_app.serve.library import ModelLibrary
from ddpm_app.views.state import UserState
library = ModelLibrary(sys.argv[1], "cpu")
library.get()  # on the loader thread, which has a team of its own (loads run beside users' sampling)
library.worker.run(lambda: torch.ones(1 << 20).sum())  # the device thread and its team, as after any first request
before = len(os.listdir("/proc/self/task"))
ui.build(library)
ui.Handlers(library).select_model("faces", UserState())
print(before, len(os.listdir("/proc/self/task")))
"""


def test_building_the_page_starts_no_openmp_threads(tmp_path: Path):
    save_tiny(tmp_path / "faces", timesteps=1000)  # schedule tables long enough for torch to go parallel
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=PATIENCE, env={"PATH": "/usr/bin:/bin", "GRADIO_ANALYTICS_ENABLED": "False",
                                           "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    before, after = map(int, out.stdout.split()[-2:])
    assert after == before, f"{after - before} thread(s) started while building the page"
