"""The trainer on tiny in-memory data: it learns, resumes bit-exactly, stops cleanly, refuses bad states, exports."""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import shutil
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from conftest import perturb, seeded_init
from PIL import Image
from tiny_runs import MODEL, SCHEDULE, shapes_pack, train_config

from ddpm_app.diffusion import samplers
from ddpm_app.diffusion.loss import curve_timesteps, diffusion_loss, loss_curve
from ddpm_app.diffusion.schedule import Schedule
from ddpm_app.io.loading import load_pretrained
from ddpm_app.io.model_folder import SamplingDefaults
from ddpm_app.metrics.eps_mse import held_out_mse, held_out_set
from ddpm_app.models import SeedUNetConfig, build_model
from ddpm_app.training import config, distributed, objective
from ddpm_app.training import trainer as training
from ddpm_app.training.checkpoint import CHECKPOINT_NAME, load_checkpoint
from ddpm_app.training.config import lr_at
from ddpm_app.training.errors import TrainingError
from ddpm_app.training.export import export_checkpoint
from ddpm_app.training.objective import loss_weights
from ddpm_app.training import network
from ddpm_app.training.network import default_channels_last
from ddpm_app.training.trainer import Trainer


def run(trainer: Trainer) -> list[training.Progress]:
    return list(trainer.run())


def assert_same_state(a: dict, b: dict) -> None:
    """Bitwise equality of everything a checkpoint carries that decides the rest of a run."""
    assert a["step"] == b["step"] and a["images_seen"] == b["images_seen"]
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    opt_a, opt_b = a["optimizer"], b["optimizer"]
    assert opt_a["param_groups"] == opt_b["param_groups"]
    assert opt_a["state"].keys() == opt_b["state"].keys()
    for i in opt_a["state"]:
        for name, value in opt_a["state"][i].items():
            assert torch.equal(value, opt_b["state"][i][name]), f"optimizer state {i}.{name} differs"
    assert torch.equal(a["generator"], b["generator"])


# -- learning-rate schedule and loss weights ---------------------------------------------------------------------

def test_lr_linear_warmup_then_constant(tmp_path):
    cfg = train_config(tmp_path, steps=100, lr=1e-3, warmup_steps=10)
    assert [lr_at(cfg, s) for s in (0, 4, 9)] == pytest.approx([1e-4, 5e-4, 1e-3], rel=1e-12)
    assert lr_at(cfg, 10) == lr_at(cfg, 99) == 1e-3


def test_lr_cosine_decays_to_a_tenth(tmp_path):
    cfg = train_config(tmp_path, steps=110, lr=1e-3, warmup_steps=10, lr_decay="cosine")
    assert lr_at(cfg, 9) == pytest.approx(1e-3)
    assert lr_at(cfg, 10) == pytest.approx(1e-3)  # start of the cosine: cos(0) = 1
    assert lr_at(cfg, 60) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # halfway: cos(π/2) = 0
    assert lr_at(cfg, 110) == pytest.approx(1e-4)  # the end: 10 % of lr
    assert lr_at(cfg, 500) == pytest.approx(1e-4)  # past the end (a resumed run with more steps) stays there


@pytest.mark.parametrize("arch, given, world_size, expected", [
    # nothing given: the recipe the shipped model of that architecture trained with, CUDA graphs on one GPU
    ("ddpm", {}, 1, dict(batch_size=1024, lr=3e-4, warmup_steps=300, compile_mode="reduce-overhead", sample_eta=0.0)),
    ("seed", {}, 1, dict(batch_size=256, lr=4e-4, warmup_steps=500, compile_mode="reduce-overhead", sample_eta=1.0)),
    ("seed", {"sample_eta": 0.0}, 1, dict(sample_eta=0.0)),
    # the seed net with its norms on the residual branch sees x_t's amplitude: clean at η = 0
    ("seed-branch", {}, 1, dict(batch_size=256, sample_eta=0.0)),
    ("seed-branch", {"sample_eta": 0.5}, 1, dict(sample_eta=0.5)),
    # another batch scales the recipe's lr by √(batch / recipe batch): 3e-4·√(256/1024) = 1.5e-4
    ("ddpm", {"batch_size": 256}, 1, dict(batch_size=256, lr=1.5e-4, warmup_steps=300)),
    ("seed", {"batch_size": 1024}, 1, dict(batch_size=1024, lr=8e-4)),
    # what is given wins; DistributedDataParallel keeps the default compile mode
    ("ddpm", {"batch_size": 64, "lr": 1e-3, "warmup_steps": 0}, 1, dict(batch_size=64, lr=1e-3, warmup_steps=0)),
    ("ddpm", {"compile_mode": "default"}, 1, dict(compile_mode="default")),
    ("ddpm", {}, 2, dict(compile_mode="default")),
])
def test_unset_settings_come_from_the_architectures_recipe(arch, given, world_size, expected):
    arch, _, block_norm = arch.partition("-")
    cfg = config.with_recipe(config.TrainConfig(**given), arch, world_size, block_norm=block_norm or "input")
    assert {k: getattr(cfg, k) for k in expected} == pytest.approx(expected)


