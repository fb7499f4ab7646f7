"""The variational bound on −log p_θ(x₀) of a DDPM, in bits per dimension (Ho et al. 2020, eq. 5).

    −log p_θ(x₀) ≤ L_T + Σ_{t=2}^{T} L_{t−1} + L_0, where (paper's 1-based t)
      L_T     = KL(q(x_T | x₀) ‖ N(0, I))                          the prior term, no parameters
      L_{t−1} = KL(q(x_{t−1} | x_t, x₀) ‖ p_θ(x_{t−1} | x_t))       one per reverse step, Gaussian vs Gaussian
      L_0     = −log p_θ(x₀ | x₁)                                  the discretized Gaussian decoder (eq. 13)

In code, timesteps are 0-based (see :mod:`ddpm_app.diffusion.schedule`): the term at code index t is the KL of the step
that produces x_{t−1} from x_t for t ≥ 1, and the decoder term at t = 0. Our networks predict ε only, so the
reverse step p_θ(x_{t−1}|x_t) = N(μ_θ, σ_t²·I) takes μ_θ = the posterior mean at x̂₀(x_t, ε̂) and a fixed variance:
the posterior variance σ_q(t)² ("posterior", the sampler's default) or β_t ("beta"), as improved-diffusion's
"fixedsmall"/"fixedlarge" (both use σ_q(1)² for the decoder, where σ_q(0)² = 0).

The bound is an expectation over x_t ~ q(x_t|x₀); each (image, t) pair gets one fresh ε. Summing all T terms
is the honest number; with ``num_timesteps`` fewer than T the per-step sum is a stratified, unbiased estimate and
is labelled as such. The network runs in whatever precision the caller chose; the bound's own arithmetic is float64.
8-bit images scaled to [−1, 1] have 256 bins of width 2/255, and the decoder integrates over them, so the
result is a bound on the discrete negative log-likelihood, in bits per dimension (nats / (C·H·W·ln 2)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from ddpm_app.diffusion.samplers import EpsModel
from ddpm_app.diffusion.schedule import Schedule, Variance, extract

LN2 = math.log(2.0)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(μ₁, σ₁²) ‖ N(μ₂, σ₂²)) = ½·(log σ₂²/σ₁² + σ₁²/σ₂² + (μ₁ − μ₂)²/σ₂² − 1), elementwise, in nats."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def log_normal_mass(lo: Tensor, hi: Tensor) -> Tensor:
    """log(Φ(hi) − Φ(lo)) for lo < hi (either may be infinite), accurate in both tails.

    Intervals above zero are reflected (Φ(hi) − Φ(lo) = Φ(−lo) − Φ(−hi)) so that Φ is never close to 1, then
    log(Φ(b) − Φ(a)) = log Φ(b) + log(1 − exp(log Φ(a) − log Φ(b))) with log Φ from ``log_ndtr``.
    """
    flip = (lo + hi) > 0
    a = torch.where(flip, -hi, lo)
    b = torch.where(flip, -lo, hi)
    log_b = torch.special.log_ndtr(b)
    return log_b + torch.log(-torch.expm1(torch.special.log_ndtr(a) - log_b))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor, bins: int = 256) -> Tensor:
    """log ∫_{bin(x)} N(y; μ, σ²) dy, elementwise: x on the grid of ``bins`` values spanning [−1, 1], bins of width
    2/(bins−1) centred on them, the first reaching down to −∞ and the last up to +∞ (DDPM eq. 13). σ = exp(log_scale).
    """
    half = 1.0 / (bins - 1)
    inv_std = torch.exp(-log_scale)
    centered = x - mean
    lo = torch.where(x < -1.0 + half, -math.inf, (centered - half) * inv_std)
    hi = torch.where(x > 1.0 - half, math.inf, (centered + half) * inv_std)
    return log_normal_mass(lo, hi)


def mean_over_dims(x: Tensor) -> Tensor:
    """(B, C, H, W) → (B,): the mean over every dimension but the batch."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def model_log_variance(schedule: Schedule, variance: Variance = "posterior") -> Tensor:
    """log σ_t² of p_θ(x_{t−1}|x_t) for every t, float64: the sampler's reverse variance, σ_0² = σ_q(1)² for the
    decoder (:meth:`~ddpm_app.diffusion.schedule.Tables.reverse_variance`)."""
    return schedule.float64.reverse_variance(variance).log()


def prior_bpd(schedule: Schedule, x0: Tensor) -> Tensor:
    """L_T = KL(N(√ᾱ_T·x₀, (1−ᾱ_T)·I) ‖ N(0, I)) per image, in bits/dim: (B, C, H, W) → (B,)."""
    x0 = x0.double()
    abar_T = schedule.float64.alphas_cumprod[-1].to(x0.device)
    mean = abar_T.sqrt() * x0
    logvar = torch.log1p(-abar_T).expand_as(x0)
    zero = torch.zeros((), dtype=torch.float64, device=x0.device)
    return mean_over_dims(normal_kl(mean, logvar, zero, zero)) / LN2


