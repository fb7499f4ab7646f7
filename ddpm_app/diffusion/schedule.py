"""Noise schedules and the forward process q(x_t | x_0).

Timesteps are 0-based, as in code: t = 0 … T−1, where the paper's t = 1 … T.
So ``alphas_cumprod[t]`` is the paper's ᾱ_{t+1} and ``alphas_cumprod_prev[0] = 1``. What people read (labels,
equations, sliders, the API) uses the paper's t: :func:`paper_t` and :func:`table_index` go between the two.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from ddpm_app.checks import ConfigError, exact_int, exact_real, shown

ScheduleKind = Literal["linear", "cosine"]
SCHEDULE_KINDS: tuple[str, ...] = ("linear", "cosine")
MAX_TIMESTEPS = 10_000  # T: every per-timestep table has T entries, and DDPM sampling takes T network calls
# the reverse step's variance σ_t²: the posterior variance β̃_t = σ_q(t)² or β_t (see Tables.reverse_variance)
Variance = Literal["posterior", "beta"]
VARIANCES: tuple[str, ...] = ("posterior", "beta")


@dataclass(frozen=True)
class ScheduleConfig:
    """How β_t is laid out over the T diffusion steps."""

    kind: ScheduleKind = "linear"
    timesteps: int = 1000
    beta_start: float = 1e-4  # linear only
    beta_end: float = 0.02  # linear only
    cosine_s: float = 0.008  # cosine only: the offset s of Nichol & Dhariwal
    max_beta: float = 0.999  # cosine only: β is clipped here to avoid a singularity at t = T

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or self.kind not in SCHEDULE_KINDS:
            raise ConfigError("error.choice", name="kind", choices=", ".join(SCHEDULE_KINDS), got=shown(self.kind))
        exact_int(self.timesteps, "timesteps", 1, MAX_TIMESTEPS)
        for name in ("beta_start", "beta_end", "cosine_s", "max_beta"):
            exact_real(getattr(self, name), name, 0.0, 1.0)
        if self.kind == "linear" and not 0 < self.beta_start <= self.beta_end < 1:
            raise ConfigError("config.beta_order", start=self.beta_start, end=self.beta_end)

    def to_dict(self) -> dict:
        return asdict(self)


def paper_t(index: int) -> int:
    """The paper's t of a table index (or of an array of them): index i holds t = i + 1, so 0…T−1 are t = 1…T, and
    a chain's end (index −1, the data x₀) is t = 0."""
    return index + 1


def table_index(t: int) -> int:
    """The table index of the paper's t = 1…T, :func:`paper_t` undone: ``betas[table_index(t)]`` is β_t."""
    return t - 1