@pytest.mark.parametrize("arch", ["ddpm", "seed"])
def test_without_a_gpu_the_cpu_recipe_fills_in_unless_the_gpu_one_is_asked_for(arch):
    cpu, gpu = config.CPU_RECIPES[arch], config.RECIPES[arch]
    assert cpu.batch_size < gpu.batch_size and cpu.model  # a smaller batch and network
    for device, recipe, expected in (("cpu", "auto", cpu), ("cpu", "cpu", cpu), ("cpu", "gpu", gpu),
                                     ("cuda", "auto", gpu), ("cuda", "cpu", cpu)):
        cfg = config.with_recipe(config.TrainConfig(recipe=recipe), arch, 1, device)
        assert config.recipe_for(cfg, arch, device) is expected
        assert (cfg.batch_size, cfg.lr, cfg.warmup_steps, cfg.heldout_images) == (
            expected.batch_size, expected.lr, expected.warmup_steps, expected.heldout_images)
    given = config.with_recipe(config.TrainConfig(batch_size=64, heldout_images=5), arch, 1, "cpu")
    scaled = pytest.approx(cpu.lr * math.sqrt(64 / cpu.batch_size))
    assert (given.batch_size, given.lr, given.heldout_images) == (64, scaled, 5)


def test_the_sample_grid_uses_the_recipes_eta_and_is_the_same_every_time(tmp_path):
    """The grid runs DDIM at the configured η from fixed noise: with η = 1 it draws fresh noise from a fixed seed, so
    two grids of the same weights are identical, and differ from the η = 0 grid."""
    def grid(eta: float, name: str) -> np.ndarray:
        trainer = Trainer(train_config(tmp_path / name, steps=1, sample_eta=eta, sample_steps=5), MODEL, SCHEDULE,
                          pack=shapes_pack())
        return np.asarray(Image.open(trainer.sample_grid()))
    stochastic, again, deterministic = grid(1.0, "a"), grid(1.0, "b"), grid(0.0, "c")
    assert np.array_equal(stochastic, again)
    assert np.abs(stochastic.astype(int) - deterministic).mean() > 1


def test_the_trainer_runs_and_records_the_recipe_it_filled_in(tmp_path):
    cfg = train_config(tmp_path, steps=1, batch_size=None, lr=None, warmup_steps=None)
    trainer = Trainer(cfg, MODEL, SCHEDULE, pack=shapes_pack())  # on the CPU: the CPU's recipe
    assert trainer.global_batch == 32 and trainer.cfg.lr == pytest.approx(1e-3)
    assert trainer.state()["train_config"]["lr"] == pytest.approx(1e-3)  # a resumed run carries on with it
    trainer = Trainer(dataclasses.replace(cfg, recipe="gpu"), MODEL, SCHEDULE, pack=shapes_pack())
    assert trainer.global_batch == 1024 and trainer.cfg.lr == pytest.approx(3e-4)


def test_a_time_limit_that_cuts_the_lr_decay_short_is_warned_about_with_the_step_it_reaches(tmp_path):
    # 15,360 images/s at batch 1,024 is 15 steps/s; 630 s allowed, 130 s used: 500 s more reach step 100 + 7,500
    cfg = train_config(tmp_path, steps=8000, batch_size=1024, max_minutes=10.5, lr_decay="cosine")
    warning = config.time_limit_warning(cfg, step=100, images_per_s=15_360, seconds_used=130)
    assert "stops the run near step 7600 of 8000, before the cosine learning-rate decay ends" in warning
    assert "use --steps 7600" in warning
    assert config.time_limit_warning(dataclasses.replace(cfg, steps=7600), 100, 15_360, 130) is None  # it fits
    assert config.time_limit_warning(dataclasses.replace(cfg, lr_decay="constant"), 100, 15_360, 130) is None
    assert config.time_limit_warning(dataclasses.replace(cfg, max_minutes=0), 100, 15_360, 130) is None


def test_min_snr_weights_are_min_snr_gamma_over_snr(tmp_path):
    schedule = Schedule(SCHEDULE)
    t = torch.arange(SCHEDULE.timesteps)
    snr = schedule.alphas_cumprod.double() / (1 - schedule.alphas_cumprod.double())
    w = loss_weights(schedule, t, train_config(tmp_path, loss_weighting="min-snr", min_snr_gamma=5.0))
    assert w.shape == (SCHEDULE.timesteps,)
    torch.testing.assert_close(w.double(), snr.clamp(max=5.0) / snr, rtol=1e-4, atol=0)
    assert (w[snr <= 5.0] == 1).all() and (w[snr > 5.0] < 1).all()
    assert (snr > 5.0).any() and (snr <= 5.0).any()  # both branches are exercised at this T
    assert loss_weights(schedule, t, train_config(tmp_path)) is None


def test_log_uniform_timesteps_follow_their_stated_probabilities():
    T = 1000
    probs = objective.log_uniform_t_probs(T)
    assert probs.shape == (T,) and float(probs.sum()) == pytest.approx(1.0, abs=1e-12)
    assert (probs[1:] < probs[:-1]).all() and probs[-1] > 0  # decreasing, every t reachable
    assert float(probs[0]) == pytest.approx(math.log(2) / math.log(T + 1))
    gen = torch.Generator().manual_seed(0)
    n = 400_000
    t = objective.sample_timesteps(n, T, 1.0, generator=gen)
    assert t.dtype == torch.long and int(t.min()) == 0 and int(t.max()) <= T - 1
    counts = torch.bincount(t, minlength=T).double()
    # bins wide enough for ~≥ 2,000 draws each; each count within 5 binomial standard deviations of its expectation
    edges = [0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, T]
    for lo, hi in zip(edges, edges[1:]):
        p = float(probs[lo:hi].sum())
        seen = float(counts[lo:hi].sum())
        assert abs(seen - n * p) < 5 * math.sqrt(n * p * (1 - p)), (lo, hi, seen, n * p)


