"""The 2-D lab's one-click experiments and its exports, each run through the events the tab wires (the button's
click and what follows it), on few points, few steps and few samples: each experiment sets what it names, trains
again only when the model changes, and the model, schedule or sampling run afterwards really is the changed one;
the GIF and MP4 buttons animate the training previews and the sampling paths."""

from __future__ import annotations

import inspect

import gradio as gr
import pytest
import torch

from ddpm_app.lab import PointMLPConfig, build_model
from ddpm_app.serve.worker import DeviceWorker
from ddpm_app.ui.i18n import english
from ddpm_app.ui.lab import EXPERIMENTS, LabHandlers, lab_tab
from ddpm_app.views.state import UserState

STEPS, POINTS, SAMPLES = 20, 200, 30  # cheap: the tab's own defaults would train 3000 steps on 1000 points


class Tab:
    """The lab tab built in a Blocks of its own, its events run the way the page runs them: a handler gets the
    components' values, its outputs (each yield of a generator) replace them, a gr.skip() leaves one as it is, and
    the events chained after it run once it ends (those chained with .success only if it raised nothing)."""

    def __init__(self, tmp_path):
        with gr.Blocks() as self.demo:
            self.user = gr.State(UserState())
            with gr.Tabs():
                lab_tab(LabHandlers(DeviceWorker(), tmp_path), self.user)
        self.values = {i: getattr(b, "value", None) for i, b in self.demo.blocks.items()}
        self.values[self.user._id] = UserState()
        self.props: dict[int, dict] = {}  # what gr.update() set besides values (a slider's maximum)
        self.ran: list[str] = []  # the handlers run, in order

    def find(self, kind, **attrs):
        found = [b for b in self.demo.blocks.values() if isinstance(b, kind)
                 and all(english(getattr(b, k, None)) == v for k, v in attrs.items())]
        assert len(found) == 1, (kind, attrs, found)
        return found[0]

    def set(self, component, value) -> None:
        self.values[component._id] = value

    def value(self, component):
        return english(self.values[component._id])

    @property
    def lab(self):
        return self.values[self.user._id].lab

    def click(self, button) -> None:
        for fn in self.demo.fns.values():
            if (button._id, "click") in fn.targets and fn.trigger_after is None:
                self._run(fn)

    def _run(self, fn) -> None:
        self.ran.append(fn.name)
        args = [self.values[c._id] for c in fn.inputs]
        result = fn.fn(*args)
        for out in (result if inspect.isgenerator(result) else [result]):
            self._apply(fn, out)
        for after in self.demo.fns.values():
            if after.trigger_after == fn._id and not after.trigger_only_on_failure:
                self._run(after)

    def _apply(self, fn, out) -> None:
        out = list(out) if isinstance(out, (list, tuple)) else [out]
        assert len(out) == len(fn.outputs), f"{fn.name} returned {len(out)} values for {len(fn.outputs)} outputs"
        for component, value in zip(fn.outputs, out):
            if isinstance(value, dict) and value.get("__type__") == "update":
                update = {k: v for k, v in value.items() if k != "__type__"}
                if "value" in update:
                    self.values[component._id] = update.pop("value")
                self.props.setdefault(component._id, {}).update(update)
            else:
                self.values[component._id] = value


@pytest.fixture
def tab(tmp_path) -> Tab:
    tab = Tab(tmp_path)
    tab.set(tab.find(gr.Slider, label="Points", maximum=5000), POINTS)
    tab.set(tab.find(gr.Slider, label="Steps"), STEPS)
    tab.set(tab.find(gr.Slider, label="Points", maximum=2000), SAMPLES)
    return tab


def button(tab: Tab, label: str) -> gr.Button:
    return tab.find(gr.Button, value=label)


def trained(tab: Tab) -> None:
    """Train (on the tab's settings as they are) and Sample, as a person does before trying an experiment."""
    tab.click(button(tab, "Train"))
    tab.click(button(tab, "Sample"))
    assert tab.lab.trainer.step == STEPS and len(tab.lab.run.final) == SAMPLES


def run_experiment(tab: Tab, label: str) -> tuple:
    """Click the experiment: (the trainer and sampling run before, those after)."""
    before = tab.lab.trainer, tab.lab.run
    tab.ran.clear()
    tab.click(button(tab, label))
    assert tab.value(tab.find(gr.Markdown, elem_id="lab-experiment")).startswith(f"**{label}.**")
    assert "Energy distance" in tab.value(tab.find(gr.Markdown, elem_id="lab-sample-quality"))
    assert tab.lab.run is not before[1] and tab.lab.run.final.shape == (SAMPLES, 2)
    assert torch.isfinite(tab.lab.run.final).all()
    return before, (tab.lab.trainer, tab.lab.run)


def test_every_experiment_has_its_button_and_runs(tab):
    trained(tab)
    for label in EXPERIMENTS:
        run_experiment(tab, label)
        assert tab.ran[-2:] == ["sample", "forward"], (label, tab.ran)


