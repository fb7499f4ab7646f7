"""The teaching views, called directly on tiny random models: the reverse step with its numbers, the training
view, the likelihood of a photo, runs side by side, interpolation and slide figures."""

from __future__ import annotations

import json
import re

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image
from conftest import assert_pictures_close
from tiny_app import PHOTO, needs_bf16, save_tiny

from ddpm_app.diffusion import interpolation
from ddpm_app.diffusion.likelihood import BitsPerDim, bits_per_dim
from ddpm_app.diffusion.loss import curve_timesteps, diffusion_loss, loss_curve
from ddpm_app.diffusion.samplers import step_breakdown
from ddpm_app.image import to_uint8
from ddpm_app.metrics import heldout
from ddpm_app.numbers import number
from ddpm_app.pictures import picture
from ddpm_app.runtime.inference import prepare_cpu
from ddpm_app.serve.library import ModelLibrary
from ddpm_app.text import translated
from ddpm_app.ui import page as ui
from ddpm_app.ui import training as training_tab
from ddpm_app.ui.i18n import english
from ddpm_app.views import likelihood as likelihood_view
from ddpm_app.views import training as training_view
from ddpm_app.views.compare import frame_at
from ddpm_app.views.likelihood import (
    CLIP_X0,
    ESTIMATE_TIMESTEPS,
    timesteps_per_call,
    verdict,
)
from ddpm_app.views.reverse_step import display_gain, frame_breakdown
from ddpm_app.views.state import UserState

T = 20
LANDSCAPE = PHOTO.parent / "landscape.png"


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> ModelLibrary:
    root = tmp_path_factory.mktemp("teach")
    save_tiny(root / "faces")
    save_tiny(root / "other", seed=3)
    return ModelLibrary(root, "cpu", precision="fp32")  # known answers are float32 values


@pytest.fixture
def handlers(library, tmp_path) -> ui.Handlers:
    return ui.Handlers(library, preview_interval=0, export_dir=tmp_path / "exports")


@pytest.fixture
def teach(library, tmp_path) -> ui.Handlers:
    return ui.Handlers(library, preview_interval=0, figure_dir=tmp_path / "figures")


# -- the reverse step, explained ------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler, steps, target", [("ddpm", 1, "x_19"), ("ddim", 5, "x_15")])
def test_generate_status_and_frames_show_the_step_with_the_samplers_numbers(handlers, library, sampler, steps, target):
    """T = 20, in the paper's t: the first step is t = 20 and makes x_19 (DDPM) or x_15 (DDIM-5 visits t = 20, 15,
    11, 6, 1); the last makes x_0."""
    user = UserState()
    outs = list(handlers.generate(sampler, steps, 0.0, 7, 2, False, False, user))
    served = library.get("faces")
    settings = user.run.settings
    replay = list(served.sample(settings, 2, 7))  # the same run again: the same steps, noise included
    first = step_breakdown(served.schedule, replay[0], settings)
    torch.testing.assert_close(first.result(), replay[0].x_prev, rtol=0, atol=2e-5)
    status = outs[0][3]
    assert f"{target} = {number(first.terms[0].coefficient)}·" in status  # the update, its numbers filled in
    assert "t = <b>20</b>" in status

    x_t, x0, label, update, terms, which, change = handlers.frame(1, user)
    assert which == "generate" and "t = 20**" in label and f"x_{{{target[2:]}}} = " in update
    for term in first.terms:  # the same coefficients, written for LaTeX
        assert number(abs(term.coefficient), latex=True) in update
    assert terms.shape[1] > 4 * 16  # x_t term | ε̂ term | noise term | result, each enlarged
    last = handlers.frame(len(user.run.frames), user)[3]
    assert "x_{0}" in last and ("no noise on the last step" in last or sampler == "ddim")


@pytest.mark.parametrize("sampler, steps, clip", [("ddpm", 1, True), ("ddim", 5, False)])
def test_the_terms_add_up_to_the_shown_x_prev_at_t_T_minus_1_too(handlers, library, sampler, steps, clip):
    """At t = T−1, x_t ~ N(0, I) leaves [−1, 1] on a third of its values (and DDIM's unclipped x̂₀ much more): the
    terms are built from the step's own tensors, so they add up to the x_{t−1} the strip shows to within a grey
    level, and the change picture is x_{t−1} − x_t of the sampler's step."""
    user = UserState()
    list(handlers.generate(sampler, steps, 0.0, 7, 2, clip, False, user))
    served, run = library.get("faces"), user.run
    frame = run.frames[0]
    assert frame.t == T - 1 and (frame.first_x_t.abs() > 1).float().mean() > 0.2  # where a clamp would bite
    parts = frame_breakdown(run, frame)
    assert_pictures_close(picture(parts.result()), picture(frame.x_prev), levels=1)
    step = next(served.sample(run.settings, 2, 7))  # the same step again, in float32
    torch.testing.assert_close(parts.result()[0], step.x_prev[0], rtol=0, atol=0.01)

    change = handlers.frame(1, user)[6]
    exact = step.x_prev[0] - step.x_t[0]
    gain = display_gain(exact)
    tile = change[:128:8, :128:8]  # the 16×16 image, enlarged 8× with sharp pixels, its caption below
    assert_pictures_close(tile, picture(exact * gain), levels=1)
    assert picture(exact).std() > 0  # a step that moves x_t


