"""The reverse chain: DDPM and DDIM driven by a perfect noise oracle and by a tiny random U-Net."""

import math

import pytest
import torch

from ddpm_app.diffusion.samplers import SamplerSettings, Step, ddim, ddim_timesteps, ddpm, final, step_breakdown
from ddpm_app.diffusion.schedule import Schedule, ScheduleConfig

SHAPE = (2, 3, 4, 4)


def known_x0(seed: int = 0) -> torch.Tensor:
    return torch.rand(SHAPE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def oracle(schedule: Schedule, x0: torch.Tensor):
    """ε*(x_t, t) = (x_t − √ᾱ_t·x₀)/√(1−ᾱ_t): the noise that turns the known x₀ into whatever x_t it is shown."""
    return lambda x_t, t: schedule.predict_eps(x_t, t, x0)


# --- what the samplers compute --------------------------------------------------------------------------

def test_ddpm_step_mean_is_the_true_posterior_mean(tiny_schedule):
    """With ε̂ = ε*, x_{t−1} − σ_t·z equals the mean of q(x_{t−1} | x_t, x₀), and the z are the generator's."""
    x0, x_start = known_x0(), torch.randn(SHAPE, generator=torch.Generator().manual_seed(9))
    steps = list(ddpm(oracle(tiny_schedule, x0), tiny_schedule, SHAPE, x_start=x_start,
                      generator=torch.Generator().manual_seed(3)))
    replay = torch.Generator().manual_seed(3)  # the sampler's only randomness: one z ~ N(0, I) per step t > 0
    for step in steps:
        t = torch.full((SHAPE[0],), step.t)
        posterior = tiny_schedule.q_posterior(x0, step.x_t, t)
        z = torch.randn(SHAPE, generator=replay) if step.t > 0 else torch.zeros(SHAPE)
        torch.testing.assert_close(step.x_prev - posterior.variance.sqrt() * z, posterior.mean, rtol=0, atol=1e-5)
        torch.testing.assert_close(step.pred_x0, x0, rtol=0, atol=1e-5)


@pytest.mark.parametrize("steps", [1, 2, 5, 20])
def test_ddim_eta0_with_oracle_recovers_x0(tiny_schedule, steps):
    x0 = known_x0(1)
    out = final(ddim(oracle(tiny_schedule, x0), tiny_schedule, SHAPE, steps=steps, eta=0.0,
                     generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-5)


@pytest.mark.parametrize("steps", [10, 50, 1000])
def test_ddim_eta0_with_oracle_recovers_x0_over_full_schedule(steps):
    schedule = Schedule(ScheduleConfig(timesteps=1000))
    x0 = known_x0(2)
    out = final(ddim(oracle(schedule, x0), schedule, SHAPE, steps=steps, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-4)  # x̂₀ from x_T is scaled by 1/√ᾱ_T ≈ 157


def test_ddpm_with_oracle_ends_at_x0(tiny_schedule):
    x0 = known_x0(3)
    out = final(ddpm(oracle(tiny_schedule, x0), tiny_schedule, SHAPE, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-5)


def test_ddim_eta1_over_every_timestep_is_ddpm(tiny_model, tiny_schedule):
    """η = 1 gives σ² = β_t(1−ᾱ_{t−1})/(1−ᾱ_t) and the DDIM update becomes the posterior step of DDPM."""
    shape, x_start = (2, 3, 16, 16), torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    T = tiny_schedule.timesteps
    a = list(ddpm(tiny_model, tiny_schedule, shape, x_start=x_start, generator=torch.Generator().manual_seed(1)))
    b = list(ddim(tiny_model, tiny_schedule, shape, steps=T, eta=1.0, x_start=x_start,
                  generator=torch.Generator().manual_seed(1)))
    assert [s.t for s in a] == [s.t for s in b]
    for step_a, step_b in zip(a, b):
        torch.testing.assert_close(step_a.x_prev, step_b.x_prev, rtol=1e-4, atol=1e-4)


def test_clip_x0_keeps_prediction_in_range(tiny_schedule):
    def loud(x_t, t):  # a "network" whose x̂₀ leaves [−1, 1]
        return -3.0 * torch.ones_like(x_t)

    for make in (lambda **kw: ddpm(loud, tiny_schedule, SHAPE, **kw),
                 lambda **kw: ddim(loud, tiny_schedule, SHAPE, steps=5, **kw)):
        unclipped = list(make(generator=torch.Generator().manual_seed(0)))
        assert max(s.pred_x0.abs().max().item() for s in unclipped) > 1.5
        clipped = list(make(generator=torch.Generator().manual_seed(0), clip_x0=True))
        for s in clipped:
            assert s.pred_x0.min() >= -1 and s.pred_x0.max() <= 1
            # ε̂ is made consistent with the clipped x̂₀: x_t = √ᾱ·x̂₀ + √(1−ᾱ)·ε̂
            t = torch.full((SHAPE[0],), s.t)
            torch.testing.assert_close(tiny_schedule.q_sample(s.pred_x0, t, s.pred_eps), s.x_t, rtol=0, atol=1e-5)

    # DDPM's step with a clipped x̂₀ is the posterior mean of q(x_{t−1} | x_t, x̂₀) (exact at the noise-free last step)
    last = list(ddpm(loud, tiny_schedule, SHAPE, generator=torch.Generator().manual_seed(0), clip_x0=True))[-1]
    t = torch.full((SHAPE[0],), last.t)
    torch.testing.assert_close(last.x_prev, tiny_schedule.q_posterior(last.pred_x0, last.x_t, t).mean,
                               rtol=1e-4, atol=1e-4)


# --- the steps yielded ----------------------------------------------------------------------------------

def check_step_records(steps: list[Step], expected_ts: list[int]) -> None:
    assert [s.t for s in steps] == expected_ts
    assert [s.t_prev for s in steps] == expected_ts[1:] + [-1]
    assert [s.index for s in steps] == list(range(len(expected_ts)))
    assert all(s.num_steps == len(expected_ts) for s in steps)
    assert [s.is_last for s in steps] == [False] * (len(steps) - 1) + [True]
    for before, after in zip(steps, steps[1:]):
        assert torch.equal(after.x_t, before.x_prev)  # each step continues from the previous step's output


def test_ddpm_yields_every_timestep(tiny_schedule):
    x0 = known_x0()
    steps = list(ddpm(oracle(tiny_schedule, x0), tiny_schedule, SHAPE, generator=torch.Generator().manual_seed(0)))
    T = tiny_schedule.timesteps
    assert len(steps) == T
    check_step_records(steps, list(range(T - 1, -1, -1)))
    assert all(s.x_prev.shape == SHAPE and s.pred_eps.shape == SHAPE for s in steps)


@pytest.mark.parametrize("k", [1, 2, 3, 7, 19, 20])
def test_ddim_yields_k_steps(tiny_schedule, k):
    x0 = known_x0()
    steps = list(ddim(oracle(tiny_schedule, x0), tiny_schedule, SHAPE, steps=k,
                      generator=torch.Generator().manual_seed(0)))
    T = tiny_schedule.timesteps
    assert len(steps) == k
    ts = [s.t for s in steps]
    assert ts[0] == T - 1 and (k == 1 or ts[-1] == 0)
    assert all(a > b for a, b in zip(ts, ts[1:]))
    check_step_records(steps, ts)


@pytest.mark.parametrize("start_t, steps", [(0, 1), (9, 10), (999, 1), (999, 50), (500, 7), (999, 1000)])
def test_ddim_timesteps_are_distinct_descending_and_span_start_to_zero(start_t, steps):
    ts = ddim_timesteps(start_t, steps)
    assert len(ts) == steps and ts[0] == start_t
    assert steps == 1 or ts[-1] == 0
    assert all(a > b for a, b in zip(ts, ts[1:]))


@pytest.mark.parametrize("start_t", [0, 5, 12])
def test_partway_start(tiny_schedule, start_t):
    x0, x_start = known_x0(), torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    eps = oracle(tiny_schedule, x0)
    steps = list(ddpm(eps, tiny_schedule, SHAPE, x_start=x_start, start_t=start_t,
                      generator=torch.Generator().manual_seed(0)))
    assert len(steps) == start_t + 1
    check_step_records(steps, list(range(start_t, -1, -1)))
    assert torch.equal(steps[0].x_t, x_start)
    ddim_steps = list(ddim(eps, tiny_schedule, SHAPE, steps=min(3, start_t + 1), x_start=x_start, start_t=start_t))
    assert ddim_steps[0].t == start_t and torch.equal(ddim_steps[0].x_t, x_start)
    assert ddim_steps[-1].t_prev == -1


@pytest.mark.parametrize("variance", ["posterior", "beta"])  # σ₁ = 0 for the posterior, but not for β
def test_no_noise_on_the_last_ddpm_step(tiny_model, tiny_schedule, variance):
    x_start = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    runs = [list(ddpm(tiny_model, tiny_schedule, x_start.shape, x_start=x_start, start_t=0, variance=variance,
                      generator=torch.Generator().manual_seed(seed))) for seed in (1, 2)]
    assert len(runs[0]) == 1
    assert torch.equal(runs[0][0].x_prev, runs[1][0].x_prev)
    # while at t = 1 different generators give different x_0
    runs = [final(ddpm(tiny_model, tiny_schedule, x_start.shape, x_start=x_start, start_t=1, variance=variance,
                       generator=torch.Generator().manual_seed(seed))) for seed in (1, 2)]
    assert not torch.allclose(runs[0], runs[1])


@pytest.mark.parametrize("settings", [SamplerSettings("ddpm", 20, 1.0, False), SamplerSettings("ddim", 5, 0.0, False),
                                      SamplerSettings("ddim", 5, 1.0, False)])
def test_same_seed_same_images_different_seed_different(tiny_model, tiny_schedule, settings):
    shape = (2, 3, 16, 16)

    def run(seed: int) -> torch.Tensor:
        return final(settings.run(tiny_model, tiny_schedule, shape, generator=torch.Generator().manual_seed(seed)))

    first, again, other = run(7), run(7), run(8)
    assert first.shape == shape and torch.isfinite(first).all()
    assert torch.equal(first, again)
    assert (first - other).abs().mean() > 1e-2


def test_final_returns_last_x_prev(tiny_schedule):
    steps = list(ddim(oracle(tiny_schedule, known_x0()), tiny_schedule, SHAPE, steps=4,
                      generator=torch.Generator().manual_seed(0)))
    assert final(iter(steps)) is steps[-1].x_prev
    with pytest.raises(ValueError):
        final(iter([]))


# --- invalid arguments ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [dict(eta=-0.1), dict(eta=1.5), dict(steps=0), dict(steps=21),
                                    dict(start_t=-1), dict(start_t=20), dict(start_t=3, steps=5)])
def test_ddim_rejects_bad_arguments(tiny_schedule, kwargs):
    with pytest.raises(ValueError):
        next(ddim(oracle(tiny_schedule, known_x0()), tiny_schedule, SHAPE, **kwargs))


@pytest.mark.parametrize("kwargs", [dict(start_t=-1), dict(start_t=20), dict(variance="learned")])
def test_ddpm_rejects_bad_arguments(tiny_schedule, kwargs):
    with pytest.raises(ValueError):
        next(ddpm(oracle(tiny_schedule, known_x0()), tiny_schedule, SHAPE, **kwargs))


def test_settings_refuse_to_run_an_unknown_sampler(tiny_schedule):
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        SamplerSettings("euler").run(oracle(tiny_schedule, known_x0()), tiny_schedule, SHAPE)  # type: ignore[arg-type]


# --- known answers for the noise terms ------------------------------------------------------------------

def reference_alphas_cumprod(beta_start: float, beta_end: float, timesteps: int) -> list[float]:
    """ᾱ_t = ∏_{s≤t}(1 − β_s) for evenly spaced β, in float64, without the schedule module."""
    abar, out = 1.0, []
    for i in range(timesteps):
        beta = beta_start + (beta_end - beta_start) * i / (timesteps - 1)
        abar *= 1.0 - beta
        out.append(abar)
    return out


def ddim_sigma(abar_t: float, abar_s: float, eta: float) -> float:
    """σ = η·√((1−ᾱ_s)/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_s)  (DDIM eq. 16)."""
    return eta * math.sqrt((1 - abar_s) / (1 - abar_t)) * math.sqrt(1 - abar_t / abar_s)


@pytest.mark.parametrize("eta", [0.3, 0.5, 0.7])
def test_ddim_at_intermediate_eta_takes_the_closed_form_step(tiny_model, tiny_schedule, eta):
    """x_s = √ᾱ_s·x̂₀ + √(1−ᾱ_s−σ²)·ε̂ + σ·z at every step, σ from eq. 16 and z replayed from the generator."""
    abar = reference_alphas_cumprod(1e-3, 0.3, 20)  # tiny_schedule's β
    shape = (2, 3, 16, 16)
    x_start = torch.randn(shape, generator=torch.Generator().manual_seed(11))
    steps = list(ddim(tiny_model, tiny_schedule, shape, steps=6, eta=eta, x_start=x_start,
                      generator=torch.Generator().manual_seed(4)))
    replay = torch.Generator().manual_seed(4)
    sigmas = []
    for step in steps:
        with torch.no_grad():  # ε̂ is the network's own output at (x_t, t)
            torch.testing.assert_close(step.pred_eps, tiny_model(step.x_t, torch.full((2,), step.t)))
        a_t = abar[step.t]
        a_s = abar[step.t_prev] if step.t_prev >= 0 else 1.0
        sigma = ddim_sigma(a_t, a_s, eta)
        sigmas.append(sigma)
        z = torch.randn(shape, generator=replay) if sigma > 0 else torch.zeros(shape)
        expected = (math.sqrt(a_s) * step.pred_x0 + math.sqrt(max(1 - a_s - sigma ** 2, 0.0)) * step.pred_eps
                    + sigma * z)
        torch.testing.assert_close(step.x_prev, expected, rtol=1e-5, atol=1e-5)
    assert sigmas[-1] == 0.0  # no noise on the step that lands on x̂₀, and on every other step σ(η) is far
    assert min(sigmas[:-1]) * (1 - eta) > 5e-3  # from σ(η²) = η·σ(η), next to the 1e-5 tolerance above


def test_ddim_noise_grows_with_eta(tiny_model, tiny_schedule):
    """Same start, same generator: the distance from the deterministic (η = 0) chain rises with η."""
    shape = (2, 3, 16, 16)
    x_start = torch.randn(shape, generator=torch.Generator().manual_seed(2))

    def run(eta: float) -> torch.Tensor:
        return final(ddim(tiny_model, tiny_schedule, shape, steps=5, eta=eta, x_start=x_start,
                          generator=torch.Generator().manual_seed(0)))

    deterministic = run(0.0)
    distances = [float((run(eta) - deterministic).abs().mean()) for eta in (0.25, 0.5, 0.75, 1.0)]
    assert distances[0] > 1e-3 and all(a < b for a, b in zip(distances, distances[1:])), distances


def test_ddpm_with_beta_variance_adds_sqrt_beta_noise(tiny_schedule):
    """variance="beta": x_{t−1} = posterior mean + √β_t·z (σ_t² = β_t, DDPM's other choice), no noise at t = 0."""
    x0, x_start = known_x0(5), torch.randn(SHAPE, generator=torch.Generator().manual_seed(6))
    steps = list(ddpm(oracle(tiny_schedule, x0), tiny_schedule, SHAPE, x_start=x_start, variance="beta",
                      generator=torch.Generator().manual_seed(8)))
    assert [s.t for s in steps] == list(range(19, -1, -1))
    replay = torch.Generator().manual_seed(8)
    for step in steps:
        beta = 1e-3 + (0.3 - 1e-3) * step.t / 19  # tiny_schedule's β_t
        z = torch.randn(SHAPE, generator=replay) if step.t > 0 else torch.zeros(SHAPE)
        mean = tiny_schedule.q_posterior(x0, step.x_t, torch.full((SHAPE[0],), step.t)).mean  # ε̂ = ε*: the true mean
        torch.testing.assert_close(step.x_prev, mean + math.sqrt(beta) * z, rtol=0, atol=1e-5)


def test_beta_and_posterior_variance_give_different_chains(tiny_model, tiny_schedule):
    shape = (2, 3, 16, 16)
    x_start = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    a, b = (final(ddpm(tiny_model, tiny_schedule, shape, x_start=x_start, variance=v,
                       generator=torch.Generator().manual_seed(1))) for v in ("posterior", "beta"))
    assert (a - b).abs().mean() > 1e-2


# --- a step written as a sum of its terms ---------------------------------------------------------------

@pytest.mark.parametrize("settings", [SamplerSettings("ddpm", 20, 1.0, False), SamplerSettings("ddpm", 20, 1.0, True),
                                      SamplerSettings("ddim", 6, 0.0, True), SamplerSettings("ddim", 6, 0.7, False)])
def test_the_terms_of_every_step_add_up_to_the_sampled_x_prev(tiny_model, tiny_schedule, settings):
    steps = list(settings.run(tiny_model, tiny_schedule, SHAPE, generator=torch.Generator().manual_seed(4)))
    for step in steps:
        parts = step_breakdown(tiny_schedule, step, settings)
        torch.testing.assert_close(parts.result(), step.x_prev, rtol=0, atol=2e-5)
        assert [term.factor for term in parts.terms] == (["x_t", "ε̂", "z"] if settings.sampler == "ddpm"
                                                         else ["x̂₀", "ε̂", "z"])
    assert step_breakdown(tiny_schedule, steps[-1], settings).sigma == 0.0  # no noise on the last step


def test_ddpm_coefficients_are_the_tutorials_numbers(tiny_model, tiny_schedule):
    """1/√α_t, −β_t/(√α_t·√(1−ᾱ_t)) and σ_t = √(β_t(1−ᾱ_{t−1})/(1−ᾱ_t)), from β alone."""
    settings = SamplerSettings("ddpm", 20, 1.0, False)
    step = next(iter(settings.run(tiny_model, tiny_schedule, SHAPE, start_t=7,
                                  generator=torch.Generator().manual_seed(0))))
    betas = torch.linspace(1e-3, 0.3, 20, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    beta, alpha, a_t, a_prev = float(betas[7]), 1 - float(betas[7]), float(abar[7]), float(abar[6])
    parts = step_breakdown(tiny_schedule, step, settings)
    assert [term.coefficient for term in parts.terms] == pytest.approx(
        [alpha ** -0.5, -beta / (alpha * (1 - a_t)) ** 0.5, (beta * (1 - a_prev) / (1 - a_t)) ** 0.5], rel=1e-12)
    assert (parts.t, parts.t_prev, parts.alpha_bar, parts.alpha_bar_prev) == (7, 6, pytest.approx(a_t),
                                                                              pytest.approx(a_prev))