def vb_terms(model: EpsModel, schedule: Schedule, x0: Tensor, t: Tensor, noise: Tensor, *,
             variance: Variance = "posterior", clip_x0: bool = False) -> Tensor:
    """One term of the bound per (x₀, t) pair, in bits/dim: (B, C, H, W), (B,), (B, C, H, W) → (B,).

    t ≥ 1: KL(q(x_{t−1}|x_t, x₀) ‖ p_θ(x_{t−1}|x_t)) with x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε (``noise`` is ε);
    t = 0: −log p_θ(x₀|x₁), the discretized Gaussian decoder with mean x̂₀.
    """
    q = schedule.float64  # the bound's arithmetic is float64; only the network sees float32
    x0, noise = x0.double(), noise.double()
    x_t = q.q_sample(x0, t, noise)
    eps = model(x_t.float(), t).double()
    pred_x0 = q.predict_x0(x_t, t, eps)
    if clip_x0:
        pred_x0 = pred_x0.clamp(-1.0, 1.0)
    # q(x_{t−1} | x_t, x₀), and p_θ(x_{t−1} | x_t): the posterior's mean at x̂₀ with the reverse variance σ_t²
    true = q.q_posterior(x0, x_t, t)
    model_mean = q.q_posterior(pred_x0, x_t, t).mean
    model_logvar = extract(model_log_variance(schedule, variance), t, x0.shape)
    terms = mean_over_dims(normal_kl(true.mean, true.log_variance, model_mean, model_logvar)) / LN2

    first = (t == 0).nonzero().flatten()
    if first.numel():
        log_p = discretized_gaussian_log_likelihood(x0[first], model_mean[first], 0.5 * model_logvar[first])
        terms = terms.index_copy(0, first, -mean_over_dims(log_p) / LN2)
    return terms