def test_the_step_says_which_variance_its_noise_has_and_which_eps_it_shows(handlers):
    """DDPM's σ_t² is the posterior variance β̃_t (the samplers' default), DDIM's σ is η's formula; with clipping on
    the update says that ε̂ is the one consistent with the clipped x̂₀ (it is: ε̂ = (x_t − √ᾱ_t·x̂₀)/√(1−ᾱ_t))."""
    user = UserState()
    list(handlers.generate("ddpm", 1, 0.0, 7, 1, True, False, user))
    update = handlers.frame(3, user)[3]
    assert "\\sigma_t^2 = \\tilde\\beta_t = \\frac{1-\\bar\\alpha_{t-1}}{1-\\bar\\alpha_t}\\,\\beta_t" in update
    assert "consistent with it" in update
    list(handlers.generate("ddim", 5, 0.5, 7, 1, False, False, user))
    update = handlers.frame(2, user)[3]
    assert "\\sigma = \\eta" in update and "tilde" not in update and "consistent with it" not in update


def frame_heads(handlers, user, count: int) -> list[str]:
    """The bold head of the Frames label for frames 1…count: "step k of n · t = …"."""
    return [re.match(r"\*\*(.*?)\*\*", handlers.frame(i, user)[2]).group(1) for i in range(1, count + 1)]


def test_frames_name_the_step_and_t_of_each_frame_for_ddpm_ddim_and_sdedit(handlers, library):
    user = UserState()
    list(handlers.generate("ddpm", 1, 0.0, 3, 1, False, False, user))  # T = 20: the paper's t = 20, 19, …, 1
    assert frame_heads(handlers, user, 3) == ["step 1 of 20 · t = 20", "step 2 of 20 · t = 19",
                                              "step 3 of 20 · t = 18"]
    assert handlers.frame(20, user)[2].startswith("**step 20 of 20 · t = 1**")
    list(handlers.generate("ddim", 5, 0.0, 3, 1, False, False, user))  # linspace(20, 1, 5) rounded
    assert frame_heads(handlers, user, 5) == ["step 1 of 5 · t = 20", "step 2 of 5 · t = 15", "step 3 of 5 · t = 11",
                                              "step 4 of 5 · t = 6", "step 5 of 5 · t = 1"]
    handlers.noise(str(PHOTO), 9, True, 5, user)
    list(handlers.denoise("ddim", 4, 0.0, 1, True, user))  # SDEdit: the chain starts at the Forward tab's t = 9
    assert frame_heads(handlers, user, 4) == ["step 1 of 4 · t = 9", "step 2 of 4 · t = 6", "step 3 of 4 · t = 4",
                                              "step 4 of 4 · t = 1"]
    list(handlers.denoise("ddpm", 1, 0.0, 1, True, user))  # t = 9, 8, …, 1: nine steps
    assert frame_heads(handlers, user, 2) == ["step 1 of 9 · t = 9", "step 2 of 9 · t = 8"]


def test_frames_of_a_thinned_run_name_the_step_they_hold(library, tmp_path):
    served = library.get("faces")
    per_step = 2 * 3 * 16 * 16 + 9 * 3 * 16 * 16  # x_t, x̂₀, x_prev (uint8); x_t, x̂₀, ε̂, z (float16) of one image
    thin = ui.Handlers(library, preview_interval=0, export_dir=tmp_path, max_trajectory_bytes=per_step * 6)
    user = UserState()
    list(thin.generate("ddpm", 1, 0.0, 3, 1, False, False, user))
    assert user.run.stride == 4 and served.timesteps == 20  # frames hold steps 1, 5, 9, 13, 17 and 20
    assert frame_heads(thin, user, 6) == ["step 1 of 20 · t = 20", "step 5 of 20 · t = 16", "step 9 of 20 · t = 12",
                                          "step 13 of 20 · t = 8", "step 17 of 20 · t = 4", "step 20 of 20 · t = 1"]


