"""What the app says and writes: titles that state what ran, numbered frames, small numbers, exported files
(their names, their fonts, their progress) and the help texts' claims."""

from __future__ import annotations

import re
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw
from tiny_app import PHOTO, T, run_all, save_tiny

from ddpm_app.diffusion.samplers import SamplerSettings, Step
from ddpm_app.diffusion.schedule import Schedule, ScheduleConfig
from ddpm_app.numbers import number
from ddpm_app.pictures import noise_picture, picture
from ddpm_app.serve.library import ModelLibrary
from ddpm_app.serve.runs import RunName, Trajectory, sampler_words
from ddpm_app.text import catalogue
from ddpm_app.ui import denoise, forward, frames, generate, kit
from ddpm_app.ui import page as ui
from ddpm_app.views import pace
from ddpm_app.views.export import export_gif
from ddpm_app.views.state import UserState


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> ModelLibrary:
    root = tmp_path_factory.mktemp("weights")
    save_tiny(root / "faces")  # 16×16 RGB, T = 20
    return ModelLibrary(root, "cpu")


@pytest.fixture
def handlers(library: ModelLibrary, tmp_path: Path) -> ui.Handlers:
    return ui.Handlers(library, preview_interval=0, export_dir=tmp_path / "exports")


def noised(handlers: ui.Handlers, t: int) -> UserState:
    user = UserState()
    handlers.noise(str(PHOTO), t, True, 5, user)
    return user


# -- titles state what ran ----------------------------------------------------------------------------------


@pytest.mark.parametrize("settings, start_t, steps, title", [
    (SamplerSettings("ddpm", 1000), 30, 31, "DDPM, 31 steps"),
    (SamplerSettings("ddpm", 1000), 999, 1000, "DDPM, 1000 steps"),
    (SamplerSettings("ddim", 1000), 0, 1, "DDIM, 1 step, η = 0"),
    (SamplerSettings("ddim", 50, 0.5), 999, 50, "DDIM, 50 steps, η = 0.5"),
    (SamplerSettings("ddim", 50), 9, 10, "DDIM, 10 steps, η = 0"),
])
def test_the_description_counts_the_steps_a_chain_from_start_t_runs(settings, start_t, steps, title):
    assert settings.num_steps(start_t) == steps
    assert sampler_words(settings, start_t) == title
    name = RunName(settings, start_t, 7)
    assert name.title == f"{title}, x̂₀ clipped, seed 7" and f"-{steps}steps" in name.file_stem


def test_denoise_titles_frames_and_exports_with_the_steps_that_ran(handlers: ui.Handlers, monkeypatch):
    user = noised(handlers, 9)  # the paper's t = 9: DDPM takes the steps t = 9, 8, …, 1
    outs = run_all(handlers.denoise("ddpm", 1, 0.0, 3, True, user))
    assert len(outs) == 9 and user.run.title == "SDEdit from t = 9, DDPM, 9 steps, seed 3"
    drawn = record_drawn_text(monkeypatch)
    path = Path(handlers.export("gif", user))
    assert path.name == "sdedit-t9_ddpm-9steps_seed3.gif"
    assert user.run.title in {text for text, _ in drawn}  # the GIF's header says what ran too

    user = noised(handlers, 1)
    assert len(run_all(handlers.denoise("ddim", T, 0.0, 4, True, user))) == 1
    assert "DDIM, 1 step, η = 0" in handlers.frame(1, user)[2]
    assert Path(handlers.export("png", user)).name == "sdedit-t1_ddim-1steps-eta0_seed4.png"


def test_generate_files_are_named_by_sampler_steps_and_seed(handlers: ui.Handlers):
    user = UserState()
    run_all(handlers.generate("ddim", 5, 0.5, 8, 1, True, False, user))
    assert Path(handlers.export("gif", user)).name == "ddim-5steps-eta0.5_seed8.gif"
    run_all(handlers.generate("ddpm", 5, 0.5, 9, 1, True, False, user))
    assert Path(handlers.export("png", user)).name == f"ddpm-{T}steps_seed9.png"


def test_the_denoise_sampler_choices_say_what_runs_from_t():
    choices = dict((value, catalogue("en")[key]) for key, value in denoise.SDEDIT_CHOICES)
    assert "all T steps" not in choices["ddpm"] and "from t down to 1: t steps" in choices["ddpm"]
    assert "at most t)" in choices["ddim"]


# -- frames are numbered from 1, and Stop shows the last one ------------------------------------------------