def linear_betas(timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    """β_t evenly spaced from beta_start to beta_end (DDPM, Ho et al. 2020), float64."""
    return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """β_t = 1 − ᾱ_t/ᾱ_{t−1} with ᾱ(t) = cos²((t/T + s)/(1 + s)·π/2) (Improved DDPM, eq. 17), float64."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = 1 - f[1:] / f[:-1]
    return betas.clamp(max=max_beta)


def extract(table: Tensor, t: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """table[t] for a batch of timesteps, shaped (B, 1, 1, …) to broadcast over ``shape``."""
    out = table.to(t.device)[t]
    return out.reshape(t.shape[0], *((1,) * (len(shape) - 1)))


class Posterior(NamedTuple):
    """q(x_{t−1} | x_t, x_0) = N(mean, variance·I)."""

    mean: Tensor
    variance: Tensor
    log_variance: Tensor


@dataclass(eq=False)
class Tables:
    """A schedule's per-timestep quantities, a (T,) tensor each, all in one dtype, and the distributions built on them.

    :meth:`from_betas` computes them in float64; a :class:`Schedule` is these tables in float32 with their float64
    originals beside them (``schedule.float64``, a ``Tables`` too), so either precision has the same names and methods.
    """

    # the chain: β_t, α_t = 1 − β_t, ᾱ_t = ∏_{s≤t} α_s and ᾱ_{t−1} (ᾱ_{−1} = 1)
    betas: Tensor
    alphas: Tensor
    alphas_cumprod: Tensor
    alphas_cumprod_prev: Tensor
    # forward process q(x_t | x_0), eq. (2)
    sqrt_alphas_cumprod: Tensor
    sqrt_one_minus_alphas_cumprod: Tensor
    # inverting eq. (2): x_0 from (x_t, ε)
    sqrt_recip_alphas_cumprod: Tensor
    sqrt_recipm1_alphas_cumprod: Tensor
    # posterior q(x_{t−1} | x_t, x_0), eq. (6–7); its log variance is set from the others (see __post_init__)
    posterior_variance: Tensor
    posterior_mean_coef1: Tensor
    posterior_mean_coef2: Tensor
    posterior_log_variance_clipped: Tensor = field(init=False)
    # the reverse step written with ε (the seed's sampling formula)
    sqrt_recip_alphas: Tensor
    eps_coef: Tensor
    # signal-to-noise ratio ᾱ_t / (1 − ᾱ_t)
    snr: Tensor

    def __post_init__(self) -> None:
        # log σ_q(t)² with the t = 0 entry (σ² = 0) replaced by the next one, as in improved-diffusion
        self.posterior_log_variance_clipped = self.reverse_variance("posterior").log()

    @classmethod
    def from_betas(cls, betas: Tensor) -> Tables:
        """Every table from β_t, computed in float64."""
        betas = betas.double()
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        sqrt_one_minus_alphas_cumprod = (1.0 - alphas_cumprod).sqrt()
        # σ_q(t)² = β_t(1−ᾱ_{t−1})/(1−ᾱ_t), zero at the first step
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        return cls(
            betas=betas, alphas=alphas, alphas_cumprod=alphas_cumprod, alphas_cumprod_prev=alphas_cumprod_prev,
            sqrt_alphas_cumprod=alphas_cumprod.sqrt(), sqrt_one_minus_alphas_cumprod=sqrt_one_minus_alphas_cumprod,
            sqrt_recip_alphas_cumprod=(1.0 / alphas_cumprod).sqrt(),
            sqrt_recipm1_alphas_cumprod=(1.0 / alphas_cumprod - 1.0).sqrt(),
            posterior_variance=posterior_variance,
            posterior_mean_coef1=betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
            posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * alphas.sqrt() / (1.0 - alphas_cumprod),
            sqrt_recip_alphas=(1.0 / alphas).sqrt(), eps_coef=betas / sqrt_one_minus_alphas_cumprod,
            snr=alphas_cumprod / (1.0 - alphas_cumprod),
        )

    def reverse_variance(self, variance: Variance) -> Tensor:
        """σ_t² of the reverse step p_θ(x_{t−1} | x_t) for every t: the posterior's β̃_t = σ_q(t)² ("posterior") or β_t
        ("beta"), DDPM's two choices (improved-diffusion's "fixedsmall" and "fixedlarge").

        At t = 0 both are β̃_1, the width of the bound's decoder (β̃_0 = 0 would make it a point, β_0 needlessly
        narrow); sampling adds no noise at t = 0 whatever σ_0 is.
        """
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {', '.join(VARIANCES)}, got {variance!r}")
        table = self.posterior_variance if variance == "posterior" else self.betas
        if len(table) == 1:  # T = 1: there is no β̃_1
            return self.betas
        return torch.cat([self.posterior_variance[1:2], table[1:]])

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε  (q(x_t | x₀), eq. 2)."""
        return (extract(self.sqrt_alphas_cumprod, t, x0.shape) * x0
                + extract(self.sqrt_one_minus_alphas_cumprod, t, x0.shape) * noise)

    def q_step(self, x_prev: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = √α_t·x_{t−1} + √β_t·ε  (one forward step q(x_t | x_{t−1}), eq. 1)."""
        return extract(self.alphas, t, x_prev.shape).sqrt() * x_prev + extract(self.betas, t, x_prev.shape).sqrt() * noise

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> Posterior:
        """q(x_{t−1} | x_t, x₀) = N(c₁·x₀ + c₂·x_t, σ_q(t)²·I)  (DDPM eq. 6–7)."""
        mean = (extract(self.posterior_mean_coef1, t, x_t.shape) * x0
                + extract(self.posterior_mean_coef2, t, x_t.shape) * x_t)
        variance = extract(self.posterior_variance, t, x_t.shape)
        log_variance = extract(self.posterior_log_variance_clipped, t, x_t.shape)
        return Posterior(mean, variance, log_variance)

    def predict_x0(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x̂₀ = (x_t − √(1−ᾱ_t)·ε) / √ᾱ_t  (eq. 2 solved for x₀)."""
        return (extract(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
                - extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps)

    def predict_eps(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """ε = (x_t − √ᾱ_t·x₀) / √(1−ᾱ_t)  (eq. 2 solved for ε)."""
        return ((extract(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - x0)
                / extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape))


class Schedule(Tables):
    """A schedule's tables in float32, what sampling and training compute with, and the same tables in float64
    (:attr:`float64`), what the bound and the numbers the app shows are computed from. Each is computed once, in
    float64; the float32 ones are those rounded."""

    def __init__(self, config: ScheduleConfig = ScheduleConfig()):
        self.config = config
        if config.kind == "linear":
            betas = linear_betas(config.timesteps, config.beta_start, config.beta_end)
        else:
            betas = cosine_betas(config.timesteps, config.cosine_s, config.max_beta)
        self.float64 = Tables.from_betas(betas)  # stays on the CPU
        for f in fields(Tables):  # each table rounded to float32
            setattr(self, f.name, getattr(self.float64, f.name).float())

    @property
    def timesteps(self) -> int:
        return self.config.timesteps

    def __repr__(self) -> str:
        return f"Schedule({self.config})"

    def to(self, device: torch.device | str) -> Schedule:
        """Move the float32 tables to ``device`` (in place; the float64 ones stay on the CPU)."""
        for f in fields(Tables):
            setattr(self, f.name, getattr(self, f.name).to(device))
        return self

    def snr_db(self, t: int) -> float:
        """10·log₁₀(ᾱ_t / (1 − ᾱ_t)) for one timestep."""
        return 10.0 * math.log10(float(self.float64.snr[t]))
