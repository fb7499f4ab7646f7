"""Reverse-process samplers, written as generators that yield every step.

Each sampler yields one :class:`Step` per network evaluation — the step index, the timestep t, the x_t the
network saw, its ε̂ and the x̂₀ implied by it, and the x_{t−1} (or x_{t_prev}) it produced — so a caller can
show the chain as it runs, keep a trajectory, or stop early. :func:`final` drains a sampler and returns only
the last image. Randomness comes only from the ``generator`` passed in (or an explicit ``x_T``/``noise``).

:class:`SamplerSettings` is the one description of a reverse run a user or a config chooses (sampler, steps, η,
clipping), with its validation, its label and the number of network evaluations it takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterator, Literal, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor

from ddpm_app.checks import choice, flag, real_number, whole_number
from ddpm_app.diffusion.schedule import VARIANCES, Schedule, Variance, extract

# ε_θ(x_t, t): anything that maps (B, C, H, W) float32 and (B,) long timesteps to a (B, C, H, W) noise prediction
EpsModel = Callable[[Tensor, Tensor], Tensor]
SamplerName = Literal["ddpm", "ddim"]
SAMPLERS: tuple[str, ...] = ("ddpm", "ddim")
DEFAULT_DDIM_STEPS = 50
# a step's fresh noise z ~ N(0, I) for a batch of the given shape (B, C, H, W), drawn some other way than from one
# generator: interpolation slerps two seeds' z so that its ends get exactly each seed's own noise
NoiseFn = Callable[[tuple[int, ...]], Tensor]


@runtime_checkable
class FusedNetwork(Protocol):
    """An ε_θ that also runs DDPM's whole step itself, :func:`ddpm_step` with itself as the model, compiled into one
    graph where it can be: the runtime's network (:class:`ddpm_app.runtime.inference.Network`), which replays it as
    one CUDA graph on a GPU. :func:`ddpm` takes a network's own step where it has one."""

    def __call__(self, x: Tensor, t: Tensor) -> Tensor: ...

    def ddpm_step(self, schedule: Schedule, x: Tensor, tt: Tensor, noise: Tensor, sigma: Tensor,
                  clip_x0: bool) -> tuple[Tensor, Tensor, Tensor]: ...


@dataclass(frozen=True)
class Step:
    """One reverse step: the network saw ``x_t`` at timestep ``t`` and the sampler produced ``x_prev``."""

    index: int  # 0 for the first step taken, num_steps − 1 for the last
    num_steps: int
    t: int  # 0-based timestep of x_t
    t_prev: int  # timestep of x_prev; −1 means x_prev is the final image x_0
    x_t: Tensor  # (B, C, H, W)
    pred_x0: Tensor  # x̂₀ from ε̂ (clipped to [−1, 1] if the sampler clips)
    pred_eps: Tensor  # ε̂ = ε_θ(x_t, t)
    x_prev: Tensor  # x_{t−1} for DDPM, x_{t_prev} for DDIM; the final image on the last step
    noise: Tensor | None = None  # z ~ N(0, I) added as σ·z; None when the step adds no noise

    @property
    def is_last(self) -> bool:
        return self.index == self.num_steps - 1


def _start(schedule: Schedule, shape: tuple[int, ...], start_t: int | None, x_start: Tensor | None,
           generator: torch.Generator | None, device: torch.device | str) -> tuple[Tensor, int]:
    """The chain's first x and its timestep: x_T ~ N(0, I) from the generator unless given."""
    t0 = schedule.timesteps - 1 if start_t is None else int(start_t)
    if not 0 <= t0 < schedule.timesteps:
        raise ValueError(f"start_t must be in 0…{schedule.timesteps - 1}, got {t0}")
    if x_start is None:
        x_start = torch.randn(shape, generator=generator, device=device)
    return x_start.to(device=device, dtype=torch.float32), t0


def _noise(draw_noise: NoiseFn | None, x: Tensor, generator: torch.Generator | None) -> Tensor:
    """A step's z ~ N(0, I) of x's shape: from ``draw_noise`` when given, else from the generator."""
    if draw_noise is not None:
        return draw_noise(tuple(x.shape)).to(device=x.device, dtype=x.dtype)
    return torch.randn(x.shape, generator=generator, device=x.device)


def _predict(model: EpsModel, schedule: Schedule, x: Tensor, tt: Tensor, clip_x0: bool) -> tuple[Tensor, Tensor]:
    """ε̂ = ε_θ(x_t, t) and x̂₀ from it, optionally clipped to [−1, 1] (then ε̂ is made consistent with x̂₀)."""
    eps = model(x, tt).float()
    x0 = schedule.predict_x0(x, tt, eps)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
        eps = schedule.predict_eps(x, tt, x0)
    return eps, x0