def test_generate_and_denoise_runs_do_not_replace_each_other(handlers):
    user = UserState()
    list(handlers.generate("ddim", 4, 0.0, 1, 1, True, False, user))
    handlers.noise(str(PHOTO), 9, True, 5, user)
    list(handlers.denoise("ddim", 3, 0.0, 1, True, user))
    assert user.runs["generate"].num_steps == 4 and user.runs["denoise"].num_steps == 3
    assert handlers.frame(1, user)[5] == "denoise"  # Frames shows the latest run…
    slider, *out = handlers.show_run("generate", user)  # …and either one on request
    assert slider["value"] == 4 and out[5] == "generate" and "DDIM, 4 steps" in out[2]
    with pytest.raises(gr.Error, match="run must be one of generate, denoise"):
        handlers.show_run("nonsense", user)


# -- the training view -----------------------------------------------------------------------------------------


def test_training_step_loss_is_diffusion_loss_on_the_same_x0_t_and_eps(teach, library):
    """The slider's t = 14 is the paper's: x_14 = √ᾱ_14·x₀ + √(1−ᾱ_14)·ε with ᾱ_14 = ∏_{s≤14}(1 − β_s), the tables'
    row 13."""
    user = UserState()
    x0_pic, eps_pic, xt_pic, pred_pic, heat, numbers, plot = teach.train_step(str(PHOTO), 14, 42, user)
    served = library.get("faces")
    x0 = served.prepare_photo(str(PHOTO))
    eps = served.draw_noise(42)
    with torch.inference_mode():
        expected = float(diffusion_loss(served.eps_model, served.schedule, x0[None], torch.tensor([13]), eps[None]))
    step = user.lesson.step
    assert step.loss == pytest.approx(expected, rel=1e-6)
    assert step.loss_sum == pytest.approx(expected * x0.numel(), rel=1e-5)  # the tutorial's per-image sum
    assert number(step.loss) in numbers and f"{step.loss_sum:.1f}" in numbers
    torch.testing.assert_close(step.x_t, served.schedule.q_sample(x0[None], torch.tensor([13]), eps[None])[0])
    config = served.config.schedule
    abar_14 = np.prod(1 - np.linspace(config.beta_start, config.beta_end, config.timesteps)[:14])
    assert "**t = 14**" in numbers and f"x_{{14}} = {number(abar_14 ** 0.5, latex=True)}\\,x_0" in numbers
    assert heat.shape == (16, 16, 3) and plot.shape[1] > plot.shape[0]
    other = teach.train_step(str(PHOTO), 14, 43, user)  # another ε: another loss
    assert user.lesson.step.loss != pytest.approx(expected)
    assert not np.array_equal(other[1], eps_pic)


def bf16_timesteps(served, fp32, x0: torch.Tensor, eps: torch.Tensor) -> list[int]:
    """The t at which the served network really computes in bf16, asked of the network itself: its ε̂ for x_t differs
    from fp32's by bf16 rounding (about 10⁻² relative on the tiny model) rather than by float32 rounding (10⁻⁶). Where
    and whether it hands the last steps to fp32 is the engine's choice, and may differ between CPUs."""
    steps = []
    with torch.inference_mode():
        for step in range(served.schedule.timesteps):
            t = torch.tensor([step])
            x_t = served.schedule.q_sample(x0, t, eps)
            ours, exact = served.eps_model(x_t, t), fp32(x_t, t)
            if float((ours - exact).norm() / exact.norm()) > 1e-4:
                steps.append(step)
    return steps


@needs_bf16
def test_training_and_likelihood_measure_in_fp32_when_sampling_runs_in_bf16(tmp_path):
    """The held-out figures beside the photo's were made in fp32, so the photo's are too: bf16 rounding of ε̂ would
    move ‖ε − ε̂‖² far more than float32 rounding does (11–17 % at large t on the shipped faces model)."""
    save_tiny(tmp_path / "faces")
    library = ModelLibrary(tmp_path, "cpu", precision="bf16", cpu_runtime="auto")  # bf16 runs in OpenVINO
    served = library.get("faces")
    assert served.eps_model.precision == "bf16" and served.eps_model.fp32().precision == "fp32"
    fp32 = prepare_cpu(served.loaded.model, "fp32")  # built afresh: the known answer
    x0, eps = served.prepare_photo(str(PHOTO))[None], served.draw_noise(42)[None]
    in_bf16_at = bf16_timesteps(served, fp32, x0, eps)
    assert in_bf16_at, "the network prepared in bf16 computes every step in fp32: nothing here to tell apart"
    with torch.inference_mode():
        losses = {step: [float(diffusion_loss(net, served.schedule, x0, torch.tensor([step]), eps))
                         for net in (fp32, served.eps_model)] for step in in_bf16_at}
    step = max(losses, key=lambda s: abs(losses[s][1] - losses[s][0]))  # where bf16 shows most on this CPU
    in_fp32, in_bf16 = losses[step]
    teach = ui.Handlers(library, preview_interval=0, figure_dir=tmp_path / "f")
    user = UserState()
    teach.train_step(str(PHOTO), step + 1, 42, user)  # the slider's t is the paper's: the tables' row + 1
    same = 1e-6  # float32 rounding between two fp32 networks; bf16 moves the loss further (the tiny model's ε̂ is
    # small, so by 10⁻⁵–10⁻³ here, where the shipped model's moves by per cent)
    assert user.lesson.step.loss == pytest.approx(in_fp32, rel=same)
    assert in_bf16 != pytest.approx(in_fp32, rel=same)  # the network that samples would have shown another number
    list(teach.likelihood(str(PHOTO), False, 11, True, user))
    expected, sampling = (bits_per_dim(net, served.schedule, to_uint8(x0[0])[None], num_timesteps=ESTIMATE_TIMESTEPS,
                                       batch_size=timesteps_per_call(T), generator=served.generator(11),
                                       clip_x0=CLIP_X0) for net in (fp32, served.eps_model))
    assert user.lesson.likelihood.total == pytest.approx(expected.total, rel=same)  # fp32, by another engine here
    assert sampling.total != pytest.approx(expected.total, rel=same)  # bf16 would have shown another number


