"""The variational bound against closed forms: prior, decoder, per-step KL terms, and their sum in bits/dim."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_app.diffusion.likelihood import (
    bits_per_dim,
    bound_timesteps,
    discretized_gaussian_log_likelihood,
    model_log_variance,
    normal_kl,
    prior_bpd,
    variational_bound,
    vb_terms,
)
from ddpm_app.diffusion.schedule import Schedule, ScheduleConfig

LN2 = math.log(2.0)
GRID = torch.arange(256, dtype=torch.float64) / 127.5 - 1.0  # the 256 values of 8-bit data in [−1, 1]


def phi(x: float) -> float:
    """Φ(x), accurate in the lower tail."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def normal_mass(lo: float, hi: float) -> float:
    """Φ(hi) − Φ(lo) from erfc, taking the upper tail as 1 − Φ so that neither tail loses digits."""
    if lo + hi > 0:
        return phi(-lo) - phi(-hi)
    return phi(hi) - phi(lo)


def one_image(seed: int = 0, size: int = 8) -> torch.Tensor:
    """One uint8 image (1, 3, size, size) with some pixels at 0 and 255 (the decoder's open-ended bins)."""
    x = torch.randint(1, 255, (1, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    x[0, 0, 0, :3] = 0
    x[0, 1, 1, :5] = 255
    return x


def to_unit(x: torch.Tensor) -> torch.Tensor:
    return x.double() / 127.5 - 1.0


# --- normal_kl ------------------------------------------------------------------------------------------


def test_normal_kl_matches_torch_distributions_and_is_zero_for_equal_gaussians():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    lv1, lv2 = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(m1, (0.5 * lv1).exp()),
                                                 torch.distributions.Normal(m2, (0.5 * lv2).exp()))
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(normal_kl(m1, lv1, m1, lv1), torch.zeros(50, dtype=torch.float64))


# --- the discretized Gaussian decoder ---------------------------------------------------------------------


@pytest.mark.parametrize("mean, log_scale", [(0.3, -3.0), (-1.2, -1.0), (0.99, -6.0), (5.0, 0.0), (0.0, -9.0),
                                             (-1.0, 2.0)])
def test_decoder_probabilities_sum_to_one_over_the_256_bins(mean, log_scale):
    log_p = discretized_gaussian_log_likelihood(GRID, torch.tensor(mean, dtype=torch.float64),
                                                torch.tensor(log_scale, dtype=torch.float64))
    assert torch.isfinite(log_p).all()
    assert float(log_p.exp().sum()) == pytest.approx(1.0, abs=1e-12)
    # float32 too, within its rounding
    log_p32 = discretized_gaussian_log_likelihood(GRID.float(), torch.tensor(float(mean)), torch.tensor(log_scale))
    assert float(log_p32.double().exp().sum()) == pytest.approx(1.0, abs=1e-5)


def test_decoder_bin_masses_are_normal_cdf_differences():
    mean, sigma = 0.1, 0.05
    log_p = discretized_gaussian_log_likelihood(GRID, torch.tensor(mean, dtype=torch.float64),
                                                torch.tensor(math.log(sigma), dtype=torch.float64))
    for k in (0, 100, 140, 200, 255):
        x = float(GRID[k])
        lo = -math.inf if k == 0 else (x - 1 / 255 - mean) / sigma
        hi = math.inf if k == 255 else (x + 1 / 255 - mean) / sigma
        assert float(log_p[k]) == pytest.approx(math.log(normal_mass(lo, hi)), rel=1e-9)


def test_decoder_is_accurate_far_in_both_tails():
    # Far-away bins have masses like Φ(−200) ≈ e^{−20000}: log-space values, finite, and mirror-symmetric.
    sigma = torch.tensor(math.log(0.01), dtype=torch.float64)
    up = discretized_gaussian_log_likelihood(GRID, torch.tensor(-1.0, dtype=torch.float64), sigma)
    down = discretized_gaussian_log_likelihood(GRID, torch.tensor(1.0, dtype=torch.float64), sigma)
    assert torch.isfinite(up).all() and torch.isfinite(down).all()
    torch.testing.assert_close(up, down.flip(0), rtol=1e-12, atol=0)  # log P(x | μ) = log P(−x | −μ)
    # the last bin [1 − 1/255, ∞) under N(−1, 0.01²): log Φ(−(2 − 1/255)/0.01)
    z = (2 - 1 / 255) / 0.01
    assert float(up[-1]) == pytest.approx(float(torch.special.log_ndtr(torch.tensor(-z, dtype=torch.float64))),
                                          rel=1e-12)
    assert float(up[-1]) < -19000


# --- the prior term -------------------------------------------------------------------------------------


def test_prior_term_matches_the_closed_form_for_the_linear_schedule():
    T, b0, b1 = 1000, 1e-4, 0.02
    abar = math.prod(1.0 - (b0 + (b1 - b0) * t / (T - 1)) for t in range(T))
    x = one_image()
    x0 = to_unit(x)
    # KL(N(√ᾱ·x, 1−ᾱ) ‖ N(0, 1)) = ½·(ᾱ·x² + (1−ᾱ) − 1 − log(1−ᾱ)) per dimension
    per_dim = 0.5 * (abar * x0 ** 2 - abar - math.log(1.0 - abar))
    expected = float(per_dim.mean()) / LN2
    got = prior_bpd(Schedule(ScheduleConfig(timesteps=T, beta_start=b0, beta_end=b1)), x0)
    assert got.shape == (1,)
    assert float(got) == pytest.approx(expected, rel=1e-9)
    assert 0 < float(got) < 1e-4  # ᾱ_T ≈ 4e−5: the prior term is tiny for T = 1000


# --- per-step terms -------------------------------------------------------------------------------------


def oracle_for(x0: torch.Tensor, schedule: Schedule):
    """ε̂ = the true noise, recovered from x_t because x₀ is known (a dataset of one image)."""
    def eps(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return schedule.predict_eps(x_t, t, x0.float().expand_as(x_t))
    return eps


def constant_guess(schedule: Schedule, guess: torch.Tensor):
    """A model whose x̂₀ is the fixed value guess[t] whatever x_t is: ε̂ = (x_t − √ᾱ_t·g_t)/√(1−ᾱ_t)."""
    def eps(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        g = guess[t].float().reshape(-1, 1, 1, 1)
        return schedule.predict_eps(x_t, t, g.expand_as(x_t))
    return eps


def decoder_nll_bits(x: torch.Tensor, mean: float | torch.Tensor, sigma: float) -> float:
    """−mean log P(x | N(mean, σ²)) over an image's pixels, from Φ alone, in bits."""
    values = to_unit(x).flatten().tolist()
    means = torch.as_tensor(mean, dtype=torch.float64).expand(x.shape).flatten().tolist()
    total = 0.0
    for v, m in zip(values, means):
        lo = -math.inf if v < -0.999 else (v - 1 / 255 - m) / sigma
        hi = math.inf if v > 0.999 else (v + 1 / 255 - m) / sigma
        total -= math.log(normal_mass(lo, hi))
    return total / len(values) / LN2


def test_exact_noise_oracle_has_zero_kl_terms_and_the_analytic_bound():
    schedule = Schedule(ScheduleConfig(timesteps=50))
    x = one_image()
    bound = variational_bound(oracle_for(to_unit(x), schedule), schedule, x, batch_size=16,
                              generator=torch.Generator().manual_seed(0))
    assert bound.terms.shape == (1, 50)
    assert float(bound.terms[0, 1:].abs().max()) < 1e-9  # every KL(q ‖ p_θ) vanishes
    sigma = math.sqrt(float(schedule.float64.posterior_variance[1]))  # the decoder's σ_1
    # (rel 1e−6: the network runs in float32, so x̂₀ = x₀ only to float32 precision)
    assert float(bound.decoder) == pytest.approx(decoder_nll_bits(x, to_unit(x), sigma), rel=1e-6)
    assert float(bound.total) == pytest.approx(float(prior_bpd(schedule, to_unit(x)) + bound.decoder), rel=1e-7)
    # with σ_1 ≈ 0.009 the decoder cannot be sharper than ~1.6 bits per 8-bit value, even for a perfect x̂₀
    assert 1.0 < float(bound.decoder) < 2.0


def test_oracle_with_beta_variance_pays_exactly_the_variance_mismatch():
    schedule = Schedule(ScheduleConfig(timesteps=30))
    x = one_image(1)
    bound = variational_bound(oracle_for(to_unit(x), schedule), schedule, x, variance="beta")
    beta, post = schedule.float64.betas, schedule.float64.posterior_variance
    # KL(N(μ, σ_q²) ‖ N(μ, β)) = ½·(log(β/σ_q²) + σ_q²/β − 1), the same for every pixel
    expected = 0.5 * ((beta / post).log() + post / beta - 1.0) / LN2
    torch.testing.assert_close(bound.terms[0, 1:], expected[1:], rtol=1e-9, atol=1e-12)


def test_constant_guess_model_gives_the_closed_form_terms_at_any_batch_size():
    """x̂₀ = g_t regardless of noise, so L_t = c₁(t)²·mean((x₀ − g_t)²)/(2σ_t²) exactly, for every image."""
    # a wide decoder (σ_1 ≈ 0.11) keeps every pixel's bin within reach of the erfc reference
    schedule = Schedule(ScheduleConfig(timesteps=20, beta_start=0.02, beta_end=0.3))
    guess = torch.linspace(-0.4, 0.3, 20, dtype=torch.float64)
    model = constant_guess(schedule, guess)
    images = torch.cat([one_image(s, 4) for s in range(3)])  # (3, 3, 4, 4)
    x0 = to_unit(images)
    f64 = schedule.float64
    c1, var = f64.posterior_mean_coef1, f64.posterior_variance
    sq = ((x0[:, None] - guess[None, :, None, None, None]) ** 2).mean(dim=(2, 3, 4))  # (3, T)
    expected = c1[None, :] ** 2 * sq / (2 * var[None, :]) / LN2
    sigma = math.sqrt(float(var[1]))
    expected[:, 0] = torch.tensor([decoder_nll_bits(images[i:i + 1], float(guess[0]), sigma) for i in range(3)])

    # rtol 1e−5: the network sees x_t in float32, so x̂₀ = g_t holds to float32 precision only
    for batch_size in (1, 7, 1000):  # one pair per call, mixed blocks, everything in one call
        bound = variational_bound(model, schedule, images, batch_size=batch_size,
                                  generator=torch.Generator().manual_seed(batch_size))
        torch.testing.assert_close(bound.terms, expected, rtol=1e-5, atol=0)
        torch.testing.assert_close(bound.total, prior_bpd(schedule, x0) + expected.sum(dim=1), rtol=1e-5, atol=0)


def test_kl_term_is_the_ddpm_epsilon_weighting():
    """With σ_t² = σ_q(t)²: L_t = β_t²/(2σ_t²·α_t·(1−ᾱ_t))·mean‖ε − ε̂‖²  (DDPM eq. 12), for any ε̂."""
    schedule = Schedule(ScheduleConfig(timesteps=40))
    g = torch.Generator().manual_seed(3)
    x0 = to_unit(one_image(2)).repeat(6, 1, 1, 1)
    t = torch.tensor([1, 5, 12, 20, 33, 39])
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    model = lambda x_t, tt: 0.7 * x_t - 0.1  # noqa: E731 - any ε̂ that depends on x_t
    got = vb_terms(model, schedule, x0, t, noise, variance="posterior")
    f64 = schedule.float64
    x_t = f64.sqrt_alphas_cumprod[t].reshape(-1, 1, 1, 1) * x0 + \
        f64.sqrt_one_minus_alphas_cumprod[t].reshape(-1, 1, 1, 1) * noise
    err = ((noise - model(x_t.float(), t).double()) ** 2).mean(dim=(1, 2, 3))
    weight = f64.betas[t] ** 2 / (2 * f64.posterior_variance[t] * f64.alphas[t] * (1 - f64.alphas_cumprod[t]))
    torch.testing.assert_close(got, weight * err / LN2, rtol=1e-5, atol=0)


def test_model_log_variance_tables():
    schedule = Schedule(ScheduleConfig(timesteps=10))
    f64 = schedule.float64
    torch.testing.assert_close(model_log_variance(schedule, "posterior"), f64.posterior_log_variance_clipped)
    beta = model_log_variance(schedule, "beta")
    torch.testing.assert_close(beta[1:], f64.betas[1:].log())
    assert float(beta[0]) == pytest.approx(math.log(float(f64.posterior_variance[1])))
    with pytest.raises(ValueError):
        model_log_variance(schedule, "learned")  # type: ignore[arg-type]


# --- timesteps and the dataset-level number -------------------------------------------------------------


def test_bound_timesteps_all_or_a_stratified_unbiased_subset():
    ts, w = bound_timesteps(50)
    assert ts.tolist() == list(range(50)) and torch.equal(w, torch.ones(50, dtype=torch.float64))
    ts, w = bound_timesteps(1000, 11, torch.Generator().manual_seed(0))
    assert len(ts) == 11 and int(ts[0]) == 0 and len(set(ts.tolist())) == 11
    assert float(w[0]) == 1.0 and float(w.sum()) == 1000.0  # the decoder plus 999 steps in 10 strata
    # unbiased: E[Σ_k w_k·f(t_k)] = Σ_t f(t) for any f
    f = torch.linspace(0, 1, 1000, dtype=torch.float64) ** 3
    g = torch.Generator().manual_seed(1)
    draws = []
    for _ in range(20_000):
        ts, w = bound_timesteps(1000, 6, g)
        draws.append(float((f[ts[1:]] * w[1:]).sum()))
    # the wide last stratum makes single draws of this f spread (s.e. of the mean ≈ 0.6 %): 3.4 standard errors
    assert sum(draws) / len(draws) == pytest.approx(float(f[1:].sum()), rel=2e-2)
    with pytest.raises(ValueError):
        bound_timesteps(100, 1)


def test_the_stratified_estimate_of_a_steep_sum_is_steady_from_draw_to_draw():
    """The per-step terms fall by orders of magnitude over the first steps (like 1/t²). Equal strata give the
    stratum 1…21 one draw weighted 21, so the estimate jumps with the draw; geometric strata evaluate those steps
    one by one and keep every draw within a few per cent of the sum."""
    f = torch.cat([torch.zeros(1, dtype=torch.float64), 1 / torch.arange(1, 1000, dtype=torch.float64) ** 2])
    g = torch.Generator().manual_seed(2)
    draws = torch.tensor([float((f[ts[1:]] * w[1:]).sum()) for ts, w in (bound_timesteps(1000, 50, g)
                                                                         for _ in range(500))])
    truth = float(f.sum())
    assert float(draws.mean()) == pytest.approx(truth, rel=2e-3)  # still unbiased
    assert float((draws - truth).abs().max()) < 0.02 * truth  # equal strata: off by up to 20× the sum
    ts, w = bound_timesteps(1000, 50, g)
    assert ts[:12].tolist() == list(range(12)) and w[:12].tolist() == [1.0] * 12  # the first steps one by one


def test_bits_per_dim_over_a_set_exact_and_estimated():
    schedule = Schedule(ScheduleConfig(timesteps=20, beta_start=1e-3, beta_end=0.3))
    guess = torch.zeros(20, dtype=torch.float64)
    images = torch.cat([one_image(s, 4) for s in range(5)])
    exact = bits_per_dim(constant_guess(schedule, guess), schedule, images, batch_size=8,
                         generator=torch.Generator().manual_seed(0))
    assert exact.exact and exact.timesteps_evaluated == 20 and exact.num_images == 5
    assert exact.label == "bits/dim"
    assert exact.total == pytest.approx(exact.prior + exact.decoder + exact.diffusion, rel=1e-12)
    assert [t for t, _, _ in exact.per_timestep] == list(range(20))
    assert all(w == 1.0 for _, w, _ in exact.per_timestep)
    estimate = bits_per_dim(constant_guess(schedule, guess), schedule, images, num_timesteps=6,
                            generator=torch.Generator().manual_seed(0))
    assert not estimate.exact and estimate.timesteps_evaluated == 6 and "estimate" in estimate.label
    assert estimate.prior == pytest.approx(exact.prior) and estimate.decoder == pytest.approx(exact.decoder)
    # the constant-guess model's terms do not depend on the noise: the estimate is the weighted sum of exact terms
    exact_terms = {t: v for t, _, v in exact.per_timestep}
    assert sum(w for _, w, _ in estimate.per_timestep[1:]) == 19
    assert estimate.diffusion == pytest.approx(sum(w * exact_terms[t] for t, w, _ in estimate.per_timestep[1:]),
                                               rel=1e-9)


def test_bits_per_dim_of_a_real_network_is_finite_and_reproducible(tiny_model, tiny_schedule):
    images = torch.cat([one_image(s, 16) for s in range(3)])
    run = lambda: bits_per_dim(tiny_model, tiny_schedule, images, batch_size=16,  # noqa: E731
                               generator=torch.Generator().manual_seed(5))
    a, b = run(), run()
    assert math.isfinite(a.total) and a.total > 0 and a.stderr > 0
    assert a.total == b.total  # same generator seed, same noise, same number
