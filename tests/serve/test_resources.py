"""What the app keeps stays bounded: exports on disk (a failed one leaves nothing; old ones go) and users' runs
and photos in memory (released when the user leaves, after a time-to-live, and beyond a total for all users)."""

from __future__ import annotations

import gc
import os
import threading
import time
from pathlib import Path

import gradio as gr
import pytest
import torch
from conftest import PATIENCE, make_tiny_config, perturb, seeded_init
from serving import dead_pid

from ddpm_app.diffusion.samplers import Step
from ddpm_app.diffusion.schedule import ScheduleConfig
from ddpm_app.io.model_folder import DiffusionConfig, save_pretrained
from ddpm_app.models import UNet
from ddpm_app.serve.library import ModelLibrary
from ddpm_app.serve.runs import Trajectory
from ddpm_app.serve.worker import DeviceWorker, Reports
from ddpm_app.ui import kit
from ddpm_app.ui import page as ui
from ddpm_app.views.export import ExportFolder
from ddpm_app.views.state import Users, UserState

PHOTO = Path(kit.ASSETS) / "portrait.png"


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> ModelLibrary:
    root = tmp_path_factory.mktemp("weights")
    config = DiffusionConfig(make_tiny_config(), ScheduleConfig(timesteps=20), training={"dataset": "noise"})
    save_pretrained(perturb(seeded_init(lambda: UNet(config.model))), config, root / "faces")
    return ModelLibrary(root, "cpu")


# -- exports on disk ------------------------------------------------------------------------------------------------


def test_an_export_has_its_name_only_once_it_is_complete(tmp_path: Path):
    exports = ExportFolder(tmp_path)

    def writer(path: Path) -> Path:
        assert path.name != "run.mp4" and not (path.parent / "run.mp4").exists()  # a kill now leaves no run.mp4
        path.write_bytes(b"frames")
        return path

    written = exports.write("run.mp4", writer)
    assert written.name == "run.mp4" and written.read_bytes() == b"frames"
    assert [p.name for p in written.parent.iterdir()] == ["run.mp4"]


def test_a_temporary_export_folder_goes_with_its_owner_and_dead_processes_folders_at_the_next_start(tmp_path: Path):
    dead = dead_pid()
    stale = tmp_path / f"ddpm_app_pid{dead}-abc123"
    running = tmp_path / f"ddpm_app_pid{os.getpid()}-def456"  # a process that runs (this one)
    other = tmp_path / "ddpm_app_old8x_1"  # not made by ExportFolder.temporary
    for folder in (stale, running, other):
        (folder / "sub").mkdir(parents=True)
    folder = ExportFolder.temporary("ddpm_app_", tmp_path)
    assert not stale.exists() and running.exists() and other.exists()
    root = folder.root
    assert root.parent == tmp_path and root.name.startswith(f"ddpm_app_pid{os.getpid()}-")
    folder.write("a.png", lambda path: path.write_bytes(b"png") and path)
    del folder
    gc.collect()
    assert not root.exists()


def test_a_failed_export_leaves_no_folder(library: ModelLibrary, tmp_path: Path):
    h = ui.Handlers(library, preview_interval=None, export_dir=tmp_path / "exports")
    for kind in ("gif", "png", "mp4"):
        with pytest.raises(gr.Error, match="nothing to export yet"):
            h.export(kind, UserState())
    assert list((tmp_path / "exports").iterdir()) == []
    user = UserState()
    list(h.generate("ddim", 3, 0.0, 1, 1, True, False, user))
    path = Path(h.export("gif", user))
    assert path.is_file() and [p.name for p in (tmp_path / "exports").iterdir()] == [path.parent.name]


def test_a_writer_that_fails_half_way_leaves_nothing(tmp_path: Path):
    exports = ExportFolder(tmp_path)

    def broken(path: Path) -> Path:
        path.write_bytes(b"half a GIF")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        exports.write("a.gif", broken)
    assert list(tmp_path.iterdir()) == []


