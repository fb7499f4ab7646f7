"""Every view of the app on a tiny diffusers DDPM folder (UNet2DModel + DDPMScheduler saved with save_pretrained):
the handlers run end to end at the model's own size, with its scheduler's σ_t² and clipping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_app import PHOTO
from tiny_diffusers import save_pipeline

from ddpm_app.diffusion.samplers import step_breakdown
from ddpm_app.serve.library import ModelLibrary
from ddpm_app.ui import kit, model
from ddpm_app.ui import page as ui
from ddpm_app.views.state import UserState

T = 20
LANDSCAPE = PHOTO.parent / "landscape.png"


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> ModelLibrary:
    root = tmp_path_factory.mktemp("diffusers-views")
    # σ_t² = β_t and no clipping: both differ from the app's own defaults, so a view that ignores the scheduler shows
    save_pipeline(root / "tiny-ddpm", size=16, num_train_timesteps=T, variance_type="fixed_large", clip_sample=False)
    return ModelLibrary(root, "cpu", precision="fp32")


@pytest.fixture
def handlers(library, tmp_path) -> ui.Handlers:
    return ui.Handlers(library, preview_interval=0, export_dir=tmp_path / "exports")


@pytest.fixture
def teach(library, tmp_path) -> ui.Handlers:
    return ui.Handlers(library, preview_interval=0, figure_dir=tmp_path / "figures")


def test_the_library_finds_and_describes_the_diffusers_folder(library: ModelLibrary, handlers: ui.Handlers):
    assert library.names == ["tiny-ddpm"]
    user = UserState()
    summary, _, _, header, t_slider, steps, sd_steps, batch, clip, sd_clip, eta, sd_eta, pick = \
        handlers.select_model("tiny-ddpm", user)
    assert "16×16, 3 channels" in header and f"T = {T}" in header
    assert "diffusers-unet2d" in summary and "diffusers DDPMPipeline" in summary
    assert "diffusers' UNet2DModel as PyTorch runs it" in summary  # the "runs on" line
    assert ("x̂₀ clipping starts off, DDPM adds noise with σ_t² = β_t for this model: as its DDPMScheduler config says "
            "(variance_type fixed_large: σ_t² = β_t; clip_sample false)") in summary
    assert eta["value"] == sd_eta["value"] == 0.0
    assert clip["value"] is False and sd_clip["value"] is False  # clip_sample false in the scheduler config
    assert batch["value"] == kit.FIRST_BATCH and steps["value"] == min(kit.DEFAULT_SETTINGS.steps, T)
    assert pick["value"] == "tiny-ddpm"


def test_generate_frames_and_exports(handlers: ui.Handlers, library: ModelLibrary):
    user = UserState()
    outs = list(handlers.generate("ddpm", None, None, 7, 2, False, True, user))
    assert len(user.run.frames) == T and user.run.final.shape == (2, 3, 16, 16)
    assert "σ² = β" in user.run.title
    served = library.get()
    replay = list(served.sample(user.run.settings, 2, 7))
    b = step_breakdown(served.schedule, replay[0], user.run.settings)  # the variance the settings carry: β_t
    assert b.sigma == pytest.approx(float(served.schedule.float64.betas[T - 1]) ** 0.5)
    assert b.sigma > float(served.schedule.float64.posterior_variance[T - 1]) ** 0.5
    x_t, x0, label, update, terms, which, _ = handlers.frame(1, user)
    assert which == "generate" and f"t = {T}**" in label  # the paper's t of the first step
    assert outs[-1][0] is not None
    for kind in ("gif", "png", "mp4"):
        assert Path(handlers.export(kind, user)).stat().st_size > 0
    gif = Image.open(handlers.export("gif", user))
    assert gif.n_frames >= 2
    list(handlers.generate("ddim", 5, 0.5, 3, 1, True, False, user))
    assert len(user.run.frames) == 5


def test_forward_and_denoise(handlers: ui.Handlers):
    user = UserState()
    out = handlers.noise(str(PHOTO), 12, True, 5, user)
    noised = out[2]
    assert np.asarray(noised).shape[:2][0] >= 16
    outs = list(handlers.denoise("ddim", 4, 0.0, 9, False, user))
    assert "PSNR" in outs[-1][3]
    outs = list(handlers.denoise("ddpm", None, None, 9, False, user))
    assert len(user.run.frames) == 12  # the paper's t = 12, 11, …, 1


def test_training_likelihood_compare_interpolate_and_figures(handlers: ui.Handlers, teach: ui.Handlers):
    user = UserState()
    x0_pic, eps_pic, xt_pic, pred_pic, heat, numbers, plot = teach.train_step(str(PHOTO), 13, 42, user)
    assert "13" in numbers
    *_, (plot, summary) = teach.loss_curve(str(PHOTO), 3, user)
    assert plot is not None and summary
    outs = list(teach.likelihood(str(LANDSCAPE), True, 1, True, user))
    assert "bits/dim" in str(outs[-1])
    list(handlers.generate("ddpm", None, None, 5, 1, False, False, user))
    teach.pin(user)
    list(handlers.generate("ddim", 4, 0.0, 5, 1, False, False, user))
    image, caption = teach.compare(8, user)
    assert image is not None and "**A** (pinned): DDPM" in caption
    outs = list(teach.interpolate(1, 2, 3, 3, 0.0, False, user))
    assert outs
    handlers.frame(2, user)
    handlers.noise(str(PHOTO), 9, True, 5, user)
    for view in ("step", "forward", "training", "compare", "interpolation"):
        img = Image.open(teach.export_figure(view, user))
        assert img.height >= 512 + 20, view  # 16-pixel images enlarged to 512, a label line below
    assert Image.open(teach.export_figure("likelihood", user)).width >= 1800


def test_the_app_builds_on_a_diffusers_model(library: ModelLibrary):
    demo = ui.build(library)
    assert "generate" in {d.api_name for d in demo.fns.values()}


def test_a_slow_model_starts_with_one_image_and_fewer_ddim_steps(tmp_path: Path):
    """Where a step costs seconds (a 256² model on a CPU), Generate's first settings fit about a minute, and the Model
    tab says what a step costs."""
    save_pipeline(tmp_path / "m", num_train_timesteps=1000)
    served = ModelLibrary(tmp_path, "cpu", precision="fp32").get("m")
    assert served.first_run(4, 50) == (4, 50, "")  # the tiny model is fast
    served.ms_per_step = 4000.0  # as a 256² UNet2DModel measured on a 2-core CPU
    first = served.first_run(4, 50)
    assert first.batch == 1 and first.ddim_steps == 15
    assert "4.0 s" in first.note and "about 60 s" in first.note and "67 min" in first.note
    table = model.model_card(served)[0]
    assert "first settings" in table and "takes 4.0 s here" in table
    served.ms_per_step = 60_000.0
    assert served.first_run(4, 50).ddim_steps == 10  # never fewer than MIN_FIRST_STEPS


def test_weights_may_name_a_diffusers_folder_or_a_hub_id(tmp_path: Path):
    import app
    from ddpm_app.io.model_folder import ModelFolderError
    folder = save_pipeline(tmp_path / "google-like", num_train_timesteps=10)
    args = app.parse_args(["--weights", str(folder), "--weights", "google/ddpm-celebahq-256"])
    assert args.weights == [str(folder)] and args.hub_models == ["google/ddpm-celebahq-256"]
    library = ModelLibrary(args.weights, "cpu", precision="fp32")  # the folder itself is the one model it serves
    assert library.names == ["google-like"] and library.get().config.image_size == 8
    with pytest.raises(ModelFolderError, match="google/ddpm-celebahq-256: cannot reach the Hugging Face Hub"):
        ModelLibrary(args.weights, "cpu", hub_models=args.hub_models)  # the test's Hub is a closed port


def test_a_link_out_of_the_weights_folder_inside_unet_is_refused(tmp_path: Path):
    from ddpm_app.io.model_folder import ModelFolderError
    outside = save_pipeline(tmp_path / "outside" / "m", num_train_timesteps=10)
    inside = save_pipeline(tmp_path / "weights" / "m", num_train_timesteps=10)
    weights = inside / "unet" / "diffusion_pytorch_model.safetensors"
    weights.unlink()
    weights.symlink_to(outside / "unet" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ModelFolderError, match="no models"):
        ModelLibrary(tmp_path / "weights", "cpu", precision="fp32")  # the scan leaves it out
    from ddpm_app.serve.library import model_folders
    assert model_folders(tmp_path / "weights") == ({}, ["m"])
