"""The app's handlers, called directly on tiny random models: streaming, trajectories, Stop, the forward view,
export, validation and model switching."""

from __future__ import annotations

import io
import itertools
import math
import threading
from dataclasses import replace
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from conftest import assert_pictures_close, noised_photo_picture, perturb, seeded_init
from PIL import Image
from serving import ENDPOINTS
from tiny_app import PHOTO, T, run_all, save_tiny

import app
from ddpm_app.diffusion import samplers
from ddpm_app.diffusion.samplers import SamplerSettings, ddim_timesteps
from ddpm_app.diffusion.schedule import Schedule, ScheduleConfig
from ddpm_app.image import load_image, to_uint8
from ddpm_app.io.convert_seed import convert
from ddpm_app.io.loading import load_pretrained
from ddpm_app.io.model_folder import ModelFolderError, SamplingDefaults
from ddpm_app.models import SeedUNet, SeedUNetConfig
from ddpm_app.numbers import number
from ddpm_app.pictures import picture
from ddpm_app.serve.library import ModelLibrary
from ddpm_app.serve.runs import Throttle, Trajectory, stream
from ddpm_app.serve.served import ServedModel
from ddpm_app.ui import forward, frames, kit, model
from ddpm_app.ui import page as ui
from ddpm_app.ui.i18n import english
from ddpm_app.views.export import export_gif, export_indices
from ddpm_app.views.state import UserState


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A weights folder with three models: faces (16×16 RGB, T = 20), mono (8×8 grey, cosine, T = 12) and seed
    (converted from a seed-tutorial state dict)."""
    root = tmp_path_factory.mktemp("weights")
    save_tiny(root / "faces")
    save_tiny(root / "mono", image_size=8, channels=1, kind="cosine", timesteps=12, seed=1)
    seed_model = seeded_init(lambda: SeedUNet(SeedUNetConfig(image_size=16, init_dim=32, down_channels=(32, 64),
                                                             time_pos_dim=32)))
    torch.save(perturb(seed_model, scale=0.02).state_dict(), root / "seed.pth")
    convert(root / "seed.pth", root / "seed", image_size=16, schedule=ScheduleConfig(timesteps=15))
    (root / "seed.pth").unlink()
    return root


@pytest.fixture(scope="module")
def library(weights: Path) -> ModelLibrary:
    # fp32, so the app's pictures can be held to the library's float32 chain (the bf16 path has its own tests)
    return ModelLibrary(weights, "cpu", precision="fp32")


@pytest.fixture
def handlers(library: ModelLibrary, tmp_path: Path) -> ui.Handlers:
    """Handlers that preview every step (interval 0), so preview counts are exact."""
    return ui.Handlers(library, preview_interval=0, export_dir=tmp_path / "exports")


def image_of(x: np.ndarray) -> np.ndarray:
    assert isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 3
    return x


def preview_of(x: str) -> np.ndarray:
    """A picture streamed during a run: a JPEG file, decoded."""
    assert isinstance(x, str) and x.endswith(".jpeg")
    with Image.open(x) as im:
        assert im.format == "JPEG"
        return np.asarray(im.convert("RGB"))


# -- the library --------------------------------------------------------------------------------------------


def test_library_lists_every_model_folder_and_prefers_faces(library: ModelLibrary):
    assert library.names == ["faces", "mono", "seed"]
    assert library.default == "faces"
    assert library.get().name == "faces"


def test_library_without_faces_defaults_to_the_first(tmp_path: Path):
    save_tiny(tmp_path / "b-model")
    save_tiny(tmp_path / "a-model")
    (tmp_path / "not-a-model").mkdir()
    lib = ModelLibrary(tmp_path)
    assert lib.names == ["a-model", "b-model"]
    assert lib.default == "a-model"


def test_empty_weights_folder_is_a_one_line_error(tmp_path: Path):
    with pytest.raises(ModelFolderError, match="no models in") as e:
        ModelLibrary(tmp_path)
    assert "\n" not in str(e.value)
    with pytest.raises(SystemExit) as e:
        app.main(["--weights", str(tmp_path / "missing")])
    message = str(e.value.code)
    assert message.startswith("error: no models in") and "\n" not in message


def test_unknown_start_model_names_the_choices(weights: Path):
    with pytest.raises(ModelFolderError, match="found: faces, mono, seed"):
        ModelLibrary(weights, default="cats")


def test_app_picks_weights_dir_from_the_environment(monkeypatch, weights: Path):
    monkeypatch.setenv("DDPM_WEIGHTS_DIR", str(weights))
    assert app.parse_args([]).weights == [str(weights)]
    assert app.parse_args(["--weights", "elsewhere"]).weights == ["elsewhere"]
    assert app.parse_args(["--weights", "a", "--weights", "b"]).weights == ["a", "b"]


# -- Generate: streaming and the trajectory ------------------------------------------------------------------


def test_generate_ddim_previews_every_step_and_stores_the_trajectory(handlers: ui.Handlers):
    user = UserState()
    outs = run_all(handlers.generate("ddim", 7, 0.0, 5, 2, True, False, user))
    assert len(outs) == 7  # interval 0: one preview per network evaluation
    run = user.run
    assert run.finished and not run.stopped and run.steps_done == 7
    assert [f.index for f in run.frames] == list(range(7))
    assert [f.t for f in run.frames] == ddim_timesteps(T - 1, 7)
    assert run.frames[0].x_t.shape == (2, 3, 16, 16) and run.frames[0].x_t.dtype == torch.uint8
    x_t, x0, eps, status, seed, slider = outs[-1]
    assert image_of(x_t).shape == image_of(x0).shape == image_of(eps).shape
    assert seed == "5" and "Done" in status
    assert slider["maximum"] == 7 and slider["value"] == 7  # frames are numbered from 1, the last is the 7th
    assert isinstance(outs[0][2], type(gr.skip()))  # ε̂ not shown: no picture made while streaming
    # the last preview shows the finished image
    np.testing.assert_array_equal(x_t, picture(run.final))


@pytest.mark.parametrize("with_noise", [True, False])
def test_a_stored_frame_keeps_each_picture_of_its_step_in_its_own_field(with_noise):
    """Each field of a frame holds its own picture of the step: x_t and x̂₀ of every image and x_prev of the first
    as uint8 pictures, then the first image's x_t, x̂₀, ε̂ and z as they were (float16, unclamped: x_t is N(0, I)
    here, far outside a picture's [−1, 1]); the last step also keeps the final images."""
    g = torch.Generator().manual_seed(3)
    x_t, x0, eps, x_prev, z = (2 * torch.randn(2, 3, 4, 4, generator=g) for _ in range(5))
    run = Trajectory("run", 2, (2, 3, 4, 4), 0)
    for index in range(2):
        run.add(samplers.Step(index, 2, 10 - index, 9 - index, x_t + index, x0, eps, x_prev, z if with_noise else None))
    f = run.frames[0]
    assert (f.index, f.t, f.t_prev) == (0, 10, 9)
    for stored, expected in [(f.x_t, x_t), (f.pred_x0, x0), (f.x_prev, x_prev[0])]:
        assert stored.shape == expected.shape and torch.equal(stored, to_uint8(expected))
    for stored, expected in [(f.first_x_t, x_t[0]), (f.first_pred_x0, x0[0]), (f.pred_eps, eps[0])] + [
            (f.noise, z[0])] * with_noise:
        assert stored.dtype == torch.float16 and torch.equal(stored, expected.half())
    assert (f.noise is None) == (not with_noise)  # a step that added no noise stores no z
    assert torch.equal(run.frames[1].x_t, to_uint8(x_t + 1))
    assert torch.equal(run.final, to_uint8(x_prev)) and run.finished