def ddpm_step(model: EpsModel, schedule: Schedule, x: Tensor, tt: Tensor, noise: Tensor, sigma: Tensor,
              clip_x0: bool) -> tuple[Tensor, Tensor, Tensor]:
    """x_{t−1} = 1/√α_t·(x_t − β_t/√(1−ᾱ_t)·ε̂) + σ_t·z: one ancestral step, returning (ε̂, x̂₀, x_{t−1}).

    ``sigma`` is the table of σ_t for every t. Pure tensor code with no Python branch on values, so it can be compiled
    and captured in a CUDA graph as a whole (see :class:`FusedNetwork`); pass zero noise for the last step.
    """
    eps, x0 = _predict(model, schedule, x, tt, clip_x0)
    mean = extract(schedule.sqrt_recip_alphas, tt, x.shape) * (x - extract(schedule.eps_coef, tt, x.shape) * eps)
    return eps, x0, mean + extract(sigma, tt, x.shape) * noise


def _timestep(x: Tensor, t: int) -> Tensor:
    return torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)  # (B,)


@torch.inference_mode()
def ddpm(model: EpsModel, schedule: Schedule, shape: tuple[int, ...], *, generator: torch.Generator | None = None,
         x_start: Tensor | None = None, start_t: int | None = None, clip_x0: bool = False,
         variance: Variance = "posterior", device: torch.device | str = "cpu",
         draw_noise: NoiseFn | None = None) -> Iterator[Step]:
    """Ancestral sampling: x_{t−1} = 1/√α_t·(x_t − β_t/√(1−ᾱ_t)·ε̂) + σ_t·z  (DDPM Algorithm 2).

    σ_t² is the posterior variance β_t(1−ᾱ_{t−1})/(1−ᾱ_t) by default, or β_t with ``variance="beta"``
    (:meth:`~ddpm_app.diffusion.schedule.Tables.reverse_variance`); no noise is added at the last step. Starts from
    x_T ~ N(0, I), or from ``x_start`` at timestep ``start_t`` (a noised photo, for SDEdit). With ``clip_x0``, ε̂ is
    recomputed from the clipped x̂₀, so the same formula gives the posterior mean of q(x_{t−1} | x_t, x̂₀) for the
    clipped x̂₀.

    Each step is :func:`ddpm_step` with ``model``, or the model's own step where it has one (a :class:`FusedNetwork`,
    compiled as one graph). ``draw_noise(shape)`` gives each step's z instead of the generator (see :data:`NoiseFn`).
    """
    x, t0 = _start(schedule, shape, start_t, x_start, generator, device)
    sigma = schedule.reverse_variance(variance).sqrt().to(device)
    num_steps = t0 + 1
    step = model.ddpm_step if isinstance(model, FusedNetwork) else partial(ddpm_step, model)
    for index, t in enumerate(range(t0, -1, -1)):
        tt = _timestep(x, t)
        # no noise at the last step: z = 0 there, and the generator is not drawn from
        z = _noise(draw_noise, x, generator) if t > 0 else torch.zeros_like(x)
        eps, x0, x_prev = step(schedule, x, tt, z, sigma, clip_x0)
        yield Step(index, num_steps, t, t - 1, x, x0, eps, x_prev, z if t > 0 else None)
        x = x_prev


def ddim_timesteps(start_t: int, steps: int) -> list[int]:
    """``steps`` evenly spaced timesteps from start_t down to 0, inclusive of both ends, descending."""
    if not 1 <= steps <= start_t + 1:
        raise ValueError(f"steps must be in 1…{start_t + 1}, got {steps}")
    if steps == 1:
        return [start_t]
    ts = torch.linspace(start_t, 0, steps, dtype=torch.float64).round().long().tolist()
    return ts