def test_training_view_marks_t_on_the_curve_without_redrawing(teach):
    user = UserState()
    a = teach.train_step(str(PHOTO), 2, 0, user)[6]
    b = teach.train_step(str(PHOTO), 17, 0, user)[6]
    moved = np.argwhere((a != b).any(axis=2))[:, 1]
    assert len(moved) and moved.min() < moved.max()  # the marker moved along x, nothing else changed much
    assert (a != b).any(axis=2).sum() < 0.05 * a.shape[0] * a.shape[1]


def test_loss_curve_is_the_library_curve_and_says_when_held_out_figures_are_missing(teach, library):
    user = UserState()
    with pytest.raises(gr.Error, match="upload a photo"):
        list(teach.loss_curve(None, 3, user))
    *_, (plot, summary) = teach.loss_curve(str(PHOTO), 3, user)
    served = library.get("faces")
    x0 = served.prepare_photo(str(PHOTO))
    expected = loss_curve(served.eps_model, served.schedule, x0[None], curve_timesteps(T, training_view.CURVE_TIMESTEPS),
                          draws=training_view.CURVE_DRAWS, generator=served.generator(training_tab.CURVE_SEED),
                          batch_size=7)  # ε does not depend on the batch
    assert user.lesson.curve.mean == pytest.approx(expected.mean, rel=1e-6)
    assert user.lesson.curve.timesteps == list(range(T))  # 25 points asked, T = 20 available
    assert "No held-out curve" in summary and "heldout.json" in summary
    assert plot.shape[1] > plot.shape[0]


