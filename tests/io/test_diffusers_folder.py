"""diffusers' DDPM folders as the app's models: known answers from diffusers itself (its UNet2DModel, DDPMPipeline,
DDPMScheduler and DDIMScheduler) on tiny random models saved with ``save_pretrained``, and clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel
from tiny_diffusers import TINY_UNET, save_pipeline, tiny_unet

from ddpm_app.checks import ConfigError
from ddpm_app.diffusion.schedule import Schedule
from ddpm_app.io import diffusers_folder
from ddpm_app.io.diffusers_folder import schedule_from_scheduler
from ddpm_app.io.loading import download, load_pretrained
from ddpm_app.io.model_folder import ModelFolderError
from ddpm_app.serve.library import ModelLibrary


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory) -> Path:
    return save_pipeline(tmp_path_factory.mktemp("diffusers") / "tiny-ddpm")


def config_of(scheduler) -> dict:
    """What scheduler_config.json holds for ``scheduler``."""
    return {**scheduler.config, "_class_name": type(scheduler).__name__}


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_eps_is_unet2dmodels_output(pipeline_dir: Path):
    loaded = load_pretrained(pipeline_dir)
    reference = UNet2DModel.from_pretrained(pipeline_dir, subfolder="unet", use_safetensors=True).eval()
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 417, 999])
    with torch.no_grad():
        ours, theirs = loaded(x, t), reference(x, t).sample
    assert theirs.abs().mean() > 0.05  # a network that says something
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    assert loaded.config.image_size == 8 and loaded.config.channels == 3
    assert loaded.config.arch == "diffusers-unet2d"


def test_scheduler_config_maps_onto_the_schedule_and_sampling_defaults():
    schedule, sampling = schedule_from_scheduler(config_of(DDPMScheduler()))
    assert (schedule.kind, schedule.timesteps, schedule.beta_start, schedule.beta_end) == ("linear", 1000, 1e-4, 0.02)
    assert (sampling.variance, sampling.clip_x0) == ("posterior", True)
    _, sampling = schedule_from_scheduler(config_of(DDPMScheduler(variance_type="fixed_large", clip_sample=False)))
    assert (sampling.variance, sampling.clip_x0) == ("beta", False)


@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
def test_schedule_tables_equal_diffusers(beta_schedule: str):
    theirs = DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule)
    ours = Schedule(schedule_from_scheduler(config_of(theirs))[0])
    torch.testing.assert_close(ours.betas, theirs.betas, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod, rtol=1e-5, atol=1e-9)


def in_float64(scheduler):
    """``scheduler`` with its tables computed in float64 from its own β_t: diffusers forms ᾱ_t (a float32 cumprod) and
    1 − ᾱ_t in float32, which near t = 0 loses about four digits (1 − ᾱ_t ≈ 3·10⁻⁴ at t = 2); the app computes its
    tables in float64 and stores float32. Compared in float64, the step itself is what is tested."""
    c = scheduler.config
    betas = torch.linspace(c.beta_start, c.beta_end, c.num_train_timesteps, dtype=torch.float64)
    scheduler.betas, scheduler.alphas = betas, 1 - betas
    scheduler.alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    return scheduler


@pytest.mark.parametrize("timesteps,variance_type,clip", [(1000, "fixed_small", True), (100, "fixed_large", False),
                                                          (100, "fixed_small", False)])
def test_ddpm_chain_equals_ddpm_scheduler_and_pipeline(tmp_path: Path, monkeypatch, timesteps: int,
                                                       variance_type: str, clip: bool):
    """A DDPM chain from the app's served model (σ_t² and clipping as the scheduler config says) against diffusers.

    Step by step: from each x_t of the app's chain, DDPMScheduler.step (ε̂ = UNet2DModel(x_t, t).sample, the app's z
    as its noise, evaluated in float64) gives the app's x_{t−1} within 1e-5. End to end (the google/ddpm-* settings,
    clipping on): diffusers' own loop of DDPMScheduler.step, from the app's x_T with the app's z, ends within 1e-5 of
    the app's images when the scheduler's tables are exact (:func:`in_float64`); DDPMPipeline as shipped, with its
    float32 tables, ends within 1e-4 (its tables near t = 0 lose about four digits, which the chain carries)."""
    from diffusers.schedulers import scheduling_ddpm
    folder = save_pipeline(tmp_path / "m", num_train_timesteps=timesteps, variance_type=variance_type,
                           clip_sample=clip)
    served = ModelLibrary(tmp_path, precision="fp32").get("m")
    settings = served.settings("ddpm", None, None, served.config.sampling.clip_x0)
    assert (settings.variance, settings.clip_x0) == ("beta" if variance_type == "fixed_large" else "posterior", clip)
    ours = list(served.sample(settings, 2, seed=7))
    pipe = DDPMPipeline.from_pretrained(folder, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    scheduler = in_float64(DDPMScheduler.from_config(pipe.scheduler.config))
    scheduler.set_timesteps(timesteps)
    assert [s.t for s in ours] == scheduler.timesteps.tolist()
    with torch.no_grad(), monkeypatch.context() as patch:
        for step in ours:
            t = torch.tensor(step.t)
            noise = torch.zeros_like(step.x_t) if step.noise is None else step.noise
            patch.setattr(scheduling_ddpm, "randn_tensor", lambda shape, **kw: noise.to(kw["dtype"]))
            eps = pipe.unet(step.x_t, t).sample
            theirs = scheduler.step(eps.double(), t, step.x_t.double()).prev_sample.float()
            torch.testing.assert_close(step.x_prev, theirs, rtol=1e-5, atol=1e-5, msg=lambda m: f"t = {step.t}: {m}")
    if clip:
        exact = in_float64(DDPMScheduler.from_config(pipe.scheduler.config))
        exact.set_timesteps(timesteps)
        x = ours[0].x_t
        with torch.no_grad(), monkeypatch.context() as patch:
            for step in ours:
                noise = torch.zeros_like(x) if step.noise is None else step.noise
                patch.setattr(scheduling_ddpm, "randn_tensor", lambda shape, **kw: noise.to(kw["dtype"]))
                x = exact.step(pipe.unet(x, torch.tensor(step.t)).sample, torch.tensor(step.t), x).prev_sample.float()
        torch.testing.assert_close(x, ours[-1].x_prev, rtol=0, atol=1e-5)
        images = pipe(batch_size=2, generator=torch.Generator().manual_seed(7), num_inference_steps=timesteps,
                      output_type="np").images
        assert 0.05 < images.std() and 0.02 < (images > 0.01).mean() < 0.98  # an image, not a constant
        final = (ours[-1].x_prev / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()  # as DDPMPipeline shows it
        np.testing.assert_allclose(final, images, rtol=0, atol=1e-4)


@pytest.mark.parametrize("eta", [0.0, 0.6])
def test_ddim_chain_equals_ddim_scheduler_step(pipeline_dir: Path, eta: float):
    """DDIM-50 (the app's default) with clipping: each jump t → s equals DDIMScheduler.step (x̂₀ clipped, ε̂ made
    consistent with it: use_clipped_model_output) with the same z. The app places its own 50 timesteps (999 … 0, 20 or
    21 apart); DDIMScheduler takes the jump t → t − T // num_inference_steps, so each jump is set up with the
    num_inference_steps that gives it."""
    served = ModelLibrary(pipeline_dir.parent, precision="fp32").get("tiny-ddpm")
    settings = served.settings("ddim", 50, eta, True)
    scheduler = DDIMScheduler.from_config(DDPMScheduler.from_pretrained(pipeline_dir, subfolder="scheduler").config)
    unet = UNet2DModel.from_pretrained(pipeline_dir, subfolder="unet", use_safetensors=True).eval()
    ours = list(served.sample(settings, 2, seed=5))
    assert len(ours) == 50 and ours[0].t == 999 and ours[-1].t_prev == -1
    with torch.no_grad():
        for step in ours:  # each jump from the app's own x_t, so float32 rounding does not pile up over 50 jumps
            gap = step.t - step.t_prev
            scheduler.num_inference_steps = 1000 // gap
            assert step.t - 1000 // scheduler.num_inference_steps == step.t_prev
            noise = step.noise if step.noise is not None else torch.zeros_like(step.x_t)
            x = scheduler.step(unet(step.x_t, torch.tensor(step.t)).sample, step.t, step.x_t, eta=eta,
                               use_clipped_model_output=True, variance_noise=noise).prev_sample
            torch.testing.assert_close(step.x_prev, x, rtol=0, atol=1e-5, msg=lambda m: f"t = {step.t}: {m}")
    assert (eta > 0) == any(s.noise is not None for s in ours)


# -- what the app cannot run exactly, and broken folders: refused, naming the file and the field ----------------


@pytest.mark.parametrize("field,value,says", [
    ("prediction_type", "v_prediction", "prediction_type"),
    ("prediction_type", "sample", "prediction_type"),
    ("variance_type", "learned_range", "variance_type"),
    ("variance_type", "fixed_large_log", "variance_type"),
    ("beta_schedule", "scaled_linear", "beta_schedule"),
    ("trained_betas", [0.1] * 1000, "trained_betas"),
    ("thresholding", True, "thresholding"),
    ("clip_sample_range", 2.0, "clip_sample_range"),
    ("num_train_timesteps", 10.5, "num_train_timesteps"),
])
def test_scheduler_fields_the_app_cannot_run_are_refused(pipeline_dir: Path, tmp_path: Path, field, value, says):
    import shutil
    folder = shutil.copytree(pipeline_dir, tmp_path / "m")
    edit_json(folder / "scheduler" / "scheduler_config.json", **{field: value})
    with pytest.raises(ModelFolderError) as error:
        load_pretrained(folder)
    assert str(folder / "scheduler" / "scheduler_config.json") in str(error.value) and says in str(error.value)


@pytest.mark.parametrize("field,value,says", [
    ("out_channels", 6, "out_channels"),
    ("class_embed_type", "timestep", "class_embed_type"),
    ("sample_size", 100_000, "sample_size"),
    ("block_out_channels", [8, 10], "norm_num_groups"),
    ("down_block_types", ["DownBlock2D", "CrossAttnDownBlock2D"], "down_block_types"),
])
def test_unet_config_fields_are_checked(pipeline_dir: Path, tmp_path: Path, field, value, says):
    import shutil
    folder = shutil.copytree(pipeline_dir, tmp_path / "m")
    edit_json(folder / "unet" / "config.json", **{field: value})
    with pytest.raises(ModelFolderError) as error:
        load_pretrained(folder)
    assert str(folder / "unet" / "config.json") in str(error.value) and says in str(error.value)


def test_partial_and_pickled_folders_are_refused_naming_the_file(pipeline_dir: Path, tmp_path: Path):
    import shutil
    folder = shutil.copytree(pipeline_dir, tmp_path / "m")
    (folder / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(ModelFolderError, match="scheduler_config.json: not found"):
        load_pretrained(folder)
    folder = shutil.copytree(pipeline_dir, tmp_path / "pickled")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))  # a .bin is never opened: the name alone refuses it
    with pytest.raises(ModelFolderError, match=r"diffusion_pytorch_model\.bin: PyTorch pickle weights"):
        load_pretrained(folder)
    folder = shutil.copytree(pipeline_dir, tmp_path / "other-net")
    edit_json(folder / "unet" / "config.json", layers_per_block=2)  # weights saved for another network
    with pytest.raises(ModelFolderError, match=r"diffusion_pytorch_model\.safetensors: weights do not match"):
        load_pretrained(folder)
    folder = shutil.copytree(pipeline_dir, tmp_path / "cut")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelFolderError, match="not a readable safetensors file"):
        load_pretrained(folder)
    folder = shutil.copytree(pipeline_dir, tmp_path / "conditional")
    edit_json(folder / "model_index.json", _class_name="StableDiffusionPipeline")
    with pytest.raises(ModelFolderError, match=r"model_index\.json: _class_name"):
        load_pretrained(folder)


def test_old_attention_weight_names_load_as_diffusers_loads_them(pipeline_dir: Path, tmp_path: Path):
    """Weights saved before diffusers renamed its attention layers (query, key, value, proj_attn) still load."""
    import shutil

    from safetensors.torch import load_file, save_file
    folder = shutil.copytree(pipeline_dir, tmp_path / "old")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    old = {k.replace("to_q.", "query.").replace("to_k.", "key.").replace("to_v.", "value.")
           .replace("to_out.0.", "proj_attn."): v for k, v in load_file(weights).items()}
    assert any(".query." in k for k in old)
    save_file(old, weights)
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([500])
    with torch.no_grad():
        torch.testing.assert_close(load_pretrained(folder)(x, t), load_pretrained(pipeline_dir)(x, t))


def test_hub_id_offline_names_the_repo_and_what_to_do():
    with pytest.raises(ModelFolderError) as error:
        load_pretrained("google/ddpm-celebahq-256")
    assert "google/ddpm-celebahq-256" in str(error.value) and "cannot reach the Hugging Face Hub" in str(error.value)


def test_hub_download_of_a_diffusers_repo_fetches_configs_and_safetensors_only(monkeypatch, tmp_path: Path):
    import huggingface_hub
    (tmp_path / "model_index.json").write_text("{}")
    asked = []

    def fake_snapshot_download(repo_id, **kwargs):
        asked.append(kwargs["allow_patterns"])
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert download("google/ddpm-cifar10-32") == tmp_path
    assert asked[0] == ["config.json", "model_index.json"] and asked[1] == diffusers_folder.HUB_FILES
    for pattern in asked[1]:
        assert pattern.endswith((".json", ".safetensors", ".md")), pattern


def test_unknown_unet_fields_are_left_as_diffusers_leaves_them_and_bad_types_named():
    from ddpm_app.models.diffusers_unet import check_unet
    assert check_unet(dict(TINY_UNET, resnet_eps_old=1))["layers_per_block"] == 1
    with pytest.raises(ConfigError, match="flip_sin_to_cos"):
        check_unet(dict(TINY_UNET, flip_sin_to_cos=1))


def test_a_ddim_pipeline_folder_loads_and_its_scheduler_fields_are_checked(tmp_path: Path):
    from diffusers import DDIMPipeline
    DDIMPipeline(unet=tiny_unet(), scheduler=DDIMScheduler(num_train_timesteps=50)).save_pretrained(tmp_path / "d")
    loaded = load_pretrained(tmp_path / "d")
    assert loaded.config.schedule.timesteps == 50 and loaded.config.sampling.variance == "posterior"
    edit_json(tmp_path / "d" / "scheduler" / "scheduler_config.json", set_alpha_to_one=False)
    with pytest.raises(ModelFolderError, match="scheduler_config.json: set_alpha_to_one"):
        load_pretrained(tmp_path / "d")