def test_smaller_T_trains_a_model_of_T_50(tab):
    trained(tab)
    (old, _), (new, run) = run_experiment(tab, "Smaller T (50)")
    assert "train" in tab.ran and new is not old and new.step == STEPS
    assert tab.value(tab.find(gr.Slider, label="T")) == 50
    assert tab.lab.schedule.timesteps == 50 and tab.lab.settings.schedule.timesteps == 50
    assert max(run.ts) <= 49 and 0 in run.ts  # the reverse chain ran over T = 50
    t_max = tab.props[tab.find(gr.Slider, elem_id="lab-t")._id]["maximum"]
    assert t_max == 50  # and the Forward view shows the same schedule, up to the paper's t = T
    abar_T = float(tab.lab.schedule.float64.alphas_cumprod[-1])
    assert 0.55 < abar_T < 0.65  # what the note says: x_T is not noise


def test_smaller_beta_trains_with_beta_up_to_0_002(tab):
    trained(tab)
    (old, _), (new, _) = run_experiment(tab, "β 1e-4…0.002")
    assert new is not old and tab.lab.settings.schedule.beta_end == 0.002
    betas = tab.lab.schedule.float64.betas
    assert len(betas) == 1000 and float(betas[-1]) == pytest.approx(0.002) and float(betas[0]) == pytest.approx(1e-4)
    assert 0.3 < float(tab.lab.schedule.float64.alphas_cumprod[-1]) < 0.4  # ᾱ_T ≈ 0.37, as the note says


def test_variance_beta_samples_the_same_model_with_more_noise(tab):
    trained(tab)
    (old, before), (new, after) = run_experiment(tab, "σ² = β instead of β̃")
    assert "train" not in tab.ran and new is old  # the same model, sampled again
    assert tab.value(tab.find(gr.Radio, label="DDPM σ²")) == "beta"
    assert "σ² = β̃" in before.title and "σ² = β," in after.title
    assert not torch.equal(before.final, after.final)  # the same seed, another variance: other samples


def test_clipping_off_leaves_x0_unclipped(tab):
    trained(tab)
    (old, before), (new, after) = run_experiment(tab, "Clipping off")
    assert "train" not in tab.ran and new is old
    assert tab.value(tab.find(gr.Checkbox, label="Clip x̂₀ to [−1, 1]")) is False
    assert "unclipped x̂₀" in after.title and "clipped x̂₀" in before.title
    assert max(float(x.abs().max()) for x in before.pred_x0) <= 1.0
    assert max(float(x.abs().max()) for x in after.pred_x0) > 1.0  # at large t an x̂₀ guess flies off


def test_network_too_small_trains_a_1_by_8_mlp(tab):
    trained(tab)
    (old, _), (new, _) = run_experiment(tab, "Network too small (1×8)")
    assert new is not old and tab.lab.settings.network == PointMLPConfig(8, 1)
    assert (tab.value(tab.find(gr.Slider, label="MLP width")), tab.value(tab.find(gr.Slider, label="MLP depth"))) \
        == (8, 1)
    count = sum(p.numel() for p in new.model.parameters())
    assert count == sum(p.numel() for p in build_model(PointMLPConfig(8, 1), 0).parameters())
    assert count < sum(p.numel() for p in old.model.parameters()) / 10


def test_a_sampling_experiment_after_a_training_one_keeps_the_model_s_settings(tab):
    """After Smaller T, σ² = β samples the T = 50 model: the T slider (and the Forward view) stay at 50."""
    trained(tab)
    run_experiment(tab, "Smaller T (50)")
    (old, _), (new, run) = run_experiment(tab, "σ² = β instead of β̃")
    assert new is old and tab.lab.schedule.timesteps == 50 and max(run.ts) <= 49
    assert tab.value(tab.find(gr.Slider, label="T")) == 50
    # a training experiment after it starts from the defaults again: T back to 1000 with the smaller β
    run_experiment(tab, "β 1e-4…0.002")
    assert tab.lab.schedule.timesteps == 1000 and tab.value(tab.find(gr.Radio, label="DDPM σ²")) == "posterior"


@pytest.mark.parametrize("what, label", [("training", "Training"), ("paths", "Trajectories")])
def test_exports_animate_the_training_and_the_paths(tab, what, label):
    """Training: one frame per preview drawn while training; Trajectories: the paths growing, many frames, the
    first unlike the last. Every frame a figure of at least 512 px; the MP4 holds the same frames and then the
    last for a second at 20 fps."""
    import imageio.v3 as iio  # MP4 export needs imageio-ffmpeg, a requirement: missing, this test fails
    from PIL import Image, ImageChops, ImageSequence

    download = tab.find(gr.File, label="Download")
    with pytest.raises(gr.Error, match="nothing to export yet"):
        tab.click(button(tab, f"{label} (GIF)"))
    trained(tab)
    tab.click(button(tab, f"{label} (GIF)"))
    with Image.open(tab.value(download)) as gif:
        frames = [frame.convert("RGB") for frame in ImageSequence.Iterator(gif)]
    assert min(min(f.size) for f in frames) >= 512
    if what == "training":
        assert len(frames) == len(tab.lab.previews)
    else:
        assert len(frames) > 10 and ImageChops.difference(frames[0], frames[-1]).getbbox() is not None
    tab.click(button(tab, f"{label} (MP4)"))
    video = iio.imread(tab.value(download), plugin="FFMPEG")
    assert video.shape[0] == len(frames) + 20 and min(video.shape[1:3]) >= 512

