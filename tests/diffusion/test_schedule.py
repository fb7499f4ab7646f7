"""The schedule tables and the forward process, checked against values and identities derived independently."""

import math

import numpy as np
import pytest
import torch

from ddpm_app.diffusion.schedule import Schedule, ScheduleConfig, extract

T = 1000


@pytest.fixture(scope="module")
def linear() -> Schedule:
    return Schedule(ScheduleConfig(kind="linear", timesteps=T))


def reference_tables(betas: np.ndarray) -> dict[str, np.ndarray]:
    """The schedule quantities recomputed in float64 with numpy, straight from the definitions."""
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
    return {
        "betas": betas, "alphas": alphas, "alphas_cumprod": abar, "alphas_cumprod_prev": abar_prev,
        "sqrt_alphas_cumprod": np.sqrt(abar), "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - abar),
        "sqrt_recip_alphas_cumprod": 1.0 / np.sqrt(abar),
        "sqrt_recipm1_alphas_cumprod": np.sqrt((1.0 - abar) / abar),
        "posterior_variance": posterior_variance,
        "posterior_mean_coef1": np.sqrt(abar_prev) * betas / (1.0 - abar),
        "posterior_mean_coef2": np.sqrt(alphas) * (1.0 - abar_prev) / (1.0 - abar),
        "sqrt_recip_alphas": 1.0 / np.sqrt(alphas),
        "eps_coef": betas / np.sqrt(1.0 - abar),
        "snr": abar / (1.0 - abar),
    }


# --- exact values -------------------------------------------------------------------------------------

def test_linear_schedule_values(linear):
    assert linear.betas[0].item() == pytest.approx(1e-4, rel=1e-6)
    assert linear.betas[-1].item() == pytest.approx(0.02, rel=1e-6)
    assert linear.alphas_cumprod[0].item() == pytest.approx(1 - 1e-4, rel=1e-7)
    # ᾱ_T = ∏(1 − β_t) over the 1000 steps
    assert linear.alphas_cumprod[-1].item() == pytest.approx(4.0358e-5, rel=1e-4)
    assert linear.alphas_cumprod_prev[0].item() == 1.0
    assert torch.all(linear.alphas_cumprod[1:] < linear.alphas_cumprod[:-1])


def test_first_posterior_step_has_zero_variance_and_finite_log(linear):
    # σ_q(t=1)² = β₁(1 − ᾱ₀)/(1 − ᾱ₁) with ᾱ₀ = 1: the last reverse step is deterministic
    assert linear.posterior_variance[0].item() == 0.0
    assert torch.all(linear.posterior_variance[1:] > 0)
    assert torch.isfinite(linear.posterior_log_variance_clipped).all()
    assert linear.posterior_log_variance_clipped[0] == linear.posterior_log_variance_clipped[1]
    assert torch.allclose(linear.posterior_log_variance_clipped[1:], linear.posterior_variance[1:].log())


def test_cosine_schedule_starts_near_one_and_clips_beta():
    cosine = Schedule(ScheduleConfig(kind="cosine", timesteps=T))
    assert 0.9999 < cosine.alphas_cumprod[0].item() < 1.0
    # ᾱ(T) = cos²(π/2) = 0 would make β_T = 1; it is clipped at max_beta
    assert cosine.float64.betas[-1].item() == 0.999
    assert cosine.float64.betas.max().item() <= 0.999
    clipped = Schedule(ScheduleConfig(kind="cosine", timesteps=T, max_beta=0.5)).float64.betas
    assert clipped.max().item() == 0.5
    assert (clipped == 0.5).sum() > 1
    # below the clip the betas follow 1 − ᾱ(t)/ᾱ(t−1) with ᾱ(t) = cos²((t/T + s)/(1 + s)·π/2)
    s = 0.008
    f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * np.pi / 2) ** 2
    np.testing.assert_allclose(cosine.float64.betas[:-1].numpy(), (1 - f[1:] / f[:-1])[:-1], rtol=1e-12)


@pytest.mark.parametrize("config", [ScheduleConfig(kind="linear"), ScheduleConfig(kind="linear", timesteps=20),
                                    ScheduleConfig(kind="cosine")], ids=["linear", "linear-20", "cosine"])