def bound_timesteps(timesteps: int, num: int | None = None,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The timesteps at which to evaluate the bound and the weight of each, (K,) long and (K,) float64.

    All T with weight 1 when ``num`` is None or ≥ T (the exact sum). Otherwise t = 0 (the decoder, weight 1) and
    one uniformly drawn t from each of ``num − 1`` strata of 1…T−1, weighted by its stratum's size: an unbiased
    estimate of Σ_{t≥1} L_t. The strata grow geometrically (each at least one step wide), so the first steps, whose
    terms are large and fall by orders of magnitude within a few t, are evaluated one by one, and every stratum
    spans terms of about one size: equal strata would let one draw near t = 1, weighted by a wide stratum, move the
    estimate by more than a bit per dimension.
    """
    if num is None or num >= timesteps:
        return torch.arange(timesteps), torch.ones(timesteps, dtype=torch.float64)
    if num < 2:
        raise ValueError(f"need at least 2 timesteps (the decoder and one step) for an estimate, got {num}")
    strata = num - 1
    geometric = torch.logspace(0, math.log10(timesteps), strata + 1, dtype=torch.float64).round().long().tolist()
    edges = [1]
    for k in range(1, strata + 1):  # at least one step per stratum, and room left for the strata after it
        edges.append(min(max(geometric[k], edges[-1] + 1), timesteps - (strata - k)))
    edges = torch.tensor(edges)  # num−1 strata [e_i, e_{i+1}), from 1 to T
    sizes = edges[1:] - edges[:-1]
    offsets = (torch.rand(num - 1, generator=generator, dtype=torch.float64) * sizes).floor().long()
    ts = torch.cat([torch.zeros(1, dtype=torch.long), edges[:-1] + offsets])
    weights = torch.cat([torch.ones(1, dtype=torch.float64), sizes.double()])
    return ts, weights


class Bound(NamedTuple):
    """The bound's parts for a batch of images, in bits/dim; each (B,) unless noted."""

    total: Tensor  # prior + decoder + diffusion
    prior: Tensor  # L_T
    decoder: Tensor  # L_0
    diffusion: Tensor  # Σ_{t≥1} L_t (a weighted estimate when not every t was evaluated)
    terms: Tensor  # (B, K): the evaluated terms, column k at timesteps[k]
    timesteps: Tensor  # (K,)


@torch.inference_mode()
def variational_bound(model: EpsModel, schedule: Schedule, x0: Tensor, *, timesteps: Tensor | None = None,
                      weights: Tensor | None = None, batch_size: int = 256, generator: torch.Generator | None = None,
                      variance: Variance = "posterior", clip_x0: bool = False,
                      progress: Callable[[int], None] | None = None) -> Bound:
    """The bound for each image of x₀ (B, C, H, W) in [−1, 1] (or uint8), every listed timestep evaluated.

    (image, t) pairs are batched together so that each network call sees up to ``batch_size`` inputs: a block of
    images times a chunk of timesteps. ``progress`` is called with the number of pairs done after each call.
    """
    from ddpm_app.image import from_uint8

    if timesteps is None:
        timesteps, weights = bound_timesteps(schedule.timesteps)
    if weights is None:
        weights = torch.ones(len(timesteps), dtype=torch.float64)
    if int(timesteps[0]) != 0 or len(set(timesteps.tolist())) != len(timesteps):
        raise ValueError("timesteps must start with 0 (the decoder term) and hold no repeats")
    if int(timesteps.min()) < 0 or int(timesteps.max()) >= schedule.timesteps:
        raise ValueError(f"timesteps must be in 0…{schedule.timesteps - 1}")
    x0 = from_uint8(x0) if x0.dtype == torch.uint8 else x0
    device = x0.device
    x0 = x0.double()
    ts = timesteps.to(device)
    terms = torch.empty(len(x0), len(ts), dtype=torch.float64, device=device)
    for i in range(0, len(x0), batch_size):
        block = x0[i:i + batch_size]  # (b, C, H, W)
        b = len(block)
        per_call = max(1, batch_size // b)
        for j in range(0, len(ts), per_call):
            t_chunk = ts[j:j + per_call]  # (k,)
            k = len(t_chunk)
            t = t_chunk.repeat_interleave(b)  # (k·b,), timestep-major
            x = block.repeat(k, 1, 1, 1)  # (k·b, C, H, W), the same order
            noise = torch.randn(x.shape, generator=generator, device=device, dtype=torch.float64)
            out = vb_terms(model, schedule, x, t, noise, variance=variance, clip_x0=clip_x0)
            terms[i:i + b, j:j + k] = out.reshape(k, b).T
            if progress is not None:
                progress(k * b)
    weights = weights.to(device)
    decoder = terms[:, 0]
    diffusion = terms[:, 1:] @ weights[1:]
    prior = prior_bpd(schedule, x0)
    return Bound(prior + decoder + diffusion, prior, decoder, diffusion, terms, timesteps.cpu())


@dataclass(frozen=True)
class BitsPerDim:
    """The bound averaged over a set of images, in bits per dimension of 8-bit data."""

    total: float  # mean over images of prior + decoder + diffusion
    stderr: float  # standard error of that mean over images (the ε-sampling noise is included)
    prior: float
    decoder: float
    diffusion: float
    num_images: int
    timesteps_evaluated: int  # T when exact
    exact: bool  # every timestep evaluated (else the per-step sum is a stratified estimate)
    variance: str
    clip_x0: bool
    per_timestep: list[tuple[int, float, float]]  # (t, its weight in the sum, mean L_t over images) per evaluated t

    @property
    def label(self) -> str:
        return "bits/dim" if self.exact else f"bits/dim (estimate from {self.timesteps_evaluated} timesteps)"


def bits_per_dim(model: EpsModel, schedule: Schedule, images: Tensor, *, num_timesteps: int | None = None,
                 batch_size: int = 256, generator: torch.Generator | None = None, variance: Variance = "posterior",
                 clip_x0: bool = False, device: torch.device | str = "cpu",
                 progress: Callable[[int, int], None] | None = None) -> BitsPerDim:
    """The bound over a set of uint8 images (N, C, H, W), moved to ``device`` one block at a time.

    ``generator`` draws the noise (it must live on ``device``); the stratified timesteps, if any, are drawn from a
    CPU generator seeded from it. ``progress(done, total)`` counts (image, timestep) pairs.
    """
    if len(images) == 0:
        raise ValueError("no images to evaluate the bound on")
    cpu_gen = None
    if generator is not None:
        cpu_gen = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, (1,), generator=generator,
                                                                  device=generator.device)))
    timesteps, weights = bound_timesteps(schedule.timesteps, num_timesteps, cpu_gen)
    total_pairs, done = len(images) * len(timesteps), 0
    block = max(batch_size, 1)
    parts: list[Bound] = []
    if progress is not None:
        progress(0, total_pairs)
    for i in range(0, len(images), block):
        def tick(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(done, total_pairs)
        parts.append(variational_bound(model, schedule, images[i:i + block].to(device), timesteps=timesteps,
                                       weights=weights, batch_size=batch_size, generator=generator,
                                       variance=variance, clip_x0=clip_x0, progress=tick))
    total = torch.cat([p.total for p in parts]).cpu()
    terms = torch.cat([p.terms for p in parts]).cpu()
    n = len(total)
    stderr = float(total.std() / math.sqrt(n)) if n > 1 else float("nan")
    return BitsPerDim(
        total=float(total.mean()), stderr=stderr,
        prior=float(torch.cat([p.prior for p in parts]).mean()),
        decoder=float(torch.cat([p.decoder for p in parts]).mean()),
        diffusion=float(torch.cat([p.diffusion for p in parts]).mean()),
        num_images=n, timesteps_evaluated=len(timesteps), exact=len(timesteps) == schedule.timesteps,
        variance=variance, clip_x0=clip_x0,
        per_timestep=[(int(t), float(w), float(v)) for t, w, v in zip(timesteps, weights, terms.mean(dim=0))],
    )
