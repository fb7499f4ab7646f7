"""The 2-D lab's library (:mod:`ddpm_app.lab`): the forward process and the loss against closed forms, the
distance against known values, the data checks, and a short seeded training run that must beat N(0, I)."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_app.checks import InvalidValue
from ddpm_app.diffusion.samplers import ddim, ddpm, final
from ddpm_app.diffusion.schedule import Schedule, ScheduleConfig
from ddpm_app.lab import (
    DATASETS,
    PointMLP,
    PointMLPConfig,
    Trainer,
    TrainSettings,
    dataset,
    energy_distance,
    from_csv,
    from_drawing,
    noised_cloud,
    predict_field,
    q_gaussian,
)
from ddpm_app.lab.points import MAX_POINTS, parse_points


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", DATASETS)
def test_data_sets_fill_the_square_and_are_seeded(name):
    a, b = dataset(name, 300, gen(1)), dataset(name, 300, gen(1))
    assert a.train.shape == (300, 2) and a.heldout.shape == (300, 2)
    assert torch.equal(a.train, b.train)
    both = torch.cat([a.train, a.heldout])
    assert both.abs().max() == pytest.approx(1.0, abs=1e-5)  # the longer side spans −1…1
    assert not torch.equal(dataset(name, 300, gen(2)).train, a.train)


def test_q_gaussian_is_eq_4():
    s = Schedule(ScheduleConfig())
    x0 = torch.tensor([0.5, -0.25])
    for t in (0, 10, 500, 999):
        abar = math.prod(1 - (1e-4 + (0.02 - 1e-4) * k / 999) for k in range(t + 1))
        g = q_gaussian(s, x0, t)
        assert g.mean.tolist() == pytest.approx([0.5 * abar ** 0.5, -0.25 * abar ** 0.5], rel=1e-9)
        assert g.std == pytest.approx((1 - abar) ** 0.5, rel=1e-9)


def test_noised_cloud_has_the_closed_form_moments():
    """x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε: mean √ᾱ·E[x₀], covariance ᾱ·Cov(x₀) + (1−ᾱ)·I; at T it is N(0, I)."""
    s = Schedule(ScheduleConfig())
    x0 = dataset("two moons", 20000, gen(3)).train.double()
    for t in (100, 300, 999):
        abar = float(s.float64.alphas_cumprod[t])
        xt = noised_cloud(s, x0.float(), t, torch.randn(x0.shape, generator=gen(t))).double()
        assert xt.mean(0).tolist() == pytest.approx((abar ** 0.5 * x0.mean(0)).tolist(), abs=0.02)
        expected = abar * torch.cov(x0.T) + (1 - abar) * torch.eye(2, dtype=torch.float64)
        assert torch.allclose(torch.cov(xt.T), expected, atol=0.03)


def test_energy_distance_known_values():
    a, b = torch.zeros(50, 2), torch.tensor([[3.0, 4.0]]).repeat(40, 1)
    assert energy_distance(a, b) == pytest.approx(2 * 5.0)  # two point masses: 2‖a − b‖
    x = torch.randn(3000, 2, generator=gen(0))
    y = torch.randn(2000, 2, generator=gen(1))
    assert abs(energy_distance(x, y)) < 0.01  # the same distribution, different sizes
    assert energy_distance(x, y + torch.tensor([1.0, 0.0])) > 0.3


class GaussianOracle(torch.nn.Module):
    """The best ε-predictor for data N(0, s²I): ε̂ = √(1−ᾱ_t)·x_t / (ᾱ_t·s² + 1 − ᾱ_t)."""

    def __init__(self, schedule: Schedule, s: float):
        super().__init__()
        self.abar, self.s = schedule.float64.alphas_cumprod, s
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        abar = self.abar[t].float()[:, None]
        return (1 - abar).sqrt() * x / (abar * self.s ** 2 + 1 - abar) + 0 * self.dummy


class ZeroModel(GaussianOracle):
    """ε̂ = 0 everywhere."""

    def __init__(self):
        torch.nn.Module.__init__(self)
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        return torch.zeros_like(x) + 0 * self.dummy


def test_training_loss_matches_the_closed_form_for_gaussian_data():
    """With the optimal predictor, E‖ε − ε̂‖²/2 over t ~ U{0…T−1} is E_t[ᾱ_t s²/(ᾱ_t s² + 1 − ᾱ_t)]: the trainer's
    batches draw x₀, t and ε as Algorithm 1 says."""
    s = Schedule(ScheduleConfig(timesteps=100))
    sd = 0.5
    points = sd * torch.randn(50000, 2, generator=gen(5))
    trainer = Trainer(GaussianOracle(s, sd), s, points, TrainSettings(batch_size=4096, seed=1))
    with torch.no_grad():
        measured = sum(float(trainer.batch_loss()) for _ in range(20)) / 20
    abar = s.float64.alphas_cumprod
    expected = float((abar * sd ** 2 / (abar * sd ** 2 + 1 - abar)).mean())
    assert measured == pytest.approx(expected, rel=0.03)
    zero = Trainer(ZeroModel(), s, points, TrainSettings(batch_size=4096))
    with torch.no_grad():
        assert float(zero.batch_loss()) == pytest.approx(1.0, rel=0.05)  # ε̂ = 0 scores E[ε²] = 1


def test_field_is_minus_eps_over_sigma():
    s = Schedule(ScheduleConfig(timesteps=50))
    model = PointMLP(PointMLPConfig(width=16, depth=1)).eval()
    x = torch.randn(7, 2, generator=gen(0))
    f = predict_field(model, s, x, 20)
    sigma = float(s.float64.sqrt_one_minus_alphas_cumprod[20])
    assert torch.allclose(f.score, -f.eps / sigma, rtol=1e-5)


def test_short_training_beats_noise_by_far():
    """A seeded run of 1500 steps on two moons: its samples are far closer to the data than N(0, I) is."""
    torch.manual_seed(0)
    data = dataset("two moons", 1000, gen(0))
    s = Schedule(ScheduleConfig())
    model = PointMLP()
    losses = [r.loss for r in Trainer(model, s, data.train, TrainSettings(seed=0)).run(1500)]
    assert sum(losses[-100:]) / 100 < 0.6 * sum(losses[:20]) / 20
    noise = torch.randn(1000, 2, generator=gen(9))
    d_noise = energy_distance(noise, data.heldout)
    for run in (ddpm(model, s, (1000, 2), generator=gen(7), clip_x0=True),
                ddim(model, s, (1000, 2), steps=50, generator=gen(7), clip_x0=True)):
        d_model = energy_distance(final(run), data.heldout)
        assert d_model < d_noise / 8, (d_model, d_noise)


def test_csv_points_and_their_errors():
    text = "x,y\n" + "\n".join(f"{i},{i % 7}" for i in range(50))
    ps = from_csv(text, gen(0))
    assert len(ps.train) + len(ps.heldout) == 50 and len(ps.heldout) == 10
    assert parse_points("[[0, 1], [2, 3]" + ", [1, 1]" * 8 + "]").shape == (10, 2)
    with pytest.raises(InvalidValue, match="line 3 of the CSV must be two numbers"):
        parse_points("x,y\n1,2\n1,b\n")
    with pytest.raises(InvalidValue, match="line 2 of the CSV holds NaN"):
        parse_points("1,2\nnan,3\n" + "1,1\n" * 10)
    with pytest.raises(InvalidValue, match="point 2 holds NaN"):
        parse_points("[[1, 2], [NaN, 3]]")
    with pytest.raises(InvalidValue, match="too many points"):
        parse_points("\n".join(f"{i},1" for i in range(MAX_POINTS + 1)))
    with pytest.raises(InvalidValue, match="too few points"):
        parse_points("1,2\n3,4")
    with pytest.raises(InvalidValue, match="the same point"):
        parse_points("1,2\n" * 20)


def test_drawing_points_follow_the_ink():
    """Ink is an opaque dark pixel (transparent black, what the sketchpad's empty layer holds, is none); the points
    lie on it with y pointing up: a bar along the bottom and an upright at its right end stay so."""
    import numpy as np
    canvas = np.zeros((100, 200, 4), np.uint8)  # transparent black
    canvas[80:90, 0:200] = (0, 0, 0, 255)  # the bar: 200 × 10 pixels
    canvas[10:80, 190:200] = (0, 0, 0, 255)  # the upright at its right end, up to row 10
    ps = from_drawing(canvas, 2000, gen(0))
    x, y = torch.cat([ps.train, ps.heldout]).T
    assert len(ps.train) == 2000 and float(x.min()) == pytest.approx(-1, abs=0.01) and float(x.max()) <= 1.0
    bar, upright = y[x < 0.85], y[x >= 0.9]
    assert float(bar.max() - bar.min()) <= 0.1 + 1e-6  # 10 pixels of 200 across −1…1
    assert float(upright.max()) == pytest.approx(float(bar.min()) + 0.8, abs=0.01)  # 80 pixels above the bar's foot
    with pytest.raises(InvalidValue, match="blank"):
        from_drawing(np.zeros((100, 200, 4), np.uint8), 200, gen(0))
    with pytest.raises(InvalidValue, match="blank"):
        from_drawing(np.full((100, 200, 4), 255, np.uint8), 200, gen(0))