@torch.inference_mode()
def ddim(model: EpsModel, schedule: Schedule, shape: tuple[int, ...], *, steps: int = DEFAULT_DDIM_STEPS, eta: float = 0.0,
         generator: torch.Generator | None = None, x_start: Tensor | None = None, start_t: int | None = None,
         clip_x0: bool = False, device: torch.device | str = "cpu", draw_noise: NoiseFn | None = None
         ) -> Iterator[Step]:
    """DDIM (Song et al. 2021, eq. 12): x_s = √ᾱ_s·x̂₀ + √(1−ᾱ_s−σ²)·ε̂ + σ·z over ``steps`` timesteps.

    σ = η·√((1−ᾱ_s)/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_s), η times the posterior's standard deviation for the jump t → s
    (:func:`ddim_coefficients`); η = 0 is deterministic, η = 1 over every timestep is DDPM with the posterior variance.
    After the last listed timestep the chain ends at x̂₀ (ᾱ_{−1} = 1). ``draw_noise(shape)`` gives each z instead
    of the generator (see :data:`NoiseFn`). ``model`` is only asked for ε̂: the update is a few multiply-adds with
    per-jump numbers, and a :class:`FusedNetwork`'s step is DDPM's.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    x, t0 = _start(schedule, shape, start_t, x_start, generator, device)
    ts = ddim_timesteps(t0, steps)
    for index, t in enumerate(ts):
        s = ts[index + 1] if index + 1 < len(ts) else -1
        eps, x0 = _predict(model, schedule, x, _timestep(x, t), clip_x0)
        c = ddim_coefficients(schedule, t, s, eta)
        x_prev = c.x0 * x0 + c.eps * eps
        z = None
        if c.sigma > 0:
            z = _noise(draw_noise, x, generator)
            x_prev = x_prev + c.sigma * z
        yield Step(index, len(ts), t, s, x, x0, eps, x_prev, z)
        x = x_prev


class DDIMCoefficients(NamedTuple):
    """x_s = x0·x̂₀ + eps·ε̂ + sigma·z for one DDIM jump t → s."""

    x0: float  # √ᾱ_s
    eps: float  # √(1 − ᾱ_s − σ²)
    sigma: float  # η·√((1−ᾱ_s)/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_s)


def ddim_coefficients(schedule: Schedule, t: int, s: int, eta: float) -> DDIMCoefficients:
    """The coefficients of DDIM's update from timestep t to s (s = −1: the final image, ᾱ_{−1} = 1), float64."""
    abar = schedule.float64.alphas_cumprod
    a_t = float(abar[t])
    a_s = float(abar[s]) if s >= 0 else 1.0
    sigma = eta * ((1 - a_s) / (1 - a_t) * (1 - a_t / a_s)) ** 0.5
    return DDIMCoefficients(a_s ** 0.5, max(1 - a_s - sigma ** 2, 0.0) ** 0.5, sigma)




@dataclass(frozen=True)
class SamplerSettings:
    """How to run the reverse chain: ``ddpm`` over every timestep, or ``ddim`` over ``steps`` of them with η.

    For DDPM, ``steps`` is the schedule's T (what :meth:`checked` fills in) and ``eta`` is 1 (DDPM's noise).
    """

    sampler: SamplerName = "ddim"
    steps: int = DEFAULT_DDIM_STEPS  # DDIM only
    eta: float = 0.0  # DDIM only
    clip_x0: bool = True  # clip x̂₀ to [−1, 1] at every step
    variance: Variance = "posterior"  # DDPM only: σ_t² = β̃_t (the posterior's) or β_t (the model's choice)

    @classmethod
    def checked(cls, sampler: str, steps: float | None, eta: float | None, clip_x0: bool,
                timesteps: int, variance: str = "posterior") -> SamplerSettings:
        """Settings from user values (widgets, options), with an :class:`~ddpm_app.checks.InvalidValue` naming the allowed range
        for a bad one. DDPM does not use DDIM's steps and η, but a value given for them is checked all the same:
        a wrong one is answered, never ignored (None: not given, for DDPM only)."""
        sampler = choice(sampler, "sampler", SAMPLERS)
        variance = choice(variance, "reverse variance σ²", VARIANCES)
        unused = sampler == "ddpm"
        steps = None if unused and steps is None else whole_number(steps, "DDIM steps", 1, timesteps)
        eta = None if unused and eta is None else real_number(eta, "η (eta)", 0.0, 1.0)
        clip_x0 = flag(clip_x0, "clip x̂₀")
        if unused:
            return cls("ddpm", timesteps, 1.0, clip_x0, variance)
        return cls("ddim", steps, eta, clip_x0, variance)

    def num_steps(self, start_t: int) -> int:
        """Network evaluations for a chain that starts at timestep ``start_t``."""
        return start_t + 1 if self.sampler == "ddpm" else min(self.steps, start_t + 1)

    def label(self) -> str:
        """For evaluation reports (``eval.json``'s "sampler"): "ddpm (1000 steps)" or "ddim (50 steps, η = 0)". A run
        in the app is named by :class:`ddpm_app.serve.runs.RunName`."""
        if self.sampler == "ddpm":
            return f"ddpm ({self.steps} steps)"
        return f"ddim ({self.steps} steps, η = {self.eta:g})"

    def run(self, model: EpsModel, schedule: Schedule, shape: tuple[int, ...], *, start_t: int | None = None,
            **kwargs) -> Iterator[Step]:
        """The reverse chain with these settings, from timestep ``start_t`` (T−1 by default), run by :func:`ddpm` or
        :func:`ddim`; ``kwargs`` go to the sampler (``generator``, ``x_start``, ``device``, ``draw_noise``)."""
        if self.sampler == "ddpm":
            chain = partial(ddpm, variance=self.variance)
        elif self.sampler == "ddim":
            start = schedule.timesteps - 1 if start_t is None else start_t
            chain = partial(ddim, steps=self.num_steps(start), eta=self.eta)
        else:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        return chain(model, schedule, shape, clip_x0=self.clip_x0, start_t=start_t, **kwargs)