def test_the_slider_value_is_the_frame_number_the_label_shows(handlers: ui.Handlers):
    user = UserState()
    outs = run_all(handlers.generate("ddim", 6, 0.0, 2, 1, True, False, user))
    slider = outs[-1][5]
    assert slider["value"] == slider["maximum"] == 6
    assert "frame 6/6" in handlers.frame(slider["value"], user)[2]
    assert outs[0][5]["value"] == 1 and "frame 1/6" in handlers.frame(1, user)[2]


def test_after_stop_the_slider_and_frames_show_the_last_stored_frame(handlers: ui.Handlers):
    user = UserState()
    gen = handlers.generate("ddpm", 1, 0.0, 9, 1, True, False, user)
    previews = [next(gen) for _ in range(5)]
    assert previews[-1][5].get("value") is None  # mid-run previews leave the slider where the user put it
    gen.close()  # what Gradio does when Stop cancels the event
    slider, x_t, _, label, *_ = handlers.show_stopped(user)
    assert slider["value"] == slider["maximum"] == len(user.run.frames) == 5
    assert "frame 5/5" in label and "stopped after 5 of 20 steps" in label
    np.testing.assert_array_equal(x_t, picture(user.run.frames[-1].x_t))


# -- numbers -------------------------------------------------------------------------------------------------


def test_one_number_style_significant_digits_and_scientific_notation_outside_1e_3_to_1e5():
    assert number(0.7221) == "0.7221" and number(0.98765) == "0.9877" and number(-0.01234) == "-0.01234"
    assert number(0.0012) == "0.0012" and number(9999.0) == "9999" and number(0) == "0" and number(1.0) == "1"
    assert number(0.00099) == "9.900×10⁻⁴" and number(123456.0) == "1.235×10⁵"
    assert number(12000.0) == "1.200×10⁴"  # 4 significant digits cannot show 12000 without an exponent
    assert number(0.99998) == "0.99998"  # not "1": the digits that say how close to 1 stay
    assert number(-0.99996993) == "-0.99997" and number(1.0000012) == "1.000001"  # and no more of them
    assert number(2.5e-7, 2, latex=True) == r"2.5\times10^{-7}" and number(0.0064, 3, latex=True) == "0.0064"


def test_alpha_bar_near_T_is_in_scientific_notation_not_zero():
    abar = float(Schedule(ScheduleConfig()).alphas_cumprod[-1])  # linear schedule, T = 1000: ᾱ_999 = 4.0358e-5
    assert number(abar) == "4.036×10⁻⁵" and number(abar, latex=True) == r"4.036\times10^{-5}"


def test_status_and_forward_numbers_show_a_tiny_alpha_bar(tmp_path: Path):
    save_tiny(tmp_path / "faces", timesteps=1000)
    served = ModelLibrary(tmp_path).get()
    numbers = forward.forward_numbers(served, 996)
    assert "0.0000" not in numbers and "×10^{-" not in numbers
    assert "**4.288×10⁻⁵**" in numbers  # ᾱ_996 = 4.2877e-5 in the text
    assert r"$$x_t = 0.00655\,x_0 + 0.99998\,\varepsilon" in numbers  # √ᾱ_t, √(1−ᾱ_t) in the equation


def test_forward_at_the_first_step_is_the_papers_t_1_not_the_photo_x0(handlers: ui.Handlers):
    """The tables' row 0 is the paper's t = 1 (x_1, a little noise); x₀ is the photo. The help says which t is
    shown and where the code's arrays keep it."""
    numbers = forward.forward_numbers(handlers.library.get(), 0)
    equation = numbers.split("$$")[1]
    lhs = equation.split("=")[0].strip()
    assert lhs == "x_t" and "(t = 1)" in equation and "**t = 1** of 1…20" in numbers
    assert "$t$ is the paper's" in forward.FORWARD_HELP and "index $t - 1$" in forward.FORWARD_HELP


def test_halved_noise_pictures_are_explained_where_they_are_shown():
    # noise_picture shows ε/2: ε = ±2 (two standard deviations) maps to black and white
    eps = torch.tensor([-2.0, 0.0, 2.0]).view(1, 1, 3).expand(3, 1, 3)
    shown = noise_picture(eps)
    assert shown[0, 0, 0] == 0 and shown[0, 2, 0] == 255 and 126 <= shown[0, 1, 0] <= 129
    for help_text in (forward.FORWARD_HELP, generate.GENERATE_HELP):
        assert "×½" in help_text and r"$\varepsilon/2$" in help_text and "standard deviations" in help_text


def test_the_frames_help_describes_early_guesses_as_saturated_noise():
    assert "blurry" not in frames.FRAMES_HELP and "saturated colour noise" in frames.FRAMES_HELP