def test_small_t_fraction_draws_that_share_of_the_batch_log_uniformly_and_none_keeps_the_uniform_stream():
    T, batch = 1000, 1024
    assert objective.small_t_count(batch, 0.25) == 256 and objective.small_t_count(batch, 0.0) == 0
    plain = objective.sample_timesteps(batch, T, 0.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(plain, torch.randint(0, T, (batch,), generator=torch.Generator().manual_seed(3)))
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([objective.sample_timesteps(batch, T, 0.25, generator=gen) for _ in range(100)])
    head, tail = draws[:, :256], draws[:, 256:]
    assert float((head == 0).double().mean()) == pytest.approx(math.log(2) / math.log(T + 1), abs=0.01)
    assert float((tail == 0).double().mean()) < 0.003 and float(tail.double().mean()) == pytest.approx(499.5, abs=6)
    with pytest.raises(ValueError, match="small_t_fraction must lie in"):
        config.TrainConfig(small_t_fraction=1.5)


def test_the_trainer_draws_its_timesteps_with_the_small_t_fraction(tmp_path):
    counts = {}
    for fraction in (0.0, 0.5):
        cfg = train_config(tmp_path / str(fraction), steps=1, batch_size=64, small_t_fraction=fraction)
        trainer = Trainer(cfg, MODEL, SCHEDULE, pack=shapes_pack())
        t = torch.cat([trainer._batch()[1] for _ in range(50)])
        assert t.shape == (50 * 64,) and int(t.max()) < SCHEDULE.timesteps
        counts[fraction] = float((t == 0).double().mean())
        list(trainer.run())
        assert load_checkpoint(tmp_path / str(fraction) / CHECKPOINT_NAME)["train_config"]["small_t_fraction"] == fraction
    # T = 50: uniform draws give t = 0 one time in 50; half the batch log-uniform adds ½·log 2 / log 51 ≈ 8.8 %
    assert counts[0.0] == pytest.approx(1 / 50, abs=0.01)
    assert counts[0.5] == pytest.approx(0.5 / 50 + 0.5 * math.log(2) / math.log(51), abs=0.015)


# -- the loss and its inputs ------------------------------------------------------------------------------------

def tiny_alphas_cumprod() -> torch.Tensor:
    """ᾱ_t of the tiny schedule (linear β from 1e-3 to 0.3 over T = 20), computed here in float64."""
    return torch.cumprod(1 - torch.linspace(1e-3, 0.3, 20, dtype=torch.float64), 0)


def test_diffusion_loss_is_the_mean_squared_error_of_the_noise_prediction(tiny_schedule):
    """L = mean over batch and pixels of (ε − ε_θ(√ᾱ_t·x₀ + √(1−ᾱ_t)·ε, t))², checked with a network that records
    what it is shown and predicts ε̂ = x_t/2."""
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(3, 3, 4, 4, generator=g) * 2 - 1, torch.randn(3, 3, 4, 4, generator=g)
    t = torch.tensor([0, 7, 19])
    seen = []

    def half_of_input(x_t, tt):
        seen.append((x_t.clone(), tt.clone()))
        return x_t / 2

    abar = tiny_alphas_cumprod()[t].float()[:, None, None, None]
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    loss = diffusion_loss(half_of_input, tiny_schedule, x0, t, noise)
    torch.testing.assert_close(seen[0][0], x_t, rtol=1e-6, atol=1e-6)
    assert torch.equal(seen[0][1], t)
    expected = ((noise - x_t / 2) ** 2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    # with per-sample weights: the mean over the batch of w_i·(per-sample mean)
    w = torch.tensor([1.0, 0.5, 0.25])
    weighted = diffusion_loss(half_of_input, tiny_schedule, x0, t, noise, w)
    torch.testing.assert_close(weighted, (w * ((noise - x_t / 2) ** 2).mean(dim=(1, 2, 3))).mean())


def test_loss_curve_is_snr_times_x0_squared_for_a_network_that_ignores_x0(tiny_schedule):
    """ε̂ = x_t/√(1−ᾱ_t) misses by √ᾱ_t·x₀/√(1−ᾱ_t), so for a constant image x₀ = c the loss at t is SNR(t)·c²
    whatever ε is: the curve's mean at t is SNR(t)·mean(c²) and its standard error SNR(t)·std(c²)/√(N·draws).
    Fails if the (t, image) pairs are mismatched inside the batches, or the spread is a standard deviation."""
    abar = tiny_alphas_cumprod()
    c = torch.tensor([-0.5, 0.25, 1.0])
    x0 = c[:, None, None, None].expand(3, 3, 4, 4).contiguous()

    def noise_from_x_t(x_t, tt):
        return x_t / (1 - abar[tt]).sqrt().float()[:, None, None, None]

    timesteps = [0, 5, 19]
    curve = loss_curve(noise_from_x_t, tiny_schedule, x0, timesteps, draws=2, batch_size=4,  # batches straddle t
                       generator=torch.Generator().manual_seed(0))
    snr = (abar / (1 - abar))[timesteps]
    per_image = torch.cat([c.double() ** 2] * 2)  # every image twice (two draws of ε)
    assert curve.timesteps == timesteps and curve.num_images == 3 and curve.draws == 2
    assert curve.mean == pytest.approx((snr * per_image.mean()).tolist(), rel=1e-5)
    assert curve.stderr == pytest.approx((snr * per_image.std() / 6 ** 0.5).tolist(), rel=1e-5)


def test_curve_timesteps_span_the_schedule_ends_included():
    """round(i·(T−1)/(num−1)): fails if the last point falls short of T − 1 (an off-by-one in the spacing)."""
    assert curve_timesteps(1000, 5) == [0, 250, 500, 749, 999]
    assert curve_timesteps(20, 25) == list(range(20))  # more points than timesteps: each t once
    assert curve_timesteps(20, 1) == [19]


def test_training_batches_are_flipped_normalised_pictures_at_every_timestep(tmp_path, monkeypatch):
    """What the loss receives: x₀ = one of the pictures or its left–right mirror, mapped to [−1, 1]; t drawn over all
    of 0…T−1; ε ~ N(0, I)."""
    schedule = dataclasses.replace(SCHEDULE, timesteps=4)
    pack = shapes_pack()
    pictures = pack.images.float() / 127.5 - 1  # (N, 3, 16, 16)
    batches = []
    real_loss = training.diffusion_loss

    def recording_loss(model, sched, x0, t, noise, weights=None):
        batches.append((x0.detach().clone(), t.clone(), noise.clone()))
        return real_loss(model, sched, x0, t, noise, weights)

    monkeypatch.setattr(training, "diffusion_loss", recording_loss)
    monkeypatch.setattr(Trainer, "time_step", lambda self: 1.0)  # its forward passes time zeros, not training batches
    run(Trainer(train_config(tmp_path, steps=6, save_every=0), MODEL, schedule, pack=pack))
    assert len(batches) == 6
    x0 = torch.cat([b[0] for b in batches])  # (48, 3, 16, 16)
    ts = torch.cat([b[1] for b in batches])
    noise = torch.cat([b[2] for b in batches])
    mirrored = 0
    for x in x0:
        same = [torch.allclose(x, p, atol=1e-6) for p in pictures]
        mirror = [torch.allclose(x, p.flip(-1), atol=1e-6) for p in pictures]
        assert any(same) or any(mirror)
        mirrored += any(mirror) and not any(same)
    assert 10 <= mirrored <= 38  # about half of the 48 are mirrored
    assert sorted(set(ts.tolist())) == [0, 1, 2, 3]
    assert abs(float(noise.mean())) < 0.02 and abs(float(noise.std()) - 1) < 0.02


# -- learning ---------------------------------------------------------------------------------------------------

def test_loss_goes_down_on_simple_pictures(tmp_path):
    trainer = Trainer(train_config(tmp_path, steps=60, log_every=10, save_every=0), MODEL, SCHEDULE,
                      pack=shapes_pack())
    events = run(trainer)
    started = [p for p in events if p.event == "started"]
    assert [p.step for p in started] == [1] and all(seconds > 0 for seconds in started[0].startup)
    logs = [p for p in events if p.event == "log"]
    assert [p.step for p in logs] == [10, 20, 30, 40, 50, 60]
    losses = [p.loss for p in logs]
    assert all(math.isfinite(x) for x in losses)
    # the zero-initialised output layer predicts ε ≈ 0 at first (loss ≈ 1); it has to learn to do much better
    assert losses[0] > 0.5
    assert max(losses[-2:]) < 0.4 * losses[0], losses
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60]
    assert [r["loss"] for r in rows] == pytest.approx(losses)


def test_min_snr_weighting_trains_and_down_weights_low_noise_steps(tmp_path):
    first_loss = {}
    for weighting in ("uniform", "min-snr"):
        cfg = train_config(tmp_path / weighting, steps=4, log_every=1, loss_weighting=weighting)
        trainer = Trainer(cfg, MODEL, SCHEDULE, pack=shapes_pack())
        logs = [p for p in run(trainer) if p.event == "log"]
        assert len(logs) == 4 and all(math.isfinite(p.loss) for p in logs)
        first_loss[weighting] = logs[0].loss
        assert load_checkpoint(tmp_path / weighting / CHECKPOINT_NAME)["train_config"]["loss_weighting"] == weighting
    # same batch, same initial network: the weights (≤ 1, < 1 where SNR > γ) lower the first loss
    assert first_loss["min-snr"] < 0.95 * first_loss["uniform"]


# -- the EMA -------------------------------------------------------------------------------------------------------

def ema_decay(step: int, decay: float, warmup: bool) -> float:
    """d_k = min(decay, (1 + k)/(10 + k)) with the warm-up, else decay; k = optimizer steps taken before."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


@pytest.mark.parametrize("decay, warmup", [(0.3, True), (0.6, False)], ids=["warm-up", "no-warm-up"])
def test_ema_after_k_steps_is_the_moving_average_of_the_weights(tmp_path, decay, warmup):
    """θ_ema(k+1) = d_k·θ_ema(k) + (1 − d_k)·θ(k+1), from θ_ema(0) = θ(0), with the weights of every step recorded.

    With decay 0.3 the warm-up rule decides the first three steps ((1+k)/(10+k) = 0.1, 0.18, 0.25) and the decay
    the rest, so both branches are checked.
    """
    trainer = Trainer(train_config(tmp_path, steps=6, ema_decay=decay, ema_warmup=warmup, save_every=0),
                      MODEL, SCHEDULE, pack=shapes_pack())
    params = lambda: {name: p.detach().clone() for name, p in trainer.model.named_parameters()}  # noqa: E731
    trajectory = [params()]
    trainer.optimizer.register_step_post_hook(lambda *args: trajectory.append(params()))
    run(trainer)
    assert len(trajectory) == 7

    expected = dict(trajectory[0])
    for k, weights in enumerate(trajectory[1:]):
        d = ema_decay(k, decay, warmup)
        expected = {name: d * expected[name] + (1 - d) * weights[name] for name in expected}
    ema = dict(trainer.ema.model.named_parameters())
    moved = 0
    for name, value in expected.items():
        torch.testing.assert_close(ema[name], value, rtol=1e-5, atol=1e-6, msg=name)
        moved += int(not torch.equal(ema[name], trajectory[0][name]))
    assert moved == len(expected)  # every tensor moved away from its initial value
    # and it is an average, not the weights themselves
    assert any((ema[name] - trajectory[-1][name]).abs().max() > 1e-4 for name in expected)
    # the checkpoint and the export carry the same EMA
    saved = load_checkpoint(tmp_path / CHECKPOINT_NAME)["ema"]
    for name, value in ema.items():
        assert torch.equal(saved[name], value)


# -- held-out ε-MSE ---------------------------------------------------------------------------------------------

def test_held_out_set_is_one_fixed_draw_whatever_the_global_seed():
    images = shapes_pack(6).images
    torch.manual_seed(1)
    a = held_out_set(images, SCHEDULE.timesteps)
    torch.manual_seed(2)
    b = held_out_set(images, SCHEDULE.timesteps)
    assert torch.equal(a.t, b.t) and torch.equal(a.noise, b.noise) and torch.equal(a.x0, b.x0)
    # x₀ is the images in order, 8-bit values mapped to [−1, 1] (fails for [0, 1] or a shuffled set)
    torch.testing.assert_close(a.x0, images.float() / 127.5 - 1, rtol=0, atol=1e-6)
    assert a.noise.shape == a.x0.shape == (6, 3, 16, 16)
    assert a.t.min() >= 0 and a.t.max() < SCHEDULE.timesteps and len(set(a.t.tolist())) > 1
    other = held_out_set(images, SCHEDULE.timesteps, seed=1)
    assert not torch.equal(a.t, other.t) and not torch.equal(a.noise, other.noise)


def test_held_out_mse_is_the_training_loss_on_the_same_x0_t_and_noise():
    model = seeded_init(lambda: build_model(MODEL.__class__(**{**MODEL.to_dict(), "dropout": 0.5})))  # dropout:
    # eval mode must matter; the zero-initialised output layer would predict ε = 0 for every input
    perturb(model)
    schedule = Schedule(SCHEDULE)
    held = held_out_set(shapes_pack(7).images, SCHEDULE.timesteps)
    model.eval()
    with torch.no_grad():
        expected = diffusion_loss(model, schedule, held.x0, held.t, held.noise).item()
    model.train()
    got = held_out_mse(model, schedule, held, batch_size=3)  # 3 + 3 + 1: the mean is over images, not batches
    assert got == pytest.approx(expected, rel=1e-5)
    assert model.training  # the caller's mode is restored
    assert got != pytest.approx(held_out_mse(model, schedule, held_out_set(shapes_pack(7).images, 50, seed=5)))


def test_training_logs_the_held_out_mse_of_the_ema_and_raw_weights(tmp_path):
    pack, held = shapes_pack(8), shapes_pack(5)
    cfg = train_config(tmp_path, steps=12, eval_every=6, eval_images=4)
    trainer = Trainer(cfg, MODEL, SCHEDULE, pack=pack, held_out_split=held)
    evals = [p for p in run(trainer) if p.event == "eval"]
    assert [p.step for p in evals] == [6, 12]
    rows = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "held_out_mse" in r]
    assert [(r["step"], r["images_seen"]) for r in rows] == [(6, 48), (12, 96)]
    assert [(r["held_out_mse_ema"], r["held_out_mse"]) for r in rows] == [(p.held_out.ema, p.held_out.raw)
                                                                           for p in evals]
    fixed = held_out_set(held.images[:4], SCHEDULE.timesteps)  # eval_images of them, the set any run would draw
    assert rows[-1]["held_out_mse_ema"] == pytest.approx(held_out_mse(trainer.ema.model, trainer.schedule, fixed))
    assert rows[-1]["held_out_mse"] == pytest.approx(held_out_mse(trainer.model, trainer.schedule, fixed))
    assert rows[-1]["held_out_mse"] != rows[-1]["held_out_mse_ema"]  # EMA decay 0.9: the two weights differ
    assert rows[-1]["held_out_mse"] < rows[0]["held_out_mse"]  # it learns


# -- resuming -----------------------------------------------------------------------------------------------------

def test_resume_with_dropout_is_bit_exact(tmp_path):
    """Dropout draws from the CPU generator: resuming restores it, so 4 + 4 steps equal 8 in one go."""
    model = dataclasses.replace(MODEL, dropout=0.3)
    a = Trainer(train_config(tmp_path / "a", steps=8), model, SCHEDULE, pack=shapes_pack())
    run(a)
    run(Trainer(train_config(tmp_path / "b", steps=4), model, SCHEDULE, pack=shapes_pack()))
    torch.manual_seed(12345)  # whatever the process did in between must not matter
    b = Trainer(train_config(tmp_path / "b", steps=8), None, None, pack=shapes_pack(), resume=True)
    assert b.diffusion_config.model.dropout == 0.3
    run(b)
    assert_same_state(a.state(), b.state())
    # the dropout did draw: the same run without it ends elsewhere
    c = Trainer(train_config(tmp_path / "c", steps=8), MODEL, SCHEDULE, pack=shapes_pack())
    run(c)
    assert not torch.equal(c.state()["model"]["out_conv.weight"], a.state()["model"]["out_conv.weight"])


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    """12 steps in one go vs 4 steps, a new Trainer from the checkpoint, 8 more: the same bits everywhere."""
    a = Trainer(train_config(tmp_path / "a", steps=12), MODEL, SCHEDULE, pack=shapes_pack())
    run(a)

    first = Trainer(train_config(tmp_path / "b", steps=4), MODEL, SCHEDULE, pack=shapes_pack())
    events = [(p.event, p.step) for p in run(first) if p.event != "log"]
    assert events == [("expected", 0), ("started", 1), ("checkpoint", 4), ("done", 4)]
    assert load_checkpoint(tmp_path / "b" / CHECKPOINT_NAME)["step"] == 4
    del first

    b = Trainer(train_config(tmp_path / "b", steps=12), None, None, pack=shapes_pack(), resume=True)
    assert b.step == 4 and b.diffusion_config == a.diffusion_config  # model and schedule come from the checkpoint
    run(b)
    assert b.step == 12
    assert_same_state(a.state(), b.state())
    assert_same_state(load_checkpoint(tmp_path / "a" / CHECKPOINT_NAME), load_checkpoint(tmp_path / "b" / CHECKPOINT_NAME))
    # the resumed run's metrics continue the first one's
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8, 12]


def test_sigint_stops_at_the_next_step_with_a_checkpoint_and_resumes_exactly(tmp_path):
    """Ctrl-C mid-run (cosine lr, so the step count matters): checkpoint at the stop, resume → same bits."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed from the main thread")
    a = Trainer(train_config(tmp_path / "a", lr_decay="cosine", warmup_steps=3), MODEL, SCHEDULE, pack=shapes_pack())
    run(a)

    handler_before = signal.getsignal(signal.SIGINT)
    b = Trainer(train_config(tmp_path / "b", lr_decay="cosine", warmup_steps=3), MODEL, SCHEDULE, pack=shapes_pack())
    events = []
    for p in b.run():
        events.append((p.event, p.step))
        if p.event == "checkpoint" and p.step == 4:
            os.kill(os.getpid(), signal.SIGINT)  # caught by the trainer: no KeyboardInterrupt
    assert events[-2:] == [("checkpoint", 5), ("stopped", 5)]
    assert signal.getsignal(signal.SIGINT) is handler_before  # the handler is put back
    assert load_checkpoint(tmp_path / "b" / CHECKPOINT_NAME)["step"] == 5

    resumed = Trainer(train_config(tmp_path / "b", lr_decay="cosine", warmup_steps=3), None, None,
                      pack=shapes_pack(), resume=True)
    run(resumed)
    assert_same_state(a.state(), resumed.state())