def test_held_out_figures_are_stored_loaded_and_compared(tmp_path):
    folder = save_tiny(tmp_path / "m")
    library = ModelLibrary(tmp_path, "cpu")
    served = library.get("m")
    assert served.heldout is None and "no heldout.json" in served.heldout_note  # an older folder still loads
    images = to_uint8(torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    stats = heldout.measure(served.eps_model, served.schedule, images, "noise, split test", loss_timesteps=5,
                            bound_timesteps=6)
    # the stored figures are the library's loss curve (ε from the seed) and bound (x̂₀ clipped, as the evaluation
    # reports it; noise from seed + 1): fails if the bound is left unclipped or the curve misses t = T − 1
    expected_bpd = bits_per_dim(served.eps_model, served.schedule, images, num_timesteps=6,
                                generator=torch.Generator().manual_seed(1), clip_x0=True)
    expected_loss = loss_curve(served.eps_model, served.schedule, images.float() / 127.5 - 1, [0, 5, 10, 14, 19],
                               generator=torch.Generator().manual_seed(0))
    assert stats.bpd == expected_bpd and stats.bpd.clip_x0
    assert stats.loss.timesteps == expected_loss.timesteps and stats.loss.mean == pytest.approx(expected_loss.mean)
    heldout.save(stats, folder)
    again = heldout.load(folder)
    assert again.loss == stats.loss and again.bpd == stats.bpd and again.loss.num_images == 6
    assert again.bpd.timesteps_evaluated == 6 and not again.bpd.exact

    fresh = ModelLibrary(tmp_path, "cpu").get("m")
    teach = ui.Handlers(ModelLibrary(tmp_path, "cpu"), preview_interval=0, figure_dir=tmp_path / "f")
    *_, (_, summary) = teach.loss_curve(str(PHOTO), 3, UserState())
    assert "Held-out images (6, noise, split test)" in summary and fresh.heldout is not None

    (folder / heldout.HELDOUT_NAME).write_text("{not json")
    broken = ModelLibrary(tmp_path, "cpu").get("m")
    assert broken.heldout is None and "not a readable held-out file" in broken.heldout_note
    # a Chinese page says why in Chinese, the file's path and the reader's words carried over
    chinese = translated(broken.heldout_note, "zh-CN")
    assert chinese.startswith(f"{folder / heldout.HELDOUT_NAME}：不是可读的留出数据文件（JSONDecodeError: ")


# -- the photo, carried from Forward ------------------------------------------------------------------------------


def test_the_forward_photo_is_carried_into_a_tab_unless_the_user_put_another_there(teach, tmp_path):
    """Opening Training (or Likelihood) brings Forward's photo into its empty input, and a new Forward photo
    replaces the one carried there before (Gradio shows it from a copy in its cache: same bytes, another path);
    a photo the user put there stays, and so does one that is already Forward's."""
    user, skip = UserState(), gr.skip()
    shown = tmp_path / "cache-copy.png"
    shown.write_bytes(PHOTO.read_bytes())  # the carried photo as the browser sends it back
    assert teach.carry_photo("training", str(PHOTO), None, user) == str(PHOTO)
    assert teach.carry_photo("training", str(PHOTO), str(shown), user) == skip  # already there
    assert teach.carry_photo("training", str(LANDSCAPE), str(shown), user) == str(LANDSCAPE)  # replaces the carried
    assert teach.carry_photo("likelihood", str(PHOTO), str(LANDSCAPE), user) == skip  # the user's own stays
    assert teach.carry_photo("likelihood", None, None, user) == skip  # nothing in Forward
    assert teach.carry_photo("likelihood", str(PHOTO), None, user) == str(PHOTO)


def test_opening_training_or_likelihood_carries_the_forward_photo(library):
    """The two tabs' select events take the Forward photo and the tab's own as inputs and write the tab's own."""
    demo = ui.build(library)
    carries = {d.fn.__name__: d for d in demo.fns.values() if d.fn and d.fn.__name__.startswith("carry_photo_")}
    assert set(carries) == {"carry_photo_training", "carry_photo_likelihood"}
    for dep in carries.values():
        forward_photo, own, _ = dep.inputs
        assert dep.outputs == [own] and english(forward_photo.label) == "Photo (center-cropped, resized)"
        assert dep.targets[0][1] == "select"


# -- the likelihood of a photo ------------------------------------------------------------------------------------


@pytest.mark.parametrize("exact", [False, True])
def test_likelihood_is_bits_per_dim_on_the_same_image_timesteps_and_noise(teach, library, exact):
    user = UserState()
    outs = list(teach.likelihood(str(PHOTO), exact, 11, True, user))
    assert len(outs) >= 2 and "progress" in outs[0][0]  # progress before the result
    status, plot, verdict = outs[-1]
    served = library.get("faces")
    x0 = served.prepare_photo(str(PHOTO))
    expected = bits_per_dim(served.eps_model, served.schedule, to_uint8(x0)[None],
                            num_timesteps=None if exact else ESTIMATE_TIMESTEPS, batch_size=timesteps_per_call(T),
                            generator=served.generator(11), clip_x0=CLIP_X0)
    got = user.lesson.likelihood
    assert got.total == pytest.approx(expected.total, rel=1e-12) and got.per_timestep == expected.per_timestep
    assert got.timesteps_evaluated == T and got.exact  # T = 20 < 50: the estimate is the exact sum here
    assert f"{expected.total:.3f}" in verdict and "No held-out figure" in verdict
    assert "Done" in status and plot.shape[1] <= 640  # the two panels one above the other: narrow, for a phone


def test_a_new_run_clears_the_previous_photos_result_first(teach):
    """While a new photo's bound is computed, the previous photo's plot and verdict are gone: the first output
    clears both, before any result."""
    user = UserState()
    list(teach.likelihood(str(PHOTO), False, 1, True, user))
    first = next(teach.likelihood(str(LANDSCAPE), False, 1, True, user))
    assert first[1] is None and "bits/dim" not in first[2] and "value='0'" in first[0]


def test_likelihood_offers_ho_et_al_s_unclipped_bound(teach, library):
    """Unticked, p_θ's mean uses x̂₀ as the network gives it: the library's bound with clip_x0 False, and the text
    says which bound it is and that the held-out figure clips."""
    served = library.get("faces")
    x0 = to_uint8(served.prepare_photo(str(PHOTO)))[None]
    unclipped, clipped = UserState(), UserState()
    *_, (status, _, text) = teach.likelihood(str(PHOTO), False, 11, False, unclipped)
    *_, (_, _, text_clipped) = teach.likelihood(str(PHOTO), False, 11, True, clipped)
    expected = bits_per_dim(served.eps_model, served.schedule, x0, num_timesteps=ESTIMATE_TIMESTEPS,
                            batch_size=timesteps_per_call(T), generator=served.generator(11), clip_x0=False)
    assert unclipped.lesson.likelihood.total == pytest.approx(expected.total, rel=1e-12)
    assert unclipped.lesson.likelihood.total != clipped.lesson.likelihood.total  # the tiny model's x̂₀ leaves [−1, 1]
    assert "x̂₀ not clipped" in status and "Ho et al.'s bound" in text and "unclipped in p_θ's mean" in text
    assert "clipped to [−1, 1] in p_θ's mean" in text_clipped
    held = heldout.HeldOut("faces, split test", "m", None, bound(3.0))  # measured with clipping
    assert "The held-out figure clips x̂₀." in verdict(unclipped.lesson.likelihood, held)
    assert "The held-out figure" not in verdict(clipped.lesson.likelihood, held)


def test_exact_means_every_t_not_free_of_noise():
    exact = verdict(bound(3.0), None)
    assert "every t is evaluated" in exact and "another seed moves the total" in exact
    estimate = verdict(BitsPerDim(3.0, 0.01, 0.001, 0.5, 2.499, 1, 50, False, "posterior", True, []), None)
    assert "An estimate from 50 timesteps" in estimate


@pytest.mark.parametrize("total", [3.0, 40.0])
def test_the_terms_plot_marks_the_8_bits_of_the_raw_pixels(total):
    """A dashed line at 8 bits/dim on the bars, inside the axes whatever the bound (a noise image's 40 too), and a
    bound above 8 is read as worse than storing the pixels."""
    fig = likelihood_view.terms_figure(bound(total), heldout.HeldOut("d", "m", None, bound(3.0)), T)
    bars = fig.axes[1]
    assert any(list(line.get_ydata()) == [8, 8] for line in bars.lines)
    assert bars.get_ylim()[1] > max(8, total)
    assert [t.get_text() for t in bars.get_xticklabels()][-1] == "total"
    assert ("more than the 8 bits/dim of storing the raw 8-bit pixels" in verdict(bound(total), None)) == (total > 8)


def bound(total: float) -> BitsPerDim:
    return BitsPerDim(total, 0.01, 0.001, 0.5, total - 0.501, 4, T, True, "posterior", True, [])


@pytest.mark.parametrize("photo, reading", [(3.3, "close to the held-out average"), (4.0, "somewhat worse"),
                                            (6.0, "much worse")])
def test_verdict_reads_the_photo_against_the_held_out_ratio(photo, reading):
    """Held-out 3.0 bits/dim: a photo at 3.3 (ratio 1.1) is close, at 4.0 (1.33) somewhat worse, at 6.0 (2) much
    worse, and the difference is photo − held-out. Fails if the ratio or the difference is taken the other way."""
    text = verdict(bound(photo), heldout.HeldOut("faces, split test", "m", None, bound(3.0)))
    assert reading in text and f"Difference: **{photo - 3.0:+.3f} bits/dim**" in text
    assert f"**Your photo: {photo:.3f} bits/dim**" in text and "over 4 images" in text


def test_the_verdict_says_how_much_of_the_bound_lies_in_the_least_noisy_steps():
    """T = 1000: the paper's t ≤ 10 is the least noisy 1 %, ten terms: the decoder L_0 (t = 1, the bound's row 0)
    and L_{t−1} for t = 2…10 (rows 1…9). The photo's are 1.0 and then 0.1·(t − 1) (Σ = 5.5), then 0.001 each; a
    stratified row inside t ≤ 10, or no terms at all, says nothing."""
    rows = [(0, 1.0, 1.0)] + [(i, 1.0, 0.1 * i) for i in range(1, 10)] + [(i, 1.0, 0.001) for i in range(10, 1000)]
    photo = BitsPerDim(7.489, 0.01, 0.0, 1.0, 6.489, 4, 1000, True, "posterior", True, rows)
    assert likelihood_view.least_noisy_bits(photo, 10) == pytest.approx(5.5)
    held = BitsPerDim(3.0, 0.01, 0.0, 1.5, 1.5, 4, 1000, True, "posterior", True,
                      [(i, 1.0, 2.6 / 10) for i in range(10)] + [(i, 1.0, 0.0004) for i in range(10, 1000)])
    text = verdict(photo, heldout.HeldOut("faces, split test", "m", None, held), timesteps=1000)
    assert "**5.50** lie in the decoder and the least noisy 1 % of the steps, t ≤ 10 (held-out images: 2.60 of 3.00)" in text
    assert "(held-out" not in verdict(photo, None, timesteps=1000) and "**5.50**" in verdict(photo, None, timesteps=1000)
    strided = BitsPerDim(7.489, 0.01, 0.0, 1.0, 6.489, 4, 50, False, "posterior", True, [(0, 1.0, 1.0), (5, 9.0, 0.5)])
    assert likelihood_view.least_noisy_bits(strided, 10) is None
    assert "least noisy" not in verdict(strided, None, timesteps=1000)
    assert "least noisy" not in verdict(photo, None)  # T unknown


def test_likelihood_estimate_samples_timesteps_when_T_is_large(tmp_path):
    save_tiny(tmp_path / "long", timesteps=120)
    teach = ui.Handlers(ModelLibrary(tmp_path, "cpu"), preview_interval=0, figure_dir=tmp_path / "f")
    user = UserState()
    outs = list(teach.likelihood(str(PHOTO), False, 3, True, user))
    assert user.lesson.likelihood.timesteps_evaluated == ESTIMATE_TIMESTEPS and not user.lesson.likelihood.exact
    done = [int(m) for o in outs[:-1] for m in re.findall(r"value='(\d+)'", o[0])]
    assert done == [0, 10, 20, 30, 40]  # an update before the first network call and after each but the last
    # the model's T reaches the verdict: 1 % of T = 120 is t ≤ 1, the decoder, evaluated in the estimate
    assert "least noisy 1 % of the steps, t ≤ 1:" in outs[-1][2]


def test_the_bound_goes_through_the_network_in_a_few_large_calls():
    assert [timesteps_per_call(n) for n in (50, 1000, 20, 3)] == [10, 50, 4, 1]


def test_likelihood_stop_ends_the_computation(tmp_path):
    save_tiny(tmp_path / "long", timesteps=200)
    library = ModelLibrary(tmp_path, "cpu")
    teach = ui.Handlers(library, preview_interval=0, figure_dir=tmp_path / "f")
    gen = teach.likelihood(str(PHOTO), True, 3, True, UserState())
    next(gen)
    gen.close()  # what Stop does
    assert library.worker.run(lambda: "free") == "free"  # the worker is not stuck in the cancelled bound


# -- runs side by side ---------------------------------------------------------------------------------------------


def test_pin_a_run_and_compare_another_from_the_same_seed(handlers, teach):
    user = UserState()
    assert teach.compare(10, user)[0] is None
    with pytest.raises(gr.Error, match="Nothing to pin"):
        teach.pin(user)
    list(handlers.generate("ddpm", 1, 0.0, 5, 1, True, False, user))
    caption, picture_, slider = teach.pin(user)
    assert "DDPM" in caption and slider["value"] == T  # the paper's t of x_T
    list(handlers.generate("ddim", 5, 0.0, 5, 1, True, False, user))
    image, caption = teach.compare(8, user)
    assert "**A** (pinned): DDPM" in caption and "**B** (latest): DDIM, 5 steps" in caption
    assert "seeds differ" not in caption
    assert "DDPM (and DDIM with η > 0) draws fresh noise z at every step" in caption  # why A and B differ
    list(handlers.generate("ddpm", 1, 0.0, 5, 1, True, False, UserState()))
    same = UserState()  # DDPM twice from one seed: the same z, the same image, nothing to explain
    list(handlers.generate("ddpm", 1, 0.0, 5, 1, True, False, same))
    teach.pin(same)
    list(handlers.generate("ddpm", 1, 0.0, 5, 1, True, False, same))
    assert "fresh noise" not in teach.compare(8, same)[1]
    list(handlers.generate("ddim", 5, 0.0, 5, 1, True, False, same))
    teach.pin(same)
    list(handlers.generate("ddim", 4, 0.0, 5, 1, True, False, same))  # η = 0 both: no fresh noise anywhere
    assert "fresh noise" not in teach.compare(8, same)[1]
    # DDPM stores every t = 20, 19, …, 1 (the paper's; t = 8 is its 13th step); DDIM's 5 steps of T = 20 are
    # 1 + round(linspace(19, 0, 5)) = 20, 15, 11, 6, 1, so at t = 8 the DDIM chain is still at x_11, its third
    # step. Fails if B shows the pinned run or the frame is not the last one at or above t.
    assert frame_at(user.pinned, 7).t == 7 and frame_at(user.run, 7).t == 10  # the tables' rows of t = 8 and 11
    assert "at t = 8, step 13/20" in caption.split("**B**")[0] and "at t = 11, step 3/5" in caption.split("**B**")[1]
    assert image.shape[1] > 4 * 16
    played = list(teach.play(user, positions=4, delay=0))
    assert [p[0] for p in played] == [T, 14, 7, 1]


# -- interpolation -------------------------------------------------------------------------------------------------


def test_slerp_keeps_the_norm_on_the_arc_between_orthogonal_noises():
    """For orthogonal a, b of equal norm, θ = π/2 and slerp(w) = cos(w·π/2)·a + sin(w·π/2)·b: at w = 1/3 that is
    (√3/2)·a + ½·b, of the same norm as a. Fails for a straight line (norm 1/√2 at w = ½) or swapped ends."""
    a, b = torch.zeros(2, 3, 2, 2), torch.zeros(2, 3, 2, 2)
    a[0, 0, 0, 0], b[1, 2, 1, 1] = 2.0, 2.0
    out = interpolation.slerp(a, b, torch.tensor([0.0, 1 / 3, 0.5, 1.0]))
    assert out.shape == (4, 2, 3, 2, 2) and out.dtype == a.dtype
    torch.testing.assert_close(out[0], a)
    torch.testing.assert_close(out[1], 3 ** 0.5 / 2 * a + 0.5 * b)
    torch.testing.assert_close(out[2], (a + b) / 2 ** 0.5)
    torch.testing.assert_close(out[3], b)
    assert interpolation.weights(5).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_interpolation_ends_are_the_two_seeds_generate_images(handlers, teach, eta):
    """η = 0: the same x_T through the same deterministic chain. η = 1: every z is slerped between the two seeds'
    draws too, so the ends still get exactly each seed's own noise (a shared generator made them noisy)."""
    user = UserState()
    outs = list(teach.interpolate(3, 9, 4, 5, eta, True, user))
    assert "Done" in outs[-1][1] and f"η = {eta:g}" in outs[-1][1] and len(user.lesson.interpolation) == 4
    for seed, end in ((3, 0), (9, -1)):
        generated = UserState()
        list(handlers.generate("ddim", 5, eta, seed, 1, True, False, generated))
        diff = (generated.run.final[0].int() - user.lesson.interpolation[end].int()).abs().max()
        assert diff <= 1, (seed, int(diff))
    middle = user.lesson.interpolation[1:3].int()
    assert (middle - user.lesson.interpolation[0].int()).abs().max() > 1  # the middle is neither end
    with pytest.raises(gr.Error, match="number of images must be a whole number in 2…10"):
        next(teach.interpolate(1, 2, 11, 5, eta, True, user))


# -- figures for slides ----------------------------------------------------------------------------------------


def test_every_view_exports_a_labelled_slide_figure(handlers, teach):
    user = UserState()
    with pytest.raises(gr.Error, match="nothing to export yet"):
        teach.export_figure("training", user)
    list(handlers.generate("ddpm", 1, 0.0, 5, 1, True, False, user))
    teach.pin(user)
    list(handlers.generate("ddim", 4, 0.0, 5, 1, True, False, user))
    teach.compare(10, user)
    handlers.frame(3, user)
    handlers.noise(str(PHOTO), 9, True, 5, user)
    teach.train_step(str(PHOTO), 5, 1, user)
    list(teach.likelihood(str(LANDSCAPE), False, 1, True, user))
    list(teach.interpolate(1, 2, 3, 3, 0.0, True, user))
    for view in ("step", "forward", "training", "compare", "interpolation"):
        img = Image.open(teach.export_figure(view, user))
        assert img.height >= 512 + 20, view  # 16-pixel images enlarged to 512, a label line below
        px = np.asarray(img.convert("RGB"))
        assert (px[-40:] < 128).any(), f"{view}: no label text at the bottom"
    plot = Image.open(teach.export_figure("likelihood", user))
    assert plot.width >= 1800
    with pytest.raises(gr.Error, match="view must be one of step, forward, training"):
        teach.export_figure("nope", user)


def test_the_figures_row_offers_the_figure_of_the_tab_opened_last(library):
    """Opening a tab with a slide figure makes its figure the one offered; Model and the 2-D lab have none and
    leave it; the page starts on Generate, whose figure is the step's terms."""
    demo = ui.build(library)
    tabs = next(b for b in demo.blocks.values() if isinstance(b, gr.Tabs))
    view = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "figure-view")
    offered = {}
    for dep in demo.fns.values():
        if dep.outputs == [view] and dep.targets[0][1] == "select":
            offered[demo.blocks[dep.targets[0][0]].id] = dep.fn()
    assert offered == {"generate": "step", "frames": "step", "denoise": "step", "forward": "forward",
                       "training": "training", "likelihood": "likelihood", "compare": "compare",
                       "interpolate": "interpolation"}
    assert {tab.id for tab in tabs.children} - set(offered) == {"lab", "model"}
    assert view.value == "step" and tabs.children[0].id == "generate"


def test_teaching_endpoints_are_wired(library):
    demo = ui.build(library)
    names = {d.api_name for d in demo.fns.values() if d.api_visibility == "public"}
    assert {"train_step", "loss_curve", "likelihood", "compare", "pin", "interpolate", "export_figure",
            "show_run"} <= names
    heavy = [d for d in demo.fns.values() if d.api_name in ("likelihood", "interpolate")]
    assert all(d.concurrency_id == "model" for d in heavy)


def test_heldout_json_is_plain_json(tmp_path):
    stats = heldout.HeldOut("d", "m", None, None)
    path = heldout.save(stats, tmp_path)
    assert json.loads(path.read_text()) == {"data": "d", "method": "m", "loss": None, "bpd": None}
