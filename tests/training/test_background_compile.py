"""Compiling the training step in another process while the run trains uncompiled (training/background_compile.py).

On a GPU a run's first step would otherwise wait minutes for torch.compile. Here, on the CPU: the child really
compiles (Inductor's C++ backend) and the run's own compile then loads every graph from the cache; the switch from
uncompiled to compiled steps is checked with a stand-in child, whose end the test decides.
"""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch
from conftest import wait_for
from tiny_runs import MODEL, SCHEDULE, shapes_pack, train_config

import train as train_cli
from ddpm_app.training import trainer as training
from ddpm_app.training.background_compile import BackgroundCompile, CompileReady
from ddpm_app.training.trainer import Trainer


def test_the_child_fills_the_cache_the_runs_own_compile_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))  # empty; the child inherits it
    counters = torch._dynamo.utils.counters
    torch._dynamo.reset()
    counters.clear()
    trainer = Trainer(train_config(tmp_path / "run", steps=2), MODEL, SCHEDULE, pack=shapes_pack())
    child = BackgroundCompile(trainer.cfg.to_dict(), trainer.diffusion_config.to_dict(), "cpu", tmp_path / "log")
    ready = wait_for(child.ready, "the child to compile", poll=0.2,
                     progress=lambda: (tmp_path / "cache").exists() and sum(1 for _ in (tmp_path / "cache").rglob("*")))
    assert ready.ok, ready.note
    assert "compiled one training step" in (tmp_path / "log").read_text()

    trainer.use_compiled()
    loss = trainer.train_step()
    assert torch.isfinite(loss)
    # the forward and the backward graph, both from the child's compile: nothing compiled anew
    assert counters["inductor"]["fxgraph_cache_hit"] == 2, dict(counters["inductor"])
    assert counters["inductor"]["fxgraph_cache_miss"] == 0, dict(counters["inductor"])
    torch._dynamo.reset()


class StandInChild:
    """Takes BackgroundCompile's place: runs until the test ends it (``end``)."""

    made: list[StandInChild] = []

    def __init__(self, train_config, diffusion_config, device, log):
        self.spec = (train_config, diffusion_config, device)
        self.result: CompileReady | None = None
        self.stopped = False
        StandInChild.made.append(self)

    def ready(self) -> CompileReady | None:
        return self.result

    def stop(self) -> None:
        self.stopped = True


@pytest.fixture
def stand_in(monkeypatch):
    """The trainer's child is a StandInChild, and its compiled loss an uncompiled one that counts its calls."""
    StandInChild.made = []
    monkeypatch.setattr(training, "BackgroundCompile", StandInChild)
    calls = []

    def compiled(loss, cfg, convs_channels_last=False):
        def counted(*args):
            calls.append(1)
            return loss(*args)
        return counted

    monkeypatch.setattr(training, "compiled", compiled)
    return calls


def background_run(tmp_path, steps: int = 8) -> Trainer:
    trainer = Trainer(train_config(tmp_path, steps=steps, log_every=2, save_every=0), MODEL, SCHEDULE,
                      pack=shapes_pack())
    trainer.compiles_in_background = True  # what one GPU gets; the CPU compiles nothing by default
    return trainer


def test_the_run_trains_uncompiled_until_the_child_ends_then_switches(tmp_path, stand_in):
    trainer = background_run(tmp_path)
    events = []
    for p in trainer.run():
        events.append(p)
        if p.event == "log" and p.step == 4:  # four uncompiled steps done: the child ends now
            assert stand_in == []
            StandInChild.made[0].result = CompileReady(True, 12.0)
    child = StandInChild.made[0]
    assert child.spec == (trainer.cfg.to_dict(), trainer.diffusion_config.to_dict(), "cpu")
    switch = [p for p in events if p.event == "compiled"]
    assert len(switch) == 1 and switch[0].step == 5 and switch[0].compile.ok and switch[0].step_s > 0
    assert len(stand_in) == 4  # steps 5–8 ran the compiled loss
    assert events[-1].event == "done" and trainer.step == 8
    # images/s leave out the step that loaded the compiled graphs, as they leave out the first step
    log_6 = next(p for p in events if p.event == "log" and p.step == 6)
    assert log_6.images_per_s > 0


