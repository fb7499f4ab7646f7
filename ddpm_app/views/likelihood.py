"""The likelihood of a photo: the variational bound in bits/dim and its terms, beside the model's held-out figure.

−log p_θ(x₀) ≤ L_T + Σ_{t≥2} L_{t−1} + L_0: the prior term, one KL per reverse step and the decoder. The numbers are
:func:`ddpm_app.diffusion.likelihood.bits_per_dim` on the photo as 8-bit data, the bound :mod:`ddpm_app.metrics.evaluate` reports.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor

from ddpm_app.diffusion.likelihood import BitsPerDim, bits_per_dim
from ddpm_app.diffusion.schedule import paper_t
from ddpm_app.image import to_uint8
from ddpm_app.metrics.heldout import HeldOut
from ddpm_app.numbers import number
from ddpm_app.serve.served import ServedModel
from ddpm_app.text import ENGLISH, text, translated
from ddpm_app.views.plots import log_y, new_figure, pixels

ESTIMATE_TIMESTEPS = 50  # the quick estimate: the decoder and one t from each of 49 strata of the paper's t = 2…T
# p_θ's mean from x̂₀ clipped to [−1, 1], as sampling and the held-out figures of the shipped models
# (python -m ddpm_app.cli.evaluate); Ho et al.'s bound leaves x̂₀ as the network gives it
CLIP_X0 = True
RAW_BITS = 8  # bits/dim of the image stored as it is: one byte per colour value
# The timesteps go through the network in a few large calls, with a progress update after each: on a small shared
# CPU per-call costs dominate (docs/performance.md, "Teaching views").
PROGRESS_UPDATES = 5
MAX_TIMESTEPS_PER_CALL = 50


def timesteps_per_call(num_timesteps: int) -> int:
    """Timesteps per network call for a bound over ``num_timesteps``: :data:`PROGRESS_UPDATES` calls, none larger
    than :data:`MAX_TIMESTEPS_PER_CALL` (the estimate: 5 calls of 10; the exact bound over T = 1000: 20 of 50)."""
    return max(1, min(MAX_TIMESTEPS_PER_CALL, math.ceil(num_timesteps / PROGRESS_UPDATES)))


def photo_bits_per_dim(served: ServedModel, x0: Tensor, seed: int, num_timesteps: int | None = ESTIMATE_TIMESTEPS,
                       progress: Callable[[int, int], None] | None = None, clip_x0: bool = CLIP_X0) -> BitsPerDim:
    """The bound for one photo x₀ (C, H, W) in [−1, 1], taken as the 8-bit image it shows: over ``num_timesteps``
    (None: all T, exact), its timesteps and noise drawn from ``seed``; p_θ's mean from x̂₀ clipped to [−1, 1] or
    (``clip_x0`` False, Ho et al.'s bound) as the network gives it."""
    batch = timesteps_per_call(min(num_timesteps or served.timesteps, served.timesteps))
    return bits_per_dim(served.eps_model.fp32(), served.schedule, to_uint8(x0)[None], num_timesteps=num_timesteps,
                        batch_size=batch, generator=served.generator(seed), clip_x0=clip_x0,
                        variance=served.config.sampling.variance, device=served.device, progress=progress)


def terms_plot(photo: BitsPerDim, heldout: HeldOut | None, timesteps: int, dpi: int = 100,
               language: str = ENGLISH, wide: bool = False) -> np.ndarray:
    """:func:`terms_figure` drawn: (H, W, 3) uint8."""
    return pixels(terms_figure(photo, heldout, timesteps, dpi, language, wide))


def terms_figure(photo: BitsPerDim, heldout: HeldOut | None, timesteps: int, dpi: int = 100,
                 language: str = ENGLISH, wide: bool = False) -> Figure:
    """The per-step KL terms L_{t−1} against the paper's t (the photo's, and the held-out mean), with the decoder L_0
    at t = 1;
    then the three parts of the bound and their sum side by side, under a line at the 8 bits/dim of the raw 8-bit
    image (a bound above it describes the image worse than storing its bytes). One above the other, narrow enough
    that a phone shows the text legibly; ``wide``: side by side, for a slide."""
    if wide:
        fig = new_figure(9, 3.2, dpi)
        ax, bars = fig.subplots(1, 2, width_ratios=[2.2, 1])
    else:
        fig = new_figure(5.2, 6.4, dpi)
        ax, bars = fig.subplots(2, 1, height_ratios=[1.3, 1])
    small, large = (8, 10) if wide else (10, 12)
    steps = [(paper_t(i), v) for i, _, v in photo.per_timestep if i > 0]
    ref = heldout.bpd if heldout is not None else None
    if ref is not None:
        ref_steps = [(paper_t(i), v) for i, _, v in ref.per_timestep if i > 0]
        ax.plot(*zip(*ref_steps), "-", lw=1.2, color="tab:orange", alpha=0.9,
                label=text("plot.heldout_mean", language))
    ax.plot(*zip(*steps), "o", ms=3, color="tab:blue", label=text("plot.your_photo", language))
    ax.plot([paper_t(0)], [photo.decoder], "D", ms=6, color="tab:red",
            label=text("plot.decoder_value", language, value=f"{photo.decoder:.2f}"))
    log_y(ax)
    ax.set_xlim(1 - timesteps * 0.02, timesteps)
    ax.set_xlabel(text("plot.t", language), fontsize=small + 1)
    ax.set_ylabel(text("plot.bits_per_dim", language), fontsize=small + 1)
    ax.set_title(text("plot.per_step", language), fontsize=large)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=small, loc="upper right")

    parts = [text("plot.prior", language), r"$\sum_t L_{t-1}$", text("plot.decoder", language),
             text("plot.total", language)]
    mine = [photo.prior, photo.diffusion, photo.decoder, photo.total]
    theirs = [ref.prior, ref.diffusion, ref.decoder, ref.total] if ref is not None else []
    x = np.arange(len(parts))
    width = 0.38 if ref is not None else 0.6
    bars.bar(x - (width / 2 if ref is not None else 0), mine, width, color="tab:blue",
             label=text("plot.your_photo", language))
    if ref is not None:
        bars.bar(x + width / 2, theirs, width, color="tab:orange", label=text("plot.heldout", language))
    bars.axhline(RAW_BITS, color="0.3", lw=1.2, ls="--", label=text("plot.raw_bits", language, bits=RAW_BITS))
    bars.set_xticks(x, parts, fontsize=small)
    bars.set_ylabel(text("plot.bits_per_dim", language), fontsize=small + 1)
    bars.set_title(text("plot.the_bound", language, total=f"{photo.total:.3f}"), fontsize=large)
    bars.grid(alpha=0.3, axis="y")
    bars.set_ylim(0, 1.35 * max(mine + theirs + [RAW_BITS]))  # room for the legend above the bars
    bars.legend(fontsize=small, loc="upper left")
    for axes in (ax, bars):
        axes.tick_params(labelsize=small)
    return fig