def assert_same_picture(ours: torch.Tensor, expected: torch.Tensor) -> None:
    """uint8 images equal up to float rounding: the app samples with the prepared (channels_last) network, whose
    sums round differently, and over a chain that can move a pixel across a rounding boundary."""
    diff = (ours.int() - expected.int()).abs()
    assert diff.max() <= 2 and (diff > 0).float().mean() < 0.01, (int(diff.max()), float((diff > 0).float().mean()))


def library_chain(weights: Path, sampler: str, steps: int, eta: float, clip_x0: bool, seed: int, batch: int,
                  x_start: torch.Tensor | None = None, start_t: int | None = None) -> list:
    """The steps the library's samplers take with the loaded (unprepared) "faces" network: what the app must show."""
    loaded = load_pretrained(weights / "faces")
    kwargs = dict(x_start=x_start, start_t=start_t) if x_start is not None else {}
    settings = SamplerSettings(sampler, steps, eta, clip_x0)
    return list(settings.run(loaded.model, loaded.schedule, (batch, 3, 16, 16),
                             generator=torch.Generator().manual_seed(seed), **kwargs))


@pytest.mark.parametrize("sampler, eta", [("ddim", 0.0), ("ddim", 0.6), ("ddpm", 0.0)])
def test_generate_gives_the_library_samplers_images_with_each_option(handlers: ui.Handlers, weights: Path, sampler,
                                                                       eta):
    """Every widget reaches the sampler: the app's frames and final images equal the library's chain with the same
    sampler, η, clip setting and seed; clip on and off give different x̂₀ (the network's x̂₀ leaves [−1, 1])."""
    runs = {}
    for clip in (True, False):
        user = UserState()
        run_all(handlers.generate(sampler, 6, eta, 17, 2, clip, False, user))
        expected = library_chain(weights, sampler, 6, eta, clip, 17, 2)
        assert [f.t for f in user.run.frames] == [s.t for s in expected]
        for frame, step in zip(user.run.frames, expected):
            assert_same_picture(frame.x_t, to_uint8(step.x_t))
            assert_same_picture(frame.pred_x0, to_uint8(step.pred_x0))
        assert_same_picture(user.run.final, to_uint8(expected[-1].x_prev))
        assert max(float(s.pred_x0.abs().max()) for s in expected) > (1.0 + 1e-6 if not clip else 0.5)
        runs[clip] = user.run
    for a, b in ((runs[True].final, runs[False].final), (runs[True].frames[-1].pred_x0, runs[False].frames[-1].pred_x0)):
        assert (a.float() - b.float()).abs().mean() > 2, "clip on and off give the same pictures"  # uint8 levels


def test_eta_changes_the_app_s_ddim_images(handlers: ui.Handlers):
    finals = []
    for eta in (0.0, 1.0):
        user = UserState()
        run_all(handlers.generate("ddim", 5, eta, 3, 1, True, False, user))
        finals.append(user.run.final)
    assert (finals[0].float() - finals[1].float()).abs().mean() > 2  # uint8 levels


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_denoise_is_the_library_chain_from_the_noised_photo(handlers: ui.Handlers, weights: Path, sampler):
    """SDEdit: the reverse chain starts at the forward tab's x_t and its t; clip on/off and the seed reach it."""
    finals = {}
    for clip in (True, False):
        user = UserState()
        handlers.noise(str(PHOTO), 13, True, 5, user)  # the paper's t = 13: the tables' row 12
        run_all(handlers.denoise(sampler, 4, 0.5, 9, clip, user))
        expected = library_chain(weights, sampler, 4, 0.5, clip, 9, 1, x_start=user.forward.x_t[None], start_t=12)
        assert [f.t for f in user.run.frames] == [s.t for s in expected] and expected[0].t == 12
        assert_same_picture(user.run.final, to_uint8(expected[-1].x_prev))
        finals[clip] = user.run.final
    # far more pixels differ than the < 1 % that rounding may move (assert_same_picture)
    assert (finals[True] != finals[False]).float().mean() > 0.2