# -- exports: a font with every glyph, progress -------------------------------------------------------------


def record_drawn_text(monkeypatch) -> list[tuple[str, object]]:
    """Every (text, font) that ImageDraw.text draws from now on."""
    drawn: list[tuple[str, object]] = []
    original = ImageDraw.ImageDraw.text

    def text(self, xy, text, *args, **kwargs):
        drawn.append((text, kwargs.get("font")))
        return original(self, xy, text, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", text)
    return drawn


def missing_glyphs(text: str, font) -> set[str]:
    """The characters of ``text`` that ``font`` (a Pillow FreeType font) has no glyph for."""
    source = font.path
    if hasattr(source, "seek"):
        source.seek(0)
    cmap = TTFont(source).getBestCmap()
    return {ch for ch in text if not ch.isspace() and ord(ch) not in cmap}


def test_every_character_drawn_on_exports_and_strips_is_in_the_font(handlers: ui.Handlers, monkeypatch):
    drawn = record_drawn_text(monkeypatch)
    user = noised(handlers, 9)  # the forward strip's captions
    run_all(handlers.denoise("ddim", 4, 0.5, 1, True, user))  # η in the title, the comparison strip's captions
    handlers.export("gif", user)
    run_all(handlers.generate("ddpm", 1, 0.0, 2, 1, True, False, user))
    handlers.export("gif", user)
    texts = {text for text, _ in drawn}
    assert any("η = 0.5" in text for text in texts) and "predicted x̂₀" in texts and "t = 1" in texts
    for text, font in drawn:
        assert font is not None and not missing_glyphs(text, font), (text, missing_glyphs(text, font))


def test_eta_is_drawn_as_a_glyph_not_a_box():
    """Pillow draws a character its font lacks as the .notdef box: η must look different from it."""
    from ddpm_app.pictures import label_font

    font = label_font(14)
    notdef = np.asarray(font.getmask("\uffff"))  # a code point no font here maps
    eta = np.asarray(font.getmask("η"))
    assert eta.size and (eta.shape != notdef.shape or not np.array_equal(eta, notdef))


def label_row_ink(strip: np.ndarray, tile: int) -> list[int]:
    """Dark pixels under each tile of a one-row strip (the label row: below the tiles)."""
    row = strip[tile:].min(axis=2) < 128  # (text rows, W)
    return [int(row[:, i * (tile + 2):(i + 1) * (tile + 2) - 2].sum()) for i in range(strip.shape[1] // tile)]


def test_strip_labels_keep_their_underscores_and_stay_under_their_own_picture():
    from ddpm_app.pictures import labelled_strip

    grey = torch.zeros(3, 16, 16)  # enlarged ×8 to 128 px: the terms strip's size
    assert label_row_ink(labelled_strip([grey], ["_"], min_size=128), 128)[0] > 0  # not cut off at the bottom
    long = "−1.234×10⁻⁴·x_999 (×2000)"  # wider than 128 px at the default label size
    ink = label_row_ink(labelled_strip([grey, grey, grey], ["", long, ""], min_size=128), 128)
    assert ink[1] > 0 and ink[0] == ink[2] == 0  # drawn smaller, not spilling under the neighbours


def test_export_reports_progress_per_frame(handlers: ui.Handlers, tmp_path: Path):
    user = UserState()
    run_all(handlers.generate("ddim", 6, 0.0, 1, 1, True, False, user))
    calls = []
    handlers.export("gif", user, progress=lambda value, **kw: calls.append((value, kw.get("desc"))))
    assert [c[0] for c in calls] == [(i, 6) for i in range(6)] and "GIF" in calls[0][1]
    told = []
    gif = Image.open(export_gif(user.run, tmp_path / "a.gif", max_frames=3, progress=lambda i, n: told.append((i, n))))
    assert gif.n_frames == 3 and told == [(0, 3), (1, 3), (2, 3)]


def test_a_120_frame_gif_of_a_64_pixel_run_stays_under_2_mb(tmp_path: Path):
    """A DDPM run of a 64×64 RGB image: x_t goes from noise to a photo, x̂₀ from blur to it (every pixel of every
    frame differs). Its 120-frame GIF was 6.6 MB; the frames are kept, at 128 px and 48 colours."""
    from ddpm_app.image import load_image, to_uint8
    from ddpm_app.serve.runs import Frame, Trajectory

    x0 = load_image(PHOTO, 64)[None]  # (1, 3, 64, 64)
    blurred = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(x0, 8), scale_factor=8, mode="bilinear")
    g = torch.Generator().manual_seed(0)
    run = Trajectory("DDPM, 1000 steps, seed 1 · faces", 1000, tuple(x0.shape), 1)
    for i in range(120):
        a, eps = (i / 119) ** 2, torch.randn(x0.shape, generator=g)
        x_t, guess = a ** 0.5 * x0 + (1 - a) ** 0.5 * eps, a * x0 + (1 - a) * blurred + 0.05 * eps
        run.frames.append(Frame(i * 8, 999 - i * 8, to_uint8(x_t.clamp(-1, 1)), to_uint8(guess.clamp(-1, 1))))
    gif = export_gif(run, tmp_path / "run.gif")
    assert Image.open(gif).n_frames == 120 and gif.stat().st_size <= 2_000_000, gif.stat().st_size
    assert Image.open(gif).height >= 128 + 40  # each picture at least 128 px under the label bar


PAPER_BETAS = np.linspace(1e-4, 0.02, 1000)  # Ho et al.'s β_1 … β_1000: β_t is PAPER_BETAS[t − 1]


def paper_step(t: int) -> tuple[float, float, float, float]:
    """DDPM's step t of the paper's linear schedule (T = 1000), from its definitions: (β_t, 1/√α_t,
    β_t/(√α_t·√(1−ᾱ_t)), σ_t = √β̃_t), with ᾱ_t = ∏_{s≤t}(1 − β_s) and β̃_t = β_t(1−ᾱ_{t−1})/(1−ᾱ_t)."""
    beta = PAPER_BETAS[t - 1]
    abar, abar_prev = np.prod(1 - PAPER_BETAS[:t]), np.prod(1 - PAPER_BETAS[:t - 1])
    return (beta, 1 / (1 - beta) ** 0.5, beta / ((1 - beta) ** 0.5 * (1 - abar) ** 0.5),
            (beta * (1 - abar_prev) / (1 - abar)) ** 0.5)


def steps_of_a_1000_step_chain() -> list:
    """Every step of DDPM over the default schedule (linear, T = 1000) on one pixel, with ε̂ = 0: what the app
    labels, in the order the sampler takes them."""
    from ddpm_app.diffusion.samplers import ddpm

    chain = ddpm(lambda x, t: torch.zeros_like(x), Schedule(ScheduleConfig()), (1, 1, 1, 1),
                 generator=torch.Generator().manual_seed(0))
    return list(chain)


def test_the_first_reverse_step_of_a_1000_step_chain_is_the_papers_t_1000_with_its_beta():
    """The chain starts from x_T: its first step is labelled t = 1000, uses β_1000 = 0.02 and makes x_999; its last is
    t = 1 with β_1 = 10⁻⁴ and makes x₀ from x_1, adding no noise. The numbers are recomputed from the paper's
    definitions; a label one t off (the code's 0-based row) would name β_999 or x_998."""
    from ddpm_app.diffusion.samplers import step_breakdown
    from ddpm_app.views.reverse_step import equation_markdown, equation_text

    settings, schedule = SamplerSettings("ddpm", 1000, 1.0, False), Schedule(ScheduleConfig())
    steps = steps_of_a_1000_step_chain()
    first, last = (step_breakdown(schedule, steps[i], settings) for i in (0, -1))
    beta, c_x, c_eps, sigma = paper_step(1000)
    assert beta == 0.02
    assert equation_text(first) == f"x_999 = {number(c_x)}·x_1000 − {number(c_eps)}·ε̂ + {number(sigma)}·z"
    update = equation_markdown(first)
    assert update.startswith(f"$t = 1000$: $\\alpha_t = {number(1 - beta, latex=True)}$ · $\\beta_t = 0.02$")
    assert f"x_{{999}} = \\frac{{1}}{{\\sqrt{{{number(1 - beta, latex=True)}}}}}\\Big(x_{{1000}}" in update
    beta, c_x, c_eps, _ = paper_step(1)
    assert beta == 1e-4 and equation_text(last) == f"x_0 = {number(c_x)}·x_1 − {number(c_eps)}·ε̂ + 0·z"
    assert "$t = 1$: " in equation_markdown(last) and f"\\beta_t = {number(1e-4, latex=True)}$" in equation_markdown(last)


def test_the_docs_examples_are_what_the_app_prints():
    """docs/teaching.md's examples, read against the code on the default schedule (linear, T = 1000) in the paper's
    t: the status line's update for a DDPM step (its coefficients recomputed from the paper, and the line the app
    writes for that step of its chain), the Frames label's t for a DDIM-50 step, and ᾱ_T."""
    from ddpm_app.diffusion.samplers import ddim_timesteps, step_breakdown
    from ddpm_app.views.reverse_step import equation_text

    text = (Path(__file__).resolve().parents[2] / "docs" / "teaching.md").read_text()
    schedule = Schedule(ScheduleConfig())
    update = re.search(r"`(x_(\d+) = ([^`·]*)·x_(\d+) − ([^`·]*)·ε̂ \+ ([^`·]*)·z)`", text)
    assert update, "docs/teaching.md has no example of the reverse step's update"
    t = int(update.group(4))
    _, c_x, c_eps, sigma = paper_step(t)
    assert int(update.group(2)) == t - 1 and update.group(3, 5, 6) == (number(c_x), number(c_eps), number(sigma))
    step = steps_of_a_1000_step_chain()[1000 - t]  # the chain takes t = 1000, 999, …, 1
    assert update.group(1) == equation_text(step_breakdown(schedule, step, SamplerSettings("ddpm", 1000, 1.0, True)))
    label = re.search(r"`step (\d+) of 50 · t = (\d+)` for DDIM-50", text)
    assert label and ddim_timesteps(999, 50)[int(label.group(1)) - 1] + 1 == int(label.group(2))  # row + 1
    abar = re.search(r"ᾱ_T = ([^,]*?), not 0.0000", text)
    assert abar and number(float(schedule.float64.alphas_cumprod[-1])) == abar.group(1)


def test_the_forward_strip_wraps_into_rows_with_legible_captions(handlers: ui.Handlers):
    strip = handlers.noise(str(PHOTO), 5, True, 1, UserState())[4]
    tile = 128 + 2  # 16 px images enlarged ×8, and the gap
    assert strip.shape[1] == forward.STRIP_COLUMNS * tile - 2  # four across: two rows of the eight timesteps
    assert strip.shape[0] == 2 * (128 + forward.STRIP_FONT_SIZE + 6)


# -- how long slow work will take --------------------------------------------------------------------------------


def test_time_left_is_the_rest_at_the_rate_so_far():
    """20 of 100 steps in 10 s: 80 more at 0.5 s each is 40 s; minutes from 90 s; nothing before the first step
    or after the last."""
    assert pace.time_left(20, 100, 10.0) == "≈ 40 s left"
    assert pace.time_left(10, 100, 10.0) == "≈ 2 min left"  # 90 s
    assert pace.time_left(99, 100, 0.01) == "≈ 1 s left"  # never "0 s"
    assert pace.time_left(0, 100, 3.0) == pace.time_left(100, 100, 3.0) == ""
    rates = pace.Pace()
    assert rates.estimate("faces", 75) is None and rates.estimate("faces", 75, fallback=0.02) == pytest.approx(1.5)
    rates.record("faces", 50, 5.0)  # 0.1 s an input, measured: it wins over the fallback
    assert rates.estimate("faces", 1000, fallback=0.02) == pytest.approx(100.0) and rates.estimate("emoji", 1) is None


def test_a_runs_status_says_how_long_is_left(library):
    served = library.get()
    run = Trajectory("r", 100, served.shape(1), 0)
    x = torch.zeros(served.shape(1))
    step = Step(19, 100, 15, 14, x, x, x, x)  # t within the tiny model's T = 20
    assert "Step <b>20</b> / 100 · ≈ 40 s left" in kit.status_html(served, run, step, 10.0)
    last = Step(99, 100, 0, -1, x, x, x, x)
    assert "left" not in kit.status_html(served, run, last, 50.0)


def test_the_bound_and_the_loss_curve_say_how_long_they_will_take(handlers: ui.Handlers):
    """Before its first network call the bound gives an estimate for the whole (from the model's measured step time,
    then from its own last run), and after each call what is left; the loss curve says what it computes and how
    long it should take, and only when it has to compute it."""
    outs = list(handlers.likelihood(str(PHOTO), False, 1, True, UserState()))
    assert re.search(r"0 / 20 timesteps \(estimate\) · 0\.0 s · ≈ \d+ (s|min) in all", outs[0][0])
    assert all(re.search(r"≈ \d+ (s|min) left", out[0]) for out in outs[1:-1]) and len(outs) > 3
    assert handlers.pace.estimate("faces", 20) is not None  # measured by that run
    user = UserState()
    first, last = list(handlers.loss_curve(str(PHOTO), 3, user))
    assert first[0] == gr.skip() and re.search(r"20 timesteps, 3 ε each \(60 network inputs in one call\), ≈ \d+ (s|min)",
                                               first[1])
    assert "Your photo: the loss at 20 timesteps" in last[1]
    assert len(list(handlers.loss_curve(str(PHOTO), 5, user))) == 1  # the same photo: nothing to compute