def test_the_time_limit_leaves_room_for_the_next_step():
    cfg = config.TrainConfig(max_minutes=1.0)
    assert not config.out_of_time(cfg, 50.0, 9.0) and config.out_of_time(cfg, 50.0, 11.0)
    assert not config.out_of_time(cfg, 59.0, None) and config.out_of_time(cfg, 61.0, None)  # speed not known
    assert not config.out_of_time(dataclasses.replace(cfg, max_minutes=0), 1e9, 1e9)  # no limit


def test_time_limit_stops_with_a_checkpoint_before_the_step_that_would_pass_it(tmp_path, monkeypatch):
    asked = []  # (seconds used, the next step's expected seconds) at each check
    monkeypatch.setattr(training, "out_of_time", lambda cfg, used, step_s: asked.append((used, step_s)) or
                        len(asked) > 3)  # room for three steps
    trainer = Trainer(train_config(tmp_path, steps=1000, max_minutes=1), MODEL, SCHEDULE, pack=shapes_pack())
    events = [(p.event, p.step) for p in run(trainer) if p.event != "log"]
    assert events == [("expected", 0), ("started", 1), ("checkpoint", 3), ("stopped", 3)]
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == 3
    # start-up counts, and each check weighs the next step: timed before the first, then the last one's
    assert all(used > 0 and step_s > 0 for used, step_s in asked) and asked == sorted(asked, key=lambda a: a[0])