def write_bytes(n: int):
    def writer(path: Path) -> Path:
        path.write_bytes(bytes(n))
        return path
    return writer


def test_exports_are_bounded_in_number_bytes_and_age(tmp_path: Path):
    now = time.time()
    exports = ExportFolder(tmp_path / "counted", max_exports=5, max_bytes=10_000, max_age_s=3600)
    for i in range(12):
        path = exports.write(f"{i}.png", write_bytes(100))
        os.utime(path.parent, (now - 100 + i, now - 100 + i))  # one second apart, the newest last
        assert len(exports.exports()) <= 5
    assert sorted(p.name for p in exports.root.glob("*/*")) == ["10.png", "11.png", "7.png", "8.png", "9.png"]

    sized = ExportFolder(tmp_path / "sized", max_exports=100, max_bytes=10_000)
    for i in range(6):  # each 4,000-byte export pushes out the oldest beyond 10,000 bytes before it
        path = sized.write(f"{i}.gif", write_bytes(4_000))
        os.utime(path.parent, (now - 100 + i, now - 100 + i))
    assert sorted(p.name for p in sized.root.glob("*/*")) == ["3.gif", "4.gif", "5.gif"]

    aged = ExportFolder(tmp_path / "aged", max_age_s=60)
    old = aged.write("old.gif", write_bytes(10))
    os.utime(old.parent, (now - 120, now - 120))
    aged.write("new.gif", write_bytes(10))
    assert not old.exists() and [p.name for p in aged.root.glob("*/*")] == ["new.gif"]


# -- users' runs and photos in memory -------------------------------------------------------------------------------


# x_t, x̂₀ and x_prev as uint8 pictures, and x_t, x̂₀, ε̂ in float16 (no z)
def finished_run(nbytes_per_frame: int = (3 + 2 * 3) * 3 * 16 * 16, steps: int = 4, seed: int = 0) -> Trajectory:
    run = Trajectory("test", steps, (1, 3, 16, 16), seed)
    for i in range(steps):
        x = torch.zeros(1, 3, 16, 16)
        run.add(Step(i, steps, steps - 1 - i, steps - 2 - i, x, x, x, x))
    assert run.finished and run.nbytes == steps * nbytes_per_frame + 3 * 16 * 16
    return run


def user_with(run: Trajectory) -> UserState:
    """A user whose latest Generate run is ``run``."""
    return UserState(runs={"generate": run})


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_user_who_leaves_is_released_and_others_keep_theirs():
    users = Users()
    a, b = user_with(finished_run()), user_with(finished_run())
    users.seen("a", a)
    users.seen("b", b)
    users.leave("a")
    assert a.run.released and a.run.frames == [] and a.run.final is None and a.forward.x0 is None
    assert not b.run.released and len(b.run.frames) == 4 and len(users) == 1
    users.leave("nobody")  # an unknown session (a tab that never ran anything) is fine


def test_results_go_after_the_time_to_live():
    clock = Clock()
    users = Users(time_to_live=60, clock=clock)
    a, b = user_with(finished_run()), user_with(finished_run())
    users.seen("a", a)
    clock.now = 50
    users.seen("b", b)
    clock.now = 61  # a unused for 61 s, b for 11 s
    users.sweep()
    assert a.run.released and not b.run.released
    clock.now = 200
    users.sweep()
    assert b.run.released and len(users) == 0


def test_all_users_runs_together_stay_within_the_budget_least_recently_used_first():
    one = finished_run().nbytes
    users = Users(max_bytes=3 * one)
    states = [user_with(finished_run(seed=i)) for i in range(5)]
    for i, user in enumerate(states):
        users.seen(i, user)
        assert users.nbytes <= 3 * one
    assert [u.run.released for u in states] == [True, True, False, False, False]
    users.seen(0, states[0])  # a released user comes back: nothing more goes
    assert [u.run.released for u in states] == [True, True, False, False, False]