def test_generate_ddpm_runs_all_T_steps(handlers: ui.Handlers, weights: Path):
    user = UserState()
    outs = run_all(handlers.generate("ddpm", 3, 0.5, 1, 1, False, True, user))  # steps and η ignored by DDPM
    assert len(outs) == T
    assert [f.t for f in user.run.frames] == list(range(T - 1, -1, -1))
    # ε̂ shown on every preview, as ε̂/2 (±2σ spans the grey range): JPEG on the way, the last one lossless
    steps = library_chain(weights, "ddpm", 1, 0.0, False, 1, 1)
    for out, step in zip(outs, steps):
        expected = (((step.pred_eps[0] / 2).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        if step.is_last:
            assert_same_picture(torch.from_numpy(image_of(out[2])).permute(2, 0, 1), expected)
        else:
            shown = torch.from_numpy(preview_of(out[2]).copy()).permute(2, 0, 1)
            assert (shown.float() - expected.float()).abs().mean() < 8.0


def test_previews_on_the_way_are_jpeg_files_of_the_same_picture():
    """Faces survive JPEG within a few levels, and the file is smaller than the PNG of them."""
    with Image.open(Path(__file__).resolve().parents[2] / "weights" / "faces" / "samples.png") as im:
        array = np.asarray(im.convert("RGB"))[:134, :134]  # 2×2 faces, as a 4-image preview grid
    path = kit.preview_file(array)
    decoded = preview_of(path)
    assert decoded.shape == array.shape
    assert np.abs(decoded.astype(int) - array).mean() < 3.0
    png = io.BytesIO()
    Image.fromarray(array).save(png, "PNG")
    assert Path(path).stat().st_size < len(png.getvalue())


def test_streaming_off_sends_only_the_final_images_but_keeps_every_step(library: ModelLibrary, tmp_path: Path):
    h = ui.Handlers(library, preview_interval=None, export_dir=tmp_path)
    user = UserState()
    outs = run_all(h.generate("ddim", 9, 0.0, 3, 1, True, False, user))
    assert len(outs) == 1
    assert len(user.run.frames) == 9 and user.run.finished


def test_throttle_sends_first_last_and_one_preview_per_interval(library: ModelLibrary):
    served = library.get("faces")
    clock = itertools.count(0.0, 0.1).__next__  # 0.1 s per step
    previews = list(stream(served.sample(SamplerSettings("ddpm", T), 1, 0), None, Throttle(0.25, clock)))
    # ready at 0.0, 0.3, 0.6, … (the first call at or after each deadline) and always the last step
    assert [s.index for s in previews] == [0, 3, 6, 9, 12, 15, 18, 19]


def test_costly_previews_are_spaced_to_stay_within_the_budget():
    """Previews that take 0.1 s each, with a 5 % budget, come at most every 2 s however short the interval."""
    now = [0.0]
    throttle = Throttle(0.2, lambda: now[0], budget=0.05)
    sent = []
    for step in range(100):  # 1/16 s per step (exact in binary, so no step looks slower than another)
        now[0] = step / 16
        if throttle.ready():
            sent.append(step)
            throttle.spent(0.1)
    assert sent == [0, 32, 64, 96]
    cheap = Throttle(0.2, lambda: now[0], budget=0.05)
    sent = []
    for step in range(20):
        now[0] = step / 16
        if cheap.ready():
            sent.append(step)
            cheap.spent(0.001)  # 0.001 / 0.05 = 0.02 s: the interval rules
    assert sent == [0, 4, 8, 12, 16]
    assert Throttle(0, budget=0.05).budget is None  # interval 0: every step, whatever it costs


def fake_steps(now: list[float], n: int, seconds: float):
    """``n`` sampler steps (no tensors) that each advance the fake clock ``now[0]`` by ``seconds``."""
    for index in range(n):
        now[0] += seconds
        yield samplers.Step(index, n, n - 1 - index, n - 2 - index, *[None] * 5)


def fake_draw(now: list[float], seconds: float):
    """A preview renderer that takes ``seconds`` on the fake clock and returns the step's index."""
    def draw(step) -> int:
        now[0] += seconds
        return step.index
    return draw


@pytest.mark.parametrize("interval", [0.2, 0.005])  # the second: every 10 ms step is due for a preview
def test_sending_a_preview_on_counts_against_the_budget_like_drawing_it(interval: float):
    """Steps of 10 ms; a preview takes 5 ms to draw and 12.5 ms to hand on (Gradio sending it, while the sampler
    waits): 17.5 ms in all, so with a 5 % budget the next comes 0.35 s after one began, whether the interval is
    0.2 s or shorter than a step. A fake clock that the steps, the drawing and the consumer advance."""
    now = [0.0]
    sent = []
    for index in stream(fake_steps(now, 100, 0.01), None, Throttle(interval, lambda: now[0], budget=0.05),
                        fake_draw(now, 0.005)):
        sent.append(index)
        now[0] += 0.0125
    # ready at 0.01 s, then 0.01 + 0.35 (the step ending at 0.3675 s: step 34), 0.3675 + 0.35 (step 68); the last
    assert sent == [0, 34, 68, 99]


def test_steps_slower_than_the_interval_each_get_a_preview_when_previews_are_cheap():
    """0.5 s steps, previews costing 5 ms (1 % of a step): every step is previewed."""
    now = [0.0]
    throttle = Throttle(0.2, lambda: now[0], budget=0.05)
    assert list(stream(fake_steps(now, 8, 0.5), None, throttle, fake_draw(now, 0.005))) == list(range(8))


def test_a_preview_sends_each_picture_once_as_jpeg_and_the_final_images_lossless(handlers: ui.Handlers):
    """Per preview: x_t and x̂₀ as one JPEG grid each (the four images in one picture), ε̂ not at all unless it is
    shown, then the status, the seed and the frame slider. The last output: the final images as arrays (PNG)."""
    outs = run_all(handlers.generate("ddim", 3, 0.0, 1, 4, True, False, UserState()))
    assert len(outs) == 3
    for x_t, x0, eps, status, seed, slider in outs[:-1]:
        assert preview_of(x_t).shape == preview_of(x0).shape == (2 * 16 + 6, 2 * 16 + 6, 3)  # 2×2 grid, padded
        assert x_t != x0 and eps == gr.skip()
        assert "Step" in status and seed == "1"
    x_t, x0, eps, *_ = outs[-1]
    assert image_of(x_t).shape == image_of(x0).shape == image_of(eps).shape == (38, 38, 3)


def test_large_runs_keep_a_dense_subset(library: ModelLibrary):
    served = library.get("faces")
    # x_t, x̂₀ of four (uint8); the first's x_prev (uint8) and its x_t, x̂₀, ε̂, z (float16)
    per_step = 2 * 4 * 3 * 16 * 16 + (1 + 2 * 4) * 3 * 16 * 16
    run = Trajectory("t", T, served.shape(4), 0, max_bytes=per_step * 6)  # room for 6 of the 20 steps
    assert run.stride == 4
    list(stream(served.sample(SamplerSettings("ddpm", T), 4, 0), run, Throttle(None)))
    assert [f.index for f in run.frames] == [0, 4, 8, 12, 16, 19]
    stored = sum(x.nbytes for f in run.frames for x in (f.x_t, f.pred_x0, f.first_x_t, f.first_pred_x0, f.pred_eps,
                                                        f.noise, f.x_prev) if x is not None)
    assert run.finished and stored <= per_step * 6


def test_same_seed_same_images_whoever_else_is_sampling(handlers: ui.Handlers):
    alone = run_all(handlers.generate("ddim", 5, 0.5, 42, 2, True, False, UserState()))[-1][0]
    # two users interleaved step by step, the other with another seed and η > 0 (which draws noise too)
    a = handlers.generate("ddim", 5, 0.5, 42, 2, True, False, UserState())
    b = handlers.generate("ddim", 5, 1.0, 7, 2, True, False, UserState())
    interleaved = [(x, next(b, None)) for x in a]
    np.testing.assert_array_equal(interleaved[-1][0][0], alone)
    other = run_all(handlers.generate("ddim", 5, 0.5, 43, 2, True, False, UserState()))[-1][0]
    assert not np.array_equal(other, alone)


def test_random_seed_is_shown_and_repeats_the_run(handlers: ui.Handlers):
    first = run_all(handlers.generate("ddim", 4, 0.0, -1, 1, True, False, UserState()))[-1]
    blank = run_all(handlers.generate("ddim", 4, 0.0, None, 1, True, False, UserState()))[-1]
    assert first[4] != blank[4]  # two random seeds
    again = run_all(handlers.generate("ddim", 4, 0.0, int(first[4]), 1, True, False, UserState()))[-1]
    np.testing.assert_array_equal(again[0], first[0])


def test_stop_keeps_a_consistent_partial_run(handlers: ui.Handlers, tmp_path: Path):
    user = UserState()
    gen = handlers.generate("ddpm", 1, 0, 9, 2, True, False, user)
    for _ in range(3):
        next(gen)
    gen.close()  # what Gradio does when Stop cancels the event
    run = user.run
    assert run.stopped and not run.finished and run.final is None
    assert run.steps_done == len(run.frames) == 3
    assert [f.t for f in run.frames] == [T - 1, T - 2, T - 3]
    assert torch.equal(run.result(), run.frames[-1].pred_x0)
    with pytest.raises(gr.Error, match="frame must be a whole number in 1…3, got 99"):
        handlers.frame(99, user)
    x_t, x0, label, *_ = handlers.frame(3, user)
    assert "stopped after 3 of 20 steps" in label and f"t = {T - 2}**" in label and "frame 3/3" in label  # t = T, T−1, T−2
    np.testing.assert_array_equal(x_t, picture(run.frames[-1].x_t))
    gif = Image.open(handlers.export("gif", user))
    assert gif.n_frames == 3
    png = Image.open(handlers.export("png", user))
    grid = Image.fromarray(picture(run.frames[-1].pred_x0))
    assert png.size == (grid.width * 32, grid.height * 32)  # 16 px images enlarged to 512 px, like slide figures
    np.testing.assert_array_equal(np.asarray(png)[::32, ::32], np.asarray(grid))  # nearest neighbour: sharp
    # a new run replaces it
    run_all(handlers.generate("ddim", 2, 0, 1, 1, True, False, user))
    assert user.run is not run and user.run.finished


def test_frame_scrubber_and_prev_next(handlers: ui.Handlers):
    user = UserState()
    assert handlers.frame(0, user)[0] is None  # nothing yet
    run_all(handlers.generate("ddim", 6, 0.0, 2, 1, True, False, user))
    x_t, x0, label, *_ = handlers.frame(3, user)  # the slider and the label both count frames from 1
    np.testing.assert_array_equal(x_t, picture(user.run.frames[2].x_t))
    np.testing.assert_array_equal(x0, picture(user.run.frames[2].pred_x0))
    assert "frame 3/6" in label and "finished" in label
    assert handlers.nudge(3, +1, user)[0] == 4
    assert handlers.nudge(6, +1, user)[0] == 6
    assert handlers.nudge(1, -1, user)[0] == 1


def test_gif_export_has_one_frame_per_stored_step(handlers: ui.Handlers):
    user = UserState()
    run_all(handlers.generate("ddim", 8, 0.0, 4, 3, True, False, user))
    path = Path(handlers.export("gif", user))
    gif = Image.open(path)
    assert path.suffix == ".gif" and gif.n_frames == 8
    side = picture(user.run.frames[0].x_t).shape[0] * 4  # a 2×2 grid of 16 px images, enlarged ×4 to ≥ 128 px
    assert gif.size == (2 * side + 8, side + 40)  # x_t | x̂₀ side by side under a label bar


def test_gif_export_caps_the_frame_count(library: ModelLibrary, tmp_path: Path):
    user = UserState()
    h = ui.Handlers(library, preview_interval=None)
    run_all(h.generate("ddpm", 1, 0, 4, 1, True, False, user))
    gif = Image.open(export_gif(user.run, tmp_path / "a.gif", max_frames=6))
    assert gif.n_frames == 6
    assert export_indices(20, 6) == [0, 4, 8, 11, 15, 19]


def test_mp4_export(handlers: ui.Handlers, capfd):
    import imageio.v3 as iio  # MP4 export needs imageio-ffmpeg, a requirement: missing, this test fails

    user = UserState()
    run_all(handlers.generate("ddim", 5, 0.0, 4, 1, True, False, user))
    capfd.readouterr()
    path = handlers.export("mp4", user)
    assert capfd.readouterr().err == ""  # ffmpeg has nothing to warn about (it once got -pix_fmt twice)
    frames = iio.imread(path, plugin="FFMPEG")
    assert frames.shape[0] == 5 + 20  # the frames, then the last one held for a second at 20 fps
    assert frames.shape[1] % 16 == 0 and frames.shape[2] % 16 == 0


def test_export_before_any_run_is_a_clear_error(handlers: ui.Handlers):
    with pytest.raises(gr.Error, match="nothing to export yet"):
        handlers.export("gif", UserState())


# -- validation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (("ddim", 0, 0.0, 1, 1), "DDIM steps must be a whole number in 1…20"),
    (("ddim", 21, 0.0, 1, 1), "DDIM steps must be a whole number in 1…20"),
    (("ddim", 5, 1.5, 1, 1), "η \\(eta\\) must be a number in 0…1"),
    (("ddim", 5, 0.0, -5, 1), "seed must be a whole number in 0…4294967295"),
    (("ddim", 5, 0.0, 1.5, 1), "seed must be a whole number"),
    (("ddim", 5, 0.0, 2**32, 1), "seed must be a whole number"),
    (("ddim", 5, 0.0, 1, 5), "number of images must be a whole number in 1…4"),
    (("ddim", 5, 0.0, 1, 0), "number of images must be a whole number in 1…4"),
    (("euler", 5, 0.0, 1, 1), "sampler must be one of ddpm, ddim"),
])
def test_out_of_range_generate_inputs_name_the_allowed_range(handlers: ui.Handlers, args, message):
    sampler, steps, eta, seed, batch = args
    with pytest.raises(gr.Error, match=message):
        next(handlers.generate(sampler, steps, eta, seed, batch, True, False, UserState()))