def test_a_time_limit_without_room_for_one_step_stops_before_it_and_says_why(tmp_path):
    trainer = Trainer(train_config(tmp_path, steps=1000, max_minutes=1e-9), MODEL, SCHEDULE, pack=shapes_pack())
    with pytest.raises(TrainingError, match=r"--max-minutes 1e-09 leaves no time for one step: start-up took "
                                            r"\d+ s and a step of 8 images should take about [0-9.]+ s here"):
        run(trainer)
    assert trainer.step == 0 and not (tmp_path / CHECKPOINT_NAME).exists()


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(TrainingError, match="no checkpoint at"):
        Trainer(train_config(tmp_path), None, None, pack=shapes_pack(), resume=True)


def test_a_batch_that_does_not_divide_among_the_processes_is_a_clear_error():
    assert distributed.per_rank_batch(128, 4) == 32
    with pytest.raises(TrainingError, match="--batch-size 130 does not divide evenly among 4 processes; "
                                            "use a multiple of 4"):
        distributed.per_rank_batch(130, 4)


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(TrainingError, match="not a readable training checkpoint"):
        Trainer(train_config(tmp_path), None, None, pack=shapes_pack(), resume=True)


def test_stale_temp_checkpoints_are_removed_and_never_read(tmp_path):
    run(Trainer(train_config(tmp_path, steps=4), MODEL, SCHEDULE, pack=shapes_pack()))
    dead = tmp_path / f"{CHECKPOINT_NAME}.tmp999999999"  # no such process
    dead.write_bytes(b"half a checkpoint")
    live = tmp_path / f"{CHECKPOINT_NAME}.tmp1"  # pid 1 is always alive: maybe another run writing right now
    live.write_bytes(b"being written")

    trainer = Trainer(train_config(tmp_path, steps=8), None, None, pack=shapes_pack(), resume=True)
    assert trainer.step == 4  # read from checkpoint.pt, not from a temp file
    assert not dead.exists() and live.exists()
    run(trainer)
    assert sorted(p.name for p in tmp_path.glob(CHECKPOINT_NAME + "*")) == [CHECKPOINT_NAME, live.name]