def test_with_cuda_graphs_the_recording_step_is_start_up_too(tmp_path, stand_in, monkeypatch):
    """CUDA graphs are recorded on the compiled step's second call: that step is slow once and is no measure of
    speed, nor of whether a time limit will cut the run."""
    use_compiled = Trainer.use_compiled

    def graphed(self):  # what use_compiled does on one GPU in the default mode, here on the CPU
        use_compiled(self)
        self._graphed = True

    monkeypatch.setattr(Trainer, "use_compiled", graphed)
    trainer = background_run(tmp_path)
    events = []
    for p in trainer.run():
        events.append(p)
        if p.event == "log" and p.step == 4:
            StandInChild.made[0].result = CompileReady(True, 12.0)
    switch = [p for p in events if p.event == "compiled"]
    assert len(switch) == 1 and switch[0].step == 6 and switch[0].step_s > 0  # after loading (5) and recording (6)
    logs = {p.step: p.images_per_s for p in events if p.event == "log"}
    assert logs[4] > 0 and math.isnan(logs[6]) and logs[8] > 0  # step 6's window held start-up steps only
    rows = {r["step"]: r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())}
    assert rows[6]["images_per_s"] is None and rows[8]["images_per_s"] > 0  # JSON has no nan


def test_a_failed_child_leaves_the_run_uncompiled_with_its_reason(tmp_path, stand_in):
    trainer = background_run(tmp_path)
    events = []
    for p in trainer.run():
        events.append(p)
        if p.event == "started":
            StandInChild.made[0].result = CompileReady(False, 3.0, "exit code 1: RuntimeError: no compiler")
    switch = [p for p in events if p.event == "compiled"]
    assert len(switch) == 1 and not switch[0].compile.ok and switch[0].step == 1
    assert stand_in == [] and trainer.step == 8
    note = train_cli.compiled_note(switch[0], trainer.compile_log)
    assert "no compiler" in note and "uncompiled" in note and str(trainer.compile_log) in note


def test_a_run_that_ends_first_stops_its_child(tmp_path, stand_in):
    trainer = background_run(tmp_path, steps=3)
    assert [p.event for p in trainer.run()][-1] == "done"
    assert StandInChild.made[0].stopped and stand_in == []


def test_a_resumed_run_that_has_nothing_left_starts_no_child(tmp_path, stand_in):
    trainer = background_run(tmp_path, steps=2)
    list(trainer.run())
    again = Trainer(train_config(tmp_path, steps=2, log_every=2, save_every=0), MODEL, SCHEDULE, pack=shapes_pack(),
                    resume=True)
    again.compiles_in_background = True
    list(again.run())
    assert len(StandInChild.made) == 1


def test_a_real_child_that_fails_says_why_and_a_running_one_is_ended_with_its_workers(tmp_path):
    bad = BackgroundCompile({"no_such_setting": 1}, {}, "cpu", tmp_path / "bad.log")
    ready = wait_for(bad.ready, "the child to fail")
    assert not ready.ok and ready.note.startswith("exit code 1: ")
    assert "format must be 'ddpm-app'" in ready.note  # the last line of its traceback

    trainer = Trainer(train_config(tmp_path / "run"), MODEL, SCHEDULE, pack=shapes_pack())
    child = BackgroundCompile(trainer.cfg.to_dict(), trainer.diffusion_config.to_dict(), "cpu", tmp_path / "log")
    child.stop()
    assert child.process.returncode is not None
    with pytest.raises(ProcessLookupError):  # its whole session is gone, compile workers included
        os.killpg(child.process.pid, 0)
    assert child.process.returncode == -signal.SIGTERM
    child.stop()  # a second stop is harmless


def test_the_switch_is_said_with_both_times():
    class P:
        step, step_s, compile = 312, 9.4, CompileReady(True, 151.2)
    assert train_cli.compiled_note(P, None) == ("step 312: switched to the compiled step (151 s compiling in the "
                                                "background, 9.4 s to load it from the cache and start it)")