def test_out_of_range_t_and_bad_images(handlers: ui.Handlers, tmp_path: Path):
    user = UserState()
    for t in (0, 21):  # the paper's t = 1…T
        with pytest.raises(gr.Error, match="t must be a whole number in 1…20"):
            handlers.noise(str(PHOTO), t, True, -1, user)
    bad = tmp_path / "not-an-image.png"
    bad.write_text("hello")
    with pytest.raises(gr.Error, match="not a readable image"):
        handlers.noise(str(bad), 5, True, -1, user)
    # the handler still works afterwards
    assert_pictures_close(handlers.noise(str(PHOTO), 5, True, 3, user)[2], noised_photo_picture(PHOTO, 16, 5, 3, T))


# -- the forward process ---------------------------------------------------------------------------------------


def test_forward_x_t_is_q_sample_of_the_photo_with_the_same_noise(handlers: ui.Handlers):
    user = UserState()
    x0_pic, eps_pic, xt_pic, numbers, strip, plot, start, note = handlers.noise(str(PHOTO), 7, True, 1234, user)
    x0 = load_image(PHOTO, 16)
    eps = torch.randn((3, 16, 16), generator=torch.Generator().manual_seed(1234))
    expected = Schedule(ScheduleConfig(timesteps=T)).q_sample(x0[None], torch.tensor([6]), eps[None])  # row 6: t = 7
    torch.testing.assert_close(user.forward.x_t[None], expected)
    assert_pictures_close(xt_pic, noised_photo_picture(PHOTO, 16, 7, 1234, T))
    np.testing.assert_array_equal(x0_pic, ((x0 + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy())
    assert "t = 7" in numbers and "noise seed 1234" in numbers
    abar = math.prod(1 - (1e-4 + (0.02 - 1e-4) * i / (T - 1)) for i in range(7))  # ᾱ_7 = ∏_{s≤7} (1 − β_s)
    assert f"**{number(math.sqrt(abar))}**" in numbers and f"{10 * math.log10(abar / (1 - abar)):+.1f} dB" in numbers
    assert strip.shape[1] > 8 * 16  # eight noised copies side by side
    assert "t = 7" in note
    # the plot marks t with a 2-pixel crimson line in each panel, moving linearly with t; nothing else changes (the
    # plot takes the tables' row: 0 is t = 1, T − 1 is t = T)
    session = handlers.library.get("faces")
    at_0, at_end = forward.schedule_plot(session, 0), forward.schedule_plot(session, T - 1)
    first, last = marker_columns(at_0), marker_columns(at_end)
    assert len(first) == len(last) == 1  # the two panels, stacked, share the t axis: one column
    rows = np.nonzero((at_0 == MARKER).all(-1).any(1))[0]
    assert (np.diff(rows) > 1).sum() == 1  # two stretches of rows: a line in each panel
    per_t = [(b - a) / (T - 1) for a, b in zip(first, last)]
    assert min(per_t) > 5  # pixels per timestep: the line moves right with t
    assert all(abs(c - (a + 6 * d)) <= 1 for c, a, d in zip(marker_columns(plot), first, per_t))  # t = 7
    unmarked = np.ones(plot.shape[1], bool)
    unmarked[[c for line in first + last for c in (line - 1, line)]] = False
    assert np.array_equal(at_0[:, unmarked], at_end[:, unmarked])


MARKER = (220, 20, 60)


def marker_columns(plot: np.ndarray) -> list[int]:
    """The right column of each 2-pixel marker line (crimson, (220, 20, 60)) of a schedule plot, left to right."""
    columns = np.nonzero((plot == MARKER).all(-1).any(0))[0]
    assert len(columns) % 2 == 0 and all(columns[1::2] - columns[::2] == 1)
    return columns[1::2].tolist()


def test_fixed_noise_stays_while_t_moves(handlers: ui.Handlers):
    user = UserState()
    handlers.noise(str(PHOTO), 3, True, -1, user)
    eps, seed = user.forward.eps.clone(), user.forward.eps_seed
    handlers.noise(str(PHOTO), 15, True, -1, user)
    assert torch.equal(user.forward.eps, eps) and user.forward.eps_seed == seed
    handlers.noise(str(PHOTO), 15, False, -1, user)  # not fixed: fresh noise
    assert not torch.equal(user.forward.eps, eps)
    handlers.noise(str(PHOTO), 4, True, 99, user)  # an explicit seed
    assert user.forward.eps_seed == 99
    out = handlers.new_noise(str(PHOTO), 4, user)
    assert out[0] == -1 and user.forward.eps_seed != 99


def test_forward_without_a_photo_shows_the_numbers_only(handlers: ui.Handlers):
    out = handlers.noise(None, 3, True, -1, UserState())
    assert out[0] is None and out[2] is None and "t = 3" in out[3]
    first = marker_columns(forward.schedule_plot(handlers.library.get("faces"), 0))
    last = marker_columns(forward.schedule_plot(handlers.library.get("faces"), T - 1))
    assert all(abs(c - (a + 2 * (b - a) / (T - 1))) <= 1 for c, a, b in zip(marker_columns(out[5]), first, last))


# -- noise it, then denoise it ---------------------------------------------------------------------------------


def test_denoise_runs_from_the_forward_x_t(handlers: ui.Handlers):
    user = UserState()
    with pytest.raises(gr.Error, match="Noise a photo in the Forward tab first"):
        next(handlers.denoise("ddim", 5, 0.0, 1, True, user))
    handlers.noise(str(PHOTO), 9, True, 5, user)
    outs = run_all(handlers.denoise("ddim", 15, 0.0, 1, True, user))  # 15 > t: capped to 9 steps
    run = user.run
    assert len(outs) == 9 and run.num_steps == 9 and run.finished
    assert run.frames[0].t == 8 and run.frames[-1].t == 0  # the tables' rows of t = 9 and t = 1
    assert torch.equal(run.frames[0].x_t[0], to_uint8(user.forward.x_t))  # started from the forward tab's x_t
    compare, status = outs[-1][2], outs[-1][3]
    assert image_of(compare).shape[1] > 3 * 16 and "PSNR" in status
    ddpm = run_all(handlers.denoise("ddpm", 1, 0.0, 1, True, user))
    assert len(ddpm) == 9  # DDPM from t = 9: t = 9, 8, …, 1


# -- models ------------------------------------------------------------------------------------------------------


NOISY_ODE = SamplingDefaults(1.0, "deterministic DDIM leaves noise in its samples.")


def eta_sliders(demo: gr.Blocks) -> list[float]:
    return [b.value for b in demo.blocks.values()
            if isinstance(b, gr.Slider) and (english(b.label) or "").startswith("η")]


def test_a_model_can_ask_for_its_own_ddim_eta(tmp_path: Path):
    """A model folder whose config asks for DDIM η = 1 sets the η sliders (Generate, Denoise, Interpolate) when it is
    loaded, and the status says why; another model puts them back to the app's η = 0. The page starts with the
    default model's."""
    save_tiny(tmp_path / "faces")
    save_tiny(tmp_path / "noisy-ode", seed=2, sampling=NOISY_ODE)
    assert load_pretrained(tmp_path / "noisy-ode").config.sampling == NOISY_ODE  # kept in config.json
    library = ModelLibrary(tmp_path, "cpu", precision="fp32")
    handlers, user = ui.Handlers(library, preview_interval=0, export_dir=tmp_path / "exports"), UserState()
    summary, *_, eta, sd_eta, pick = handlers.select_model("noisy-ode", user)
    assert eta["value"] == sd_eta["value"] == 1.0 and pick["value"] == "noisy-ode"
    assert "DDIM η starts at 1 for this model: deterministic DDIM leaves noise in its samples." in summary
    summary, *_, eta, sd_eta, pick = handlers.select_model("faces", user)
    assert eta["value"] == sd_eta["value"] == 0.0 and "DDIM η starts" not in summary
    handlers.select_model("noisy-ode", user)
    assert handlers.ranges(user)[3]["value"] == 1.0  # Interpolate's η
    handlers.select_model("faces", user)
    assert handlers.ranges(user)[3]["value"] == 0.0
    assert eta_sliders(ui.build(library)) == [0.0, 0.0, 0.0]
    only = tmp_path / "only"
    save_tiny(only / "noisy-ode", sampling=NOISY_ODE)
    assert eta_sliders(ui.build(ModelLibrary(only, "cpu", precision="fp32"))) == [1.0, 1.0, 1.0]


def test_switching_models_changes_only_this_users_model(handlers: ui.Handlers):
    me, other = UserState(), UserState()
    summary, card, samples, header, t_slider, steps, sd_steps, batch, clip, sd_clip, eta, sd_eta, pick = \
        handlers.select_model("mono", me)
    assert "mono" in header and "8×8" in header and "1 channel," in header
    assert "| dataset | noise |" in summary and samples is None
    assert t_slider["maximum"] == 12 and steps["maximum"] == 12 and pick["value"] == "mono"
    assert "cosine, T = 12" in summary
    outs = run_all(handlers.generate("ddim", 4, 0.0, 1, 2, True, False, me))
    assert me.run.frames[0].x_t.shape == (2, 1, 8, 8)
    assert image_of(outs[-1][0]).shape[2] == 3  # grey shown as RGB
    handlers.noise(str(PHOTO), 3, True, -1, me)  # a colour photo becomes a grey x₀
    assert me.forward.x0.shape == (1, 8, 8)
    run_all(handlers.generate("ddim", 4, 0.0, 1, 1, True, False, other))
    assert other.run.frames[0].x_t.shape == (1, 3, 16, 16)  # the other user still has faces
    with pytest.raises(gr.Error, match="model must be one of faces, mono, seed, got 'cats'"):
        handlers.select_model("cats", me)


def test_a_switch_says_at_once_what_it_is_doing_and_the_header_ends_on_the_users_model(tmp_path: Path):
    """Picking a model that is not in memory says it is loading (the header too) before the slow part; once the
    switch has ended the header names the user's model: the new one, or the old one after a switch that failed."""
    save_tiny(tmp_path / "faces")
    save_tiny(tmp_path / "other", seed=2)
    library = ModelLibrary(tmp_path, "cpu", precision="fp32")
    handlers, user = ui.Handlers(library, preview_interval=0, export_dir=tmp_path / "exports"), UserState()
    library.get("faces")
    assert not library.in_memory("other")
    header, note = handlers.switching("other", user)
    assert header.startswith("Model: **faces** → loading **other**") and note.startswith("Loading **other**:")
    handlers.select_model("other", user)
    header, note = handlers.model_now(user)
    assert header.startswith("Model: **other** —") and note == ""
    assert handlers.switching("faces", user) == ("Model: **other** → switching to **faces**…",
                                                 "Switching to **faces**…")  # in memory: no loading
    (tmp_path / "faces" / "config.json").write_text("{")  # broken on disk, out of memory: the switch fails
    library._loaded.pop("faces")
    with pytest.raises(gr.Error):
        handlers.select_model("faces", user)
    assert handlers.model_now(user)[0].startswith("Model: **other** —")
    assert handlers.switching("nonsense", user) == (gr.skip(), gr.skip())  # the switch itself says why


def test_after_a_switch_the_header_the_forward_view_and_the_frame_shown_are_redrawn(library: ModelLibrary):
    """What follows a pick, in order: the header names the user's model, Forward is redrawn, and so is the frame
    Frames shows (its label says the run came from another model), then the teaching sliders' ranges."""
    demo = ui.build(library)
    after = {f.trigger_after: f for f in demo.fns.values() if f.trigger_after is not None}
    step, names = next(f for f in demo.fns.values() if f.api_name == "select_model"), []
    while (step := after.get(step._id)) is not None:
        names.append(step.fn.__name__)
    assert names == ["model_now", "noise", "frame", "ranges"]


def test_frames_name_the_model_a_run_came_from(handlers: ui.Handlers):
    """A run stays in Frames after a model switch: its label names the model that made it, and says when that is
    not the one selected now."""
    user = UserState()
    run_all(handlers.generate("ddim", 3, 0.0, 1, 1, True, False, user))
    assert "Model: **faces**." in handlers.frame(1, user)[2]
    handlers.select_model("mono", user)
    label = handlers.frame(1, user)[2]
    assert "Model: **faces**, not the one selected now (**mono**)" in label
    run_all(handlers.generate("ddim", 3, 0.0, 1, 1, True, False, user))
    assert "Model: **mono**." in handlers.frame(1, user)[2]


def test_converted_seed_checkpoint_samples_like_any_model(handlers: ui.Handlers):
    user = UserState()
    summary = handlers.select_model("seed", user)[0]
    assert "| converted from | seed tutorial checkpoint" in summary and "| architecture | seed |" in summary
    outs = run_all(handlers.generate("ddim", 3, 0.0, 1, 1, True, False, user))
    assert len(outs) == 3 and user.run.finished


def test_hub_download_failures_keep_the_current_model(handlers: ui.Handlers):
    user = UserState()
    handlers.select_model("mono", user)
    with pytest.raises(gr.Error, match="Hub model id must look like 'user/model-name'"):
        handlers.download_model("not a repo id", user)
    with pytest.raises(gr.Error, match="cannot reach the Hugging Face Hub|download failed|no such model repo"):
        handlers.download_model("someone/some-ddpm", user)  # the Hub is unreachable in the tests
    assert user.model == "mono" and handlers.library.names == ["faces", "mono", "seed"]


def test_hub_download_adds_and_selects_the_model(handlers: ui.Handlers, tmp_path: Path, monkeypatch):
    folder = save_tiny(tmp_path / "snapshot", image_size=8, timesteps=10)
    monkeypatch.setattr("ddpm_app.serve.library.download", lambda repo_id, cache_dir=None: folder)
    user = UserState()
    lib = ModelLibrary(handlers.library.weights_dir)
    h = ui.Handlers(lib, preview_interval=0, export_dir=tmp_path / "x")
    out = h.download_model("someone/tiny-ddpm", user)
    assert user.model == "someone/tiny-ddpm" and "someone/tiny-ddpm" in out[-1]["choices"]
    assert "T = 10" in out[0]
    assert len(run_all(h.generate("ddim", 3, 0.0, 1, 1, True, False, user))) == 3


def test_build_wires_named_endpoints(library: ModelLibrary):
    demo = ui.build(library)
    names = {"/" + d.api_name for d in demo.fns.values() if d.api_visibility == "public"}
    assert names == ENDPOINTS
    sampling = [d for d in demo.fns.values() if d.api_name in ("generate", "denoise")]
    assert all(d.concurrency_limit == 1 and d.concurrency_id == "model" for d in sampling)
    assert demo._queue.max_size is None  # the limits on waiting jobs and views are checked apart (app.server)


def test_stop_shows_the_stopped_run_in_every_frames_output(library: ModelLibrary, tmp_path: Path):
    """Stop's follow-up event has one output for every value show_stopped returns: the slider, then exactly the
    outputs of the frame view (a shorter list left Frames showing another run's pictures)."""
    demo = ui.build(library)
    frame_event = next(d for d in demo.fns.values() if d.api_name == "frame")
    stopped = [d for d in demo.fns.values() if getattr(d.fn, "__name__", "") == "show_stopped"]
    assert len(stopped) == 2  # after Generate's Stop and after Denoise's Stop
    h = ui.Handlers(library, preview_interval=0, export_dir=tmp_path / "x")
    user = UserState()
    run_all(h.generate("ddim", 3, 0.0, 1, 1, True, False, user))
    values = h.show_stopped(user)
    for d in stopped:
        assert len(d.outputs) == len(values) == 1 + len(frame_event.outputs)
        assert d.outputs[1:] == frame_event.outputs


def test_model_card_summary_and_samples(tmp_path: Path):
    folder = save_tiny(tmp_path / "faces")
    card = "---\nlicense: mit\n---\n# Faces\n\n![samples](samples.png)\n\nTrained on faces.\n"
    (folder / "README.md").write_text(card)
    Image.new("RGB", (8, 8)).save(folder / "samples.png")
    served = ModelLibrary(tmp_path).get()
    table, card, samples = model.model_card(served)
    assert "| dataset | noise |" in table and "| parameters |" in table and "linear, T = 20" in table
    assert card.startswith("# Faces") and "license" not in card and "![" not in card and "Trained on faces." in card
    assert Path(samples).name == "samples.png" and Path(samples).read_bytes() == (folder / "samples.png").read_bytes()


def test_model_tab_shows_the_step_time_measured_here_and_how_the_model_runs(tmp_path: Path):
    save_tiny(tmp_path / "faces")
    served = ModelLibrary(tmp_path, precision="fp32").get()
    assert served.runtime.precision == "fp32" and served.ms_per_step > 0
    table, _, _ = model.model_card(served)
    assert f"| speed here | {served.ms_per_step:.1f} ms per step at batch 1, measured on this machine" in table
    # plain words in the table (PyTorch in float32: no fast path), the details folded under it
    assert "| runs on | this computer's processor (CPU), fast path off |" in table
    plain, details = table.split("<details>")
    r = served.runtime
    assert all(f"**{name}**: {value}" in details for name, value in [("device", r.device), ("engine", r.engine),
                                                                      ("arithmetic", "fp32"), ("why", r.reason)])
    assert f"**read from**: `{served.loaded.source}`" in details and "source" not in plain
    assert model.fast_path(replace(r, precision="bf16")) and model.fast_path(replace(r, engine="OpenVINO 2026.4"))


def test_the_model_tab_gives_one_total_of_training_steps_and_separates_thousands():
    """A run continued from earlier ones records its own steps and those before: the table adds them up."""
    rows = dict(model.training_rows({"steps": 9000, "steps_before_this_run": 35829, "train_seconds": 3303.3,
                                     "images_seen": 37153536, "weights": "ema", "dataset": "faces"}))
    assert rows == {"training steps": "44,829 in all (35,829 in earlier runs, then 9,000)",
                    "training time": "55 min", "images seen": "37,153,536", "weights": "ema"}
    assert dict(model.training_rows({"steps": 9379, "train_seconds": 48.0})) == {"training steps": "9,379",
                                                                                 "training time": "48 s"}


def test_app_takes_a_precision_and_refuses_unknown_ones(capsys):
    assert app.parse_args([]).precision == "auto"
    assert app.parse_args(["--precision", "bf16"]).precision == "bf16"
    with pytest.raises(SystemExit):
        app.parse_args(["--precision", "int8"])
    assert "invalid choice: 'int8'" in capsys.readouterr().err


def test_all_tensor_work_runs_on_the_one_device_thread(handlers: ui.Handlers, monkeypatch):
    """Sampling, the forward view and the previews all run on the library's worker thread (one OpenMP team)."""
    threads: set[int] = set()

    def recording(method):
        def record(*args, **kwargs):
            threads.add(threading.get_ident())
            return method(*args, **kwargs)
        return record

    served = handlers.library.get("faces")
    monkeypatch.setattr(served, "eps_model", recording(served.eps_model))
    monkeypatch.setattr(ServedModel, "q_sample", recording(ServedModel.q_sample))
    for module in (kit, frames, forward):  # every tab module that draws the pictures of a run or the forward view
        monkeypatch.setattr(module, "picture", recording(module.picture))
    user = UserState()
    run_all(handlers.generate("ddim", 3, 0.0, 1, 1, True, False, user))
    handlers.noise(str(PHOTO), 5, True, -1, user)
    run_all(handlers.denoise("ddim", 3, 0.0, 1, True, user))
    handlers.frame(1, user)
    assert len(threads) == 1 and threading.get_ident() not in threads


def test_every_component_is_one_the_browser_has(library: ModelLibrary):
    """A template component is drawn by its base class's widget, named by Gradio after the direct base: a template of a
    template would name a widget that does not exist, and the page would fail to load it as a custom component."""
    builtin = {cls.__name__.lower() for cls in vars(gr.components).values()
               if isinstance(cls, type) and issubclass(cls, gr.blocks.Block)}
    builtin |= {gr.Tab(render=False).get_block_name()} | {cls.__name__.lower() for cls in vars(gr.layouts).values()
                                                          if isinstance(cls, type) and issubclass(cls, gr.blocks.Block)}
    demo = ui.build(library)
    names = {block.get_block_name() for block in demo.blocks.values()}
    assert names <= builtin, names - builtin