def test_resume_drops_metrics_logged_after_the_checkpoint(tmp_path):
    """A killed run may have logged past its last checkpoint (and cut a line short); resuming rewrites from there."""
    run(Trainer(train_config(tmp_path, steps=4), MODEL, SCHEDULE, pack=shapes_pack()))
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 6, "loss": 0.5}) + "\n" + '{"step": 8, "lo')
    run(Trainer(train_config(tmp_path, steps=8), None, None, pack=shapes_pack(), resume=True))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8]


# -- faults -------------------------------------------------------------------------------------------------------

def state_of_a_clean_run(out: Path, steps: int) -> dict:
    """The checkpoint of the same tiny run stopped after ``steps`` steps, with nothing going wrong."""
    run(Trainer(train_config(out, steps=steps), MODEL, SCHEDULE, pack=shapes_pack()))
    return load_checkpoint(out / CHECKPOINT_NAME)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """Fails if the checkpoint kept is not exactly step 4's state (e.g. one written after the loss went bad)."""
    trainer = Trainer(train_config(tmp_path, steps=12), MODEL, SCHEDULE, pack=shapes_pack())
    real_loss = training.diffusion_loss

    def loss_going_nan(*args, **kwargs):
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if trainer.step >= 6 else loss

    monkeypatch.setattr(training, "diffusion_loss", loss_going_nan)
    with pytest.raises(TrainingError) as e:
        run(trainer)
    message = str(e.value)
    assert "loss became nan at step 8" in message
    assert "last good checkpoint (step 4)" in message and str(tmp_path / CHECKPOINT_NAME) in message
    # the kept checkpoint is step 4 of a run that never saw a NaN, bit for bit
    monkeypatch.undo()
    assert_same_state(load_checkpoint(tmp_path / CHECKPOINT_NAME), state_of_a_clean_run(tmp_path / "clean", steps=4))