@dataclass(frozen=True)
class StepTerm:
    """One summand of a reverse step: ``coefficient`` times the tensor named by ``factor``."""

    factor: str  # "x_t", "x̂₀", "ε̂" or "z"
    coefficient: float
    value: Tensor  # coefficient · factor, (B, C, H, W)


@dataclass(frozen=True)
class StepBreakdown:
    """A reverse step written as a sum, x_prev = Σ terms, with the schedule numbers it was built from.

    DDPM:  x_{t−1} = (1/√α_t)·x_t − β_t/(√α_t·√(1−ᾱ_t))·ε̂ + σ_t·z
    DDIM:  x_s = √ᾱ_s·x̂₀ + √(1−ᾱ_s−σ²)·ε̂ + σ·z
    For a DDIM jump t → s, α and β are those of the whole jump: α = ᾱ_t/ᾱ_s, β = 1 − α.
    """

    sampler: SamplerName
    t: int
    t_prev: int  # −1: the step produces the final image
    alpha: float  # α_t
    beta: float  # β_t
    alpha_bar: float  # ᾱ_t
    alpha_bar_prev: float  # ᾱ at t_prev (1 for the final image)
    sigma: float  # the noise scale σ of this step (0 when it adds none)
    terms: tuple[StepTerm, ...]
    variance: Variance = "posterior"  # DDPM's σ_t²: the posterior variance β̃_t, or β_t

    def result(self) -> Tensor:
        """Σ terms: the x_prev this step produced."""
        total = self.terms[0].value
        for term in self.terms[1:]:
            total = total + term.value
        return total


def step_breakdown(schedule: Schedule, step: Step, settings: SamplerSettings,
                   variance: Variance | None = None) -> StepBreakdown:
    """The terms of ``step`` (a step of a chain run with ``settings``), each a coefficient times x_t, x̂₀, ε̂ or z.

    Coefficients come from the schedule in float64; z is the noise the sampler drew (``step.noise``); DDPM's σ_t²
    is ``variance``, by default the one the settings ran with.
    """
    variance = variance or settings.variance
    f64 = schedule.float64
    t, s = step.t, step.t_prev
    abar_t = float(f64.alphas_cumprod[t])
    abar_s = float(f64.alphas_cumprod[s]) if s >= 0 else 1.0
    z = step.noise if step.noise is not None else torch.zeros_like(step.x_t)
    if settings.sampler == "ddpm":
        alpha, beta = float(f64.alphas[t]), float(f64.betas[t])
        sigma = float(f64.reverse_variance(variance)[t]) ** 0.5 if step.noise is not None else 0.0
        # the coefficients ddpm_step uses: 1/√α_t and −(1/√α_t)·β_t/√(1−ᾱ_t)
        c_x = float(f64.sqrt_recip_alphas[t])
        c_eps = -c_x * float(f64.eps_coef[t])
        terms = (StepTerm("x_t", c_x, c_x * step.x_t), StepTerm("ε̂", c_eps, c_eps * step.pred_eps),
                 StepTerm("z", sigma, sigma * z))
        return StepBreakdown("ddpm", t, s, alpha, beta, abar_t, abar_s, sigma, terms, variance)
    c = ddim_coefficients(schedule, t, s, settings.eta)
    sigma = c.sigma if step.noise is not None else 0.0
    terms = (StepTerm("x̂₀", c.x0, c.x0 * step.pred_x0), StepTerm("ε̂", c.eps, c.eps * step.pred_eps),
             StepTerm("z", sigma, sigma * z))
    return StepBreakdown("ddim", t, s, abar_t / abar_s, 1.0 - abar_t / abar_s, abar_t, abar_s, sigma, terms)


def final(steps: Iterator[Step]) -> Tensor:
    """Run a sampler to the end and return the final image (B, C, H, W), values roughly in [−1, 1]."""
    last = None
    for last in steps:
        pass
    if last is None:
        raise ValueError("the sampler yielded no steps")
    return last.x_prev