def test_tables_are_float32_rounded_from_float64(config):
    schedule = Schedule(config)
    reference = reference_tables(schedule.float64.betas.numpy())
    for name, expected in reference.items():
        table64 = getattr(schedule.float64, name)
        table32 = getattr(schedule, name)
        assert table64.dtype == torch.float64 and table32.dtype == torch.float32, name
        np.testing.assert_allclose(table64.numpy(), expected, rtol=1e-12, atol=1e-300, err_msg=name)
        # float32 rounding of a float64 value is within half an ulp (2⁻²⁴ ≈ 6e-8) of it; computing in
        # float32 instead loses much more (√(1/ᾱ − 1) at t = 0 is off by ≈ 6e-5 from the cancellation)
        np.testing.assert_allclose(table32.double().numpy(), expected, rtol=1.5e-7, atol=1e-30, err_msg=name)


@pytest.mark.parametrize("variance", ["posterior", "beta"])
def test_reverse_variance_is_the_posteriors_or_beta_with_the_decoders_width_at_t0(linear, variance):
    """σ_t² = β̃_t or β_t for t ≥ 1, and β̃_1 at t = 0 for both, in either precision: the one rule DDPM's sampler and
    the bound share."""
    ref = reference_tables(np.linspace(1e-4, 0.02, T))
    expected = (ref["posterior_variance"] if variance == "posterior" else ref["betas"]).copy()
    expected[0] = ref["posterior_variance"][1]
    np.testing.assert_allclose(linear.float64.reverse_variance(variance).numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(linear.reverse_variance(variance).double().numpy(), expected, rtol=1.5e-7)
    assert linear.reverse_variance(variance).dtype == torch.float32
    with pytest.raises(ValueError, match="variance must be one of posterior, beta"):
        linear.reverse_variance("learned")  # type: ignore[arg-type]


def test_snr_db(linear):
    assert linear.snr_db(0) == pytest.approx(10 * math.log10((1 - 1e-4) / 1e-4), rel=1e-9)


# --- the forward process --------------------------------------------------------------------------------

def test_extract_indexes_per_sample_and_broadcasts(linear):
    t = torch.tensor([0, 999, 500])
    out = extract(linear.betas, t, (3, 2, 4, 4))
    assert out.shape == (3, 1, 1, 1)
    assert torch.equal(out.flatten(), linear.betas[t])


def test_q_sample_is_the_closed_form(linear):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, 2, 2, generator=g), torch.randn(4, 3, 2, 2, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    abar = torch.tensor(reference_tables(np.linspace(1e-4, 0.02, T))["alphas_cumprod"])[t].view(-1, 1, 1, 1)
    expected = abar.sqrt() * x0.double() + (1 - abar).sqrt() * eps.double()
    torch.testing.assert_close(linear.q_sample(x0, t, eps).double(), expected, rtol=1e-6, atol=1e-6)


def test_predict_x0_and_predict_eps_invert_q_sample(linear):
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.rand(6, 3, 4, 4, generator=g) * 2 - 1, torch.randn(6, 3, 4, 4, generator=g)
    t = torch.tensor([0, 1, 100, 500, 900, 999])
    x_t = linear.q_sample(x0, t, eps)
    # x̂₀ = (x_t − √(1−ᾱ)ε)/√ᾱ amplifies float32 error by up to 1/√ᾱ_T ≈ 157
    torch.testing.assert_close(linear.predict_x0(x_t, t, eps), x0, rtol=0, atol=1e-4)
    torch.testing.assert_close(linear.predict_eps(x_t, t, x0), eps, rtol=0, atol=1e-4)


@pytest.mark.parametrize("t", [0, 9, 99, 499])
def test_chain_of_one_step_transitions_matches_closed_form(linear, t):
    """x_t from t+1 applications of q(x_s | x_{s−1}) (eq. 1) has q(x_t | x₀)'s (eq. 2) mean and variance."""
    n = 40_000
    g = torch.Generator().manual_seed(t)
    x0 = torch.tensor([-1.0, -0.3, 0.5, 1.0]).view(1, 4, 1, 1)
    x = x0.expand(n, 4, 1, 1)
    for s in range(t + 1):
        x = linear.q_step(x, torch.full((n,), s), torch.randn(x.shape, generator=g))
    tt = torch.full((1,), t)
    mean = linear.q_sample(x0, tt, torch.zeros_like(x0))  # √ᾱ_t·x₀
    std = linear.q_sample(torch.zeros_like(x0), tt, torch.ones_like(x0))  # √(1−ᾱ_t)
    # also the numbers themselves, so a wrong q_sample cannot hide behind a matching q_step
    abar = reference_tables(np.linspace(1e-4, 0.02, T))["alphas_cumprod"][t]
    torch.testing.assert_close(mean.double(), math.sqrt(abar) * x0.double(), rtol=1e-6, atol=0)
    torch.testing.assert_close(std.double(), torch.full_like(std, math.sqrt(1 - abar)).double(), rtol=1e-6, atol=0)

    # standard errors of the sample mean and variance of n Gaussian draws
    var = std**2
    se_mean, se_var = (var / n).sqrt(), var * math.sqrt(2 / (n - 1))
    assert torch.all((x.mean(0, keepdim=True) - mean).abs() < 5 * se_mean)
    assert torch.all((x.var(0, keepdim=True) - var).abs() < 5 * se_var)


# --- the posterior q(x_{t−1} | x_t, x₀) ------------------------------------------------------------------

def gaussian_product(x_t: float, x0: float, alpha: float, abar_prev: float) -> tuple[float, float]:
    """Mean and variance of N(x_t; √α·x, 1−α)·N(x; √ᾱ_prev·x₀, 1−ᾱ_prev) as a density in x.

    Found numerically: the log-density is a quadratic a·x² + b·x + c, read off from three points
    (completing the square gives mean −b/2a and variance −1/2a).
    """
    def log_density(x: float) -> float:
        return (-(x_t - math.sqrt(alpha) * x) ** 2 / (2 * (1 - alpha))
                - (x - math.sqrt(abar_prev) * x0) ** 2 / (2 * (1 - abar_prev)))

    f_minus, f_zero, f_plus = log_density(-1.0), log_density(0.0), log_density(1.0)
    a = (f_plus + f_minus - 2 * f_zero) / 2
    b = (f_plus - f_minus) / 2
    return -b / (2 * a), -1 / (2 * a)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_posterior_is_the_product_of_eq1_and_eq2(kind):
    schedule = Schedule(ScheduleConfig(kind=kind, timesteps=T))
    ref = reference_tables(schedule.float64.betas.numpy())
    ts = [1, 2, 10, 250, 500, 998, 999]
    x_t = torch.tensor([0.7, -1.3, 0.2, 2.0, -0.4, 0.1, -0.9]).view(-1, 1, 1, 1)
    x0 = torch.tensor([0.5, -1.0, 1.0, -0.2, 0.9, -0.6, 0.3]).view(-1, 1, 1, 1)
    posterior = schedule.q_posterior(x0, x_t, torch.tensor(ts))
    for i, t in enumerate(ts):
        mean, var = gaussian_product(x_t[i].item(), x0[i].item(), ref["alphas"][t], ref["alphas_cumprod_prev"][t])
        assert posterior.mean[i].item() == pytest.approx(mean, rel=1e-5, abs=1e-6), t
        assert posterior.variance[i].item() == pytest.approx(var, rel=1e-5), t
        assert posterior.log_variance[i].item() == pytest.approx(math.log(var), abs=1e-5), t


def test_posterior_at_first_step_is_x0(linear):
    # with ᾱ₀ = 1 the prior factor N(x; x₀, 0) is a point mass: q(x₀ | x₁, x₀) puts everything on x₀
    x0, x_t = torch.tensor([0.3, -0.8]).view(2, 1, 1, 1), torch.tensor([1.5, 0.2]).view(2, 1, 1, 1)
    posterior = linear.q_posterior(x0, x_t, torch.tensor([0, 0]))
    torch.testing.assert_close(posterior.mean, x0)
    assert torch.all(posterior.variance == 0)


def test_posterior_mean_in_eps_form_matches(linear):
    """μ_q = 1/√α_t·(x_t − β_t/√(1−ᾱ_t)·ε): the seed's sampling formula is the same posterior mean."""
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(5, 3, 2, 2, generator=g), torch.randn(5, 3, 2, 2, generator=g)
    t = torch.tensor([1, 10, 100, 500, 999])
    x_t = linear.q_sample(x0, t, eps)
    eps_form = extract(linear.sqrt_recip_alphas, t, x_t.shape) * (x_t - extract(linear.eps_coef, t, x_t.shape) * eps)
    torch.testing.assert_close(eps_form, linear.q_posterior(x0, x_t, t).mean, rtol=0, atol=1e-5)


# --- validation ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    dict(kind="quadratic"), dict(timesteps=0), dict(timesteps=-5), dict(beta_start=0.0),
    dict(beta_start=0.03, beta_end=0.02), dict(beta_end=1.0), dict(beta_start=-1e-4),
])
def test_bad_configs_raise(kwargs):
    with pytest.raises(ValueError):
        ScheduleConfig(**kwargs)


def test_single_step_schedule_is_valid():
    schedule = Schedule(ScheduleConfig(kind="linear", timesteps=1, beta_start=0.5, beta_end=0.5))
    assert schedule.alphas_cumprod.tolist() == [0.5]
    assert torch.isfinite(schedule.posterior_log_variance_clipped).all()