def test_nan_before_any_checkpoint_says_none_was_written(tmp_path, monkeypatch):
    trainer = Trainer(train_config(tmp_path, steps=12), MODEL, SCHEDULE, pack=shapes_pack())
    real_loss = training.diffusion_loss
    monkeypatch.setattr(training, "diffusion_loss", lambda *a, **k: real_loss(*a, **k) * float("nan"))
    with pytest.raises(TrainingError, match="No checkpoint of this run had been written yet"):
        run(trainer)
    assert not (tmp_path / CHECKPOINT_NAME).exists()


def test_non_finite_weights_never_overwrite_the_checkpoint(tmp_path):
    """A NaN gradient on the last step of a window leaves the logged loss finite; the save must still refuse."""
    trainer = Trainer(train_config(tmp_path, steps=12), MODEL, SCHEDULE, pack=shapes_pack())
    first = next(iter(trainer.model.parameters()))
    first.register_hook(lambda g: g * float("nan") if trainer.step == 7 else g)  # the step that reaches 8
    with pytest.raises(TrainingError, match="non-finite .* by step 8"):
        run(trainer)
    assert_same_state(load_checkpoint(tmp_path / CHECKPOINT_NAME), state_of_a_clean_run(tmp_path / "clean", steps=4))


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    trainer = Trainer(train_config(tmp_path, steps=12), MODEL, SCHEDULE, pack=shapes_pack())
    real_save, calls = torch.save, []

    def save_then_disk_full(obj, f, *args, **kwargs):
        calls.append(obj["step"])
        if len(calls) == 2:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_disk_full)
    with pytest.raises(TrainingError, match="could not write the checkpoint .*No space left"):
        run(trainer)
    assert calls == [4, 8]
    assert [p.name for p in tmp_path.glob(CHECKPOINT_NAME + "*")] == [CHECKPOINT_NAME]  # no temp file left
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == 4


def test_unwritable_run_folder_fails_before_loading_data(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cfg = train_config(blocker / "run", data=str(tmp_path / "no-such-data"))  # data would fail second
    with pytest.raises(TrainingError, match="cannot write the run folder"):
        Trainer(cfg, MODEL, SCHEDULE)


def test_too_little_free_space_fails_before_training(tmp_path, monkeypatch):
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real_usage(p)._replace(free=1_000_000))
    with pytest.raises(TrainingError, match=r"only 1\.0 MB free, but .* need about"):
        Trainer(train_config(tmp_path), MODEL, SCHEDULE, pack=shapes_pack())
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / CHECKPOINT_NAME).exists()


def test_data_of_the_wrong_size_is_a_clear_error(tmp_path):
    pack = shapes_pack()
    pack.images = pack.images[:, :, :8, :8]
    with pytest.raises(TrainingError, match=r"data is \(3, 8, 8\) but the model expects \(3, 16, 16\)"):
        Trainer(train_config(tmp_path), MODEL, SCHEDULE, pack=pack)


# -- memory layout ------------------------------------------------------------------------------------------------

SEED_MODEL = SeedUNetConfig(image_size=16, down_channels=(32, 64), dropout=0.0)


@pytest.mark.parametrize("seed_net, device, expected", [
    (False, "cpu", True), (True, "cpu", False), (False, "cuda", False), (True, "cuda", False)])