def least_noisy_bits(bound: BitsPerDim, t_max: int) -> float | None:
    """Σ_{t ≤ t_max} L_{t−1} over the paper's t: the decoder term L_0 (t = 1) and the per-step terms of the least
    noisy steps, in bits/dim; None when the bound did not evaluate each of those t with weight 1 (the estimate's
    first strata are single steps)."""
    rows = {paper_t(i): (weight, value) for i, weight, value in bound.per_timestep if paper_t(i) <= t_max}
    if sorted(rows) != list(range(1, t_max + 1)) or any(weight != 1 for weight, _ in rows.values()):
        return None
    return sum(value for _, value in rows.values())


def where_the_bits_are(photo: BitsPerDim, heldout: BitsPerDim | None, timesteps: int, language: str = ENGLISH) -> str:
    """One sentence: how much of the bound lies in the decoder and the least noisy 1 % of the steps (t ≤ T/100),
    for the photo and the held-out images; empty when the terms are not there to add up."""
    t_max = timesteps // 100
    mine = least_noisy_bits(photo, t_max) if t_max >= 1 else None
    if mine is None:
        return ""
    theirs = least_noisy_bits(heldout, t_max) if heldout is not None else None
    also = (text("verdict.least_noisy_heldout", language, theirs=f"{theirs:.2f}", total=f"{heldout.total:.2f}")
            if theirs is not None else "")
    return text("verdict.least_noisy", language, total=f"{photo.total:.2f}", mine=f"{mine:.2f}", t_max=t_max,
                also=also)


def raw_storage(total: float, language: str = ENGLISH) -> str:
    """A sentence for a bound above the 8 bits/dim of the raw image (or empty): the model describes the image
    worse than its own bytes do."""
    if total <= RAW_BITS:
        return ""
    return text("verdict.raw_storage", language, bits=RAW_BITS)


def how_measured(photo: BitsPerDim, reference: BitsPerDim | None = None, language: str = ENGLISH) -> str:
    """Which bound the number is: every t or a sample of them (either way one noisy x_t per term), and p_θ's mean
    from the clipped x̂₀ or Ho et al.'s unclipped one, noting a held-out figure measured the other way."""
    if photo.exact:
        sampled = text("verdict.exact", language)
    else:
        sampled = text("verdict.estimate", language, timesteps=photo.timesteps_evaluated)
    clipped = text("verdict.clipped" if photo.clip_x0 else "verdict.unclipped", language)
    if reference is not None and reference.clip_x0 != photo.clip_x0:
        clipped += text("verdict.heldout_clips" if reference.clip_x0 else "verdict.heldout_unclipped", language)
    return f"{sampled} {clipped}"


def verdict(photo: BitsPerDim, heldout: HeldOut | None, note: str = "", timesteps: int = 0,
            language: str = ENGLISH) -> str:
    """What the number means, in Markdown: the photo against the held-out average, which bound it is, and (given
    the model's T) how much of each lies in the least noisy steps."""
    reference = heldout.bpd if heldout is not None else None
    head = (text("verdict.head", language, total=f"{photo.total:.3f}", unit=translated(photo.label, language),
                 prior=number(photo.prior, 2), steps=f"{photo.diffusion:.3f}", decoder=f"{photo.decoder:.3f}")
            + where_the_bits_are(photo, reference, timesteps, language) + raw_storage(photo.total, language)
            + f"\n\n{how_measured(photo, reference, language)}")
    if heldout is None or heldout.bpd is None:
        return head + text("verdict.no_heldout", language,
                           note=translated(note, language) or text("verdict.none_stored", language))
    ref = heldout.bpd
    diff = photo.total - ref.total
    ratio = photo.total / ref.total
    reading = text("verdict.close" if ratio < 1.15 else "verdict.somewhat" if ratio < 1.5 else "verdict.much",
                   language)
    return head + text("verdict.heldout", language, data=heldout.data, total=f"{ref.total:.3f}",
                       unit=translated(ref.label, language),
                       images=ref.num_images, diff=f"{diff:+.3f}", reading=reading)