def test_every_run_a_user_keeps_counts_and_goes():
    """The latest Generate and Denoise runs and the pinned one all count towards the budget, and all are released."""
    generate, denoise, pinned = finished_run(seed=1), finished_run(seed=2), finished_run(seed=3)
    user = UserState(runs={"generate": generate, "denoise": denoise}, pinned=pinned)
    users = Users()
    users.seen("a", user)
    assert users.nbytes == generate.nbytes + denoise.nbytes + pinned.nbytes
    users.leave("a")
    assert generate.released and denoise.released and pinned.released


def test_a_run_still_computing_is_released_only_when_it_ends():
    users = Users(max_bytes=0)
    running = Trajectory("running", 4, (1, 3, 16, 16), 0)
    user = user_with(running)
    users.seen("a", user)  # over the budget, but the run is still going
    users.leave("a")
    assert not running.released
    running.stopped = True  # Stop, or the closed tab's cancel
    users.sweep()
    assert running.released


def test_the_handlers_say_a_released_run_is_gone_and_a_new_one_works(library: ModelLibrary, tmp_path: Path):
    users = Users()
    h = ui.Handlers(library, preview_interval=None, export_dir=tmp_path, users=users)
    user = UserState()
    list(h.generate("ddim", 3, 0.0, 1, 1, True, False, user))
    h.noise(str(PHOTO), 5, True, 3, user)
    assert len(users) == 1 and users.nbytes == user.run.nbytes > 0
    users.leave(id(user))  # what the page's unload event does, by Gradio session
    assert user.forward.x0 is None
    assert "no longer kept" in h.frame(0, user)[2]
    with pytest.raises(gr.Error, match="no longer kept in memory"):
        h.export("gif", user)
    list(h.generate("ddim", 3, 0.0, 1, 1, True, False, user))
    assert "frame 1/3" in h.frame(1, user)[2]


def test_the_device_worker_is_idle_only_while_no_job_runs_or_waits():
    clock = Clock()
    worker = DeviceWorker(clock=clock)
    clock.now += 7
    assert worker.idle_for() == 7  # since it was made
    started, release = threading.Event(), threading.Event()
    job = worker.submit(lambda: (started.set(), release.wait(PATIENCE)))
    waiting = worker.submit(lambda: None)
    started.wait(PATIENCE)
    clock.now += 100
    assert worker.idle_for() == 0  # one job runs, one waits
    release.set()
    job.result(PATIENCE), waiting.result(PATIENCE)
    clock.now += 3
    assert worker.idle_for() == 3  # since the last job ended


def test_a_stream_computes_each_item_on_the_worker_when_asked_and_ends_there():
    worker = DeviceWorker()
    device = worker.run(threading.get_ident)
    order, cleanup = [], []

    def items():
        try:
            for i in range(3):
                order.append(f"item {i}")
                yield threading.get_ident()
        finally:
            cleanup.append(threading.get_ident())

    stream = worker.stream(items())
    first = next(stream)
    worker.run(order.append, "another user's job")  # between two items the worker is free for others
    second = next(stream)
    stream.close()  # Stop: the generator is closed on the worker, where it ran
    assert first == second == device and cleanup == [device]
    assert order == ["item 0", "another user's job", "item 1"]


def test_a_long_job_reports_while_it_runs_and_closing_the_stream_ends_it():
    worker = DeviceWorker()
    reached, release = [], threading.Event()

    def job(reports: Reports):
        for i in range(10_000):
            reports(i)
            reached.append(i)
            if i == 1:
                release.wait(PATIENCE)
        yield "the result"

    reports = Reports()
    stream = worker.stream(job(reports), reports)
    assert [next(stream), next(stream)] == [0, 1]  # handed on while the job still runs
    release.set()
    stream.close()  # the job's next report raises Cancelled: it ends long before its 10,000 reports
    assert worker.run(lambda: "free") == "free" and len(reached) < 10_000
    reports = Reports()
    assert list(worker.stream(job(reports), reports)) == [*range(10_000), "the result"]