def test_both_networks_train_in_nchw_on_cuda_and_the_ddpm_unet_in_channels_last_on_the_cpu(seed_net, device, expected):
    assert default_channels_last(seed_net, torch.device(device)) is expected


@pytest.mark.parametrize("net, device, channels_last, expected", [
    (MODEL, "cuda", False, True),  # the ddpm U-Net on CUDA: channels_last inside the compiled step
    (SEED_MODEL, "cuda", False, False), (MODEL, "cuda", True, False), (MODEL, "cpu", False, False),
])
def test_the_ddpm_unet_compiles_its_convolutions_channels_last_on_cuda(monkeypatch, net, device, channels_last,
                                                                        expected):
    model = build_model(net)
    assert network.convs_channels_last_inside(model, torch.device(device), channels_last) is expected
    asked = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: asked.append(kwargs) or fn)
    cfg = train_config(Path("unused"), compile_mode="reduce-overhead")
    network.compiled(len, cfg, expected)
    wanted = {"options": {"triton.cudagraphs": True, "force_layout_optimization": True}} if expected else \
        {"mode": "reduce-overhead"}
    assert asked == [wanted]


@pytest.mark.parametrize("model, option, expected", [
    (MODEL, None, True), (SEED_MODEL, None, False),  # the default (on this CPU) depends on the network
    (MODEL, False, False), (SEED_MODEL, True, True),  # an explicit choice wins
])
def test_memory_layout_follows_the_network_unless_chosen(tmp_path, model, option, expected):
    trainer = Trainer(train_config(tmp_path, steps=2, channels_last=option), model, SCHEDULE, pack=shapes_pack())
    assert trainer.channels_last is expected
    first_conv = next(p for p in trainer.model.parameters() if p.dim() == 4)  # (O, 3, k, k), k > 1
    assert first_conv.is_contiguous(memory_format=torch.channels_last) is expected
    x0, _, _ = trainer._batch()
    assert x0.is_contiguous(memory_format=torch.channels_last) is expected
    run(trainer)
    assert trainer.step == 2


def test_seed_net_keeps_the_literal_upsampling_on_cpu(tmp_path):
    trainer = Trainer(train_config(tmp_path, steps=1), SEED_MODEL, SCHEDULE, pack=shapes_pack())
    assert trainer.model.subpixel is False  # the transposed-conv form is for CUDA; a CPU runs the literal ops faster


# -- export -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_export_loads_through_the_core_loader_and_samples(tmp_path, dtype):
    trainer = Trainer(train_config(tmp_path / "run", steps=4, export_dtype=dtype), MODEL, SCHEDULE, pack=shapes_pack())
    run(trainer)
    folder = trainer.export(tmp_path / "export", hardware="test CPU").folder

    with safe_open(folder / "model.safetensors", "pt") as weights:  # the size it was trained at, checked on load
        assert weights.metadata()["image_size"] == str(MODEL.image_size)
    loaded = load_pretrained(folder)
    assert loaded.config.model == MODEL and loaded.config.schedule == SCHEDULE
    assert loaded.config.training["steps"] == 4 and loaded.config.training["images_seen"] == 32
    assert loaded.config.training["weights"] == "ema" and loaded.config.training["hardware"] == "test CPU"
    tolerance = 0 if dtype == "fp32" else 1e-3
    for name, value in trainer.ema.model.state_dict().items():  # the EMA weights, not the raw ones
        torch.testing.assert_close(loaded.model.state_dict()[name], value, rtol=tolerance, atol=tolerance)

    # the loaded network samples as the trainer's EMA network does (same seed, same images up to the export dtype)
    def ddim_images(model) -> torch.Tensor:
        return samplers.final(samplers.ddim(model, loaded.schedule, (2, 3, 16, 16), steps=3,
                                            generator=torch.Generator().manual_seed(0)))

    torch.testing.assert_close(ddim_images(loaded.model), ddim_images(trainer.ema.model.eval()),
                               rtol=0, atol=1e-5 if dtype == "fp32" else 2e-2)

    # the same export straight from the checkpoint file
    again = export_checkpoint(load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME), tmp_path / "again", dtype)
    for name, value in load_pretrained(again).model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[name])


def test_init_from_an_export_starts_from_its_weights_and_counts_on(tmp_path):
    first = Trainer(train_config(tmp_path / "first", steps=4), MODEL, SCHEDULE, pack=shapes_pack())
    run(first)
    folder = first.export(tmp_path / "export").folder
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"sampling": {"ddim_eta": 0.5, "why": "a test"}}))

    # model and schedule come from the folder, whatever is passed in; so do its sampling defaults, to the export
    second = Trainer(train_config(tmp_path / "second", steps=4, init_from=str(folder)), None, None, pack=shapes_pack())
    exported = load_pretrained(folder).model.state_dict()
    for name, value in exported.items():
        assert torch.equal(second.model.state_dict()[name], value)
        assert torch.equal(second.ema.model.state_dict()[name], value)
    assert second.diffusion_config.model == MODEL and second.diffusion_config.schedule == SCHEDULE
    run(second)
    assert second.images_seen == 32 + 32  # the export's images plus this run's 4 steps × 8
    again = second.export(tmp_path / "export2").folder
    assert load_pretrained(again).config.sampling == SamplingDefaults(0.5, "a test")


def test_init_from_a_broken_folder_is_a_clear_error(tmp_path):
    with pytest.raises(TrainingError, match="--init-from: .*no such model folder"):
        Trainer(train_config(tmp_path / "run", init_from=str(tmp_path / "missing")), MODEL, SCHEDULE,
                pack=shapes_pack())
