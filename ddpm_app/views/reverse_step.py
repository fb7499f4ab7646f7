"""The reverse step explained where it happens: its update with the numbers filled in, and its terms as pictures.

The numbers come from :func:`ddpm_app.diffusion.samplers.step_breakdown`; this module only writes them out, with the
paper's t (:func:`~ddpm_app.diffusion.schedule.paper_t`): the step at table index t is the paper's step t + 1, and
the last one makes x₀.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
from torch import Tensor

from ddpm_app.diffusion.samplers import StepBreakdown, StepTerm, step_breakdown
from ddpm_app.diffusion.schedule import paper_t
from ddpm_app.numbers import number
from ddpm_app.pictures import labelled_strip
from ddpm_app.serve.runs import Frame, Trajectory
from ddpm_app.text import ENGLISH, text


def equation_text(b: StepBreakdown) -> str:
    """One line of plain text: the update with this step's coefficients and the paper's t, e.g.
    "x_499 = 1.005·x_500 − 0.01053·ε̂ + 0.1003·z"."""
    target = f"x_{paper_t(b.t_prev)}"
    parts = [f"{number(abs(term.coefficient))}·{_factor(term, b)}" for term in b.terms]
    signs = ["−" if term.coefficient < 0 else "+" for term in b.terms]
    body = ("−" if signs[0] == "−" else "") + parts[0] + "".join(f" {s} {p}" for s, p in zip(signs[1:], parts[1:]))
    return f"{target} = {body}"


def _factor(term: StepTerm, b: StepBreakdown) -> str:
    return f"x_{paper_t(b.t)}" if term.factor == "x_t" else term.factor


# which variance the step's noise has, with its formula (DDPM paper, sec. 3.2; DDIM paper, eq. 16): catalogue keys
SIGMA_FORMULA = {kind: f"step.sigma.{kind}" for kind in ("posterior", "beta", "ddim")}


def equation_markdown(b: StepBreakdown, clip_x0: bool = False, language: str = ENGLISH) -> str:
    """The update in LaTeX twice: its symbolic form with this step's schedule values, then (a line below) the
    coefficients; then which variance σ is and, with ``clip_x0``, which ε̂ is shown."""
    t, s = paper_t(b.t), paper_t(b.t_prev)
    n = partial(number, latex=True)
    c = [term.coefficient for term in b.terms]
    if b.sampler == "ddpm":
        values = (f"$t = {t}$: $\\alpha_t = {n(b.alpha)}$ · $\\beta_t = {n(b.beta)}$ · "
                  f"$\\bar\\alpha_t = {n(b.alpha_bar)}$ · $\\bar\\alpha_{{t-1}} = {n(b.alpha_bar_prev)}$ · "
                  f"$\\sigma_t = {n(b.sigma)}$"
                  + (text("step.no_noise_last", language) if b.t_prev < 0 else ""))
        form = (f"x_{{{s}}} = \\frac{{1}}{{\\sqrt{{{n(b.alpha)}}}}}\\Big(x_{{{t}}} - "
                f"\\frac{{{n(b.beta)}}}{{\\sqrt{{1-{n(b.alpha_bar)}}}}}\\,\\hat\\varepsilon\\Big) + {n(b.sigma)}\\,z")
        terms = f"{n(c[0])}\\,x_{{{t}}} {_signed(c[1])}\\,\\hat\\varepsilon {_signed(c[2])}\\,z"
    else:
        values = (f"$\\bar\\alpha_t = {n(b.alpha_bar)}$ (t = {t}) · $\\bar\\alpha_s = {n(b.alpha_bar_prev)}$ "
                  f"(s = {s if s > 0 else text('step.final_image', language)}) · "
                  f"$\\sigma = {n(b.sigma)}$")
        form = (f"x_{{{s}}} = \\sqrt{{{n(b.alpha_bar_prev)}}}\\,\\hat x_0 + "
                f"\\sqrt{{1-{n(b.alpha_bar_prev)}-{n(b.sigma)}^2}}\\,\\hat\\varepsilon + {n(b.sigma)}\\,z")
        terms = f"{n(c[0])}\\,\\hat x_0 {_signed(c[1])}\\,\\hat\\varepsilon {_signed(c[2])}\\,z"
    sigma = SIGMA_FORMULA["ddim" if b.sampler == "ddim" else b.variance]
    notes = text("step.noise", language) + text(sigma, language) + text("punct.stop", language)
    if clip_x0:
        notes += "  \n" + text("step.clipped_eps", language)
    return f"{values}\n\n$${form}$$\n\n$$= {terms}$$\n\n{notes}"  # two lines: each fits a phone


def _signed(v: float) -> str:
    return f"- {number(-v, latex=True)}" if v < 0 else f"+ {number(v, latex=True)}"


def display_gain(value: Tensor) -> float:
    """A round factor (1, 2, 5, 10, 20, …) that makes a small term visible: its largest |value| near 1."""
    peak = float(value.abs().max())
    if peak == 0 or peak >= 0.5:
        return 1.0
    gain = 1.0 / peak
    power = 10 ** math.floor(math.log10(gain))
    return max(m * power for m in (1, 2, 5) if m * power <= gain)


def term_label(term: StepTerm, b: StepBreakdown, gain: float) -> str:
    shown = f" (×{gain:g})" if gain != 1 else ""
    return f"{number(term.coefficient)}·{_factor(term, b)}{shown}"


def terms_strip(b: StepBreakdown, x_prev: Tensor, min_size: int = 128, title: str | None = None) -> np.ndarray:
    """The first image's terms side by side, each labelled with its coefficient (small ones enlarged by a shown
    factor), and the result x_prev at the end: (H, W, 3)."""
    images, labels = [], []
    for term in b.terms:
        gain = display_gain(term.value[0])
        images.append(term.value[0] * gain)
        labels.append(term_label(term, b, gain))
    images.append(x_prev[0] if x_prev.dim() == 4 else x_prev)
    labels.append(f"= x_{paper_t(b.t_prev)}")
    return labelled_strip(images, labels, min_size=min_size, title=title)


def change_picture(b: StepBreakdown, x_t: Tensor, min_size: int = 128) -> np.ndarray:
    """The step's whole change x_{t−1} − x_t (= Σ terms − x_t) of the first image, x_t (C, H, W) as the sampler had
    it; grey for 0, enlarged by a shown factor when small: x_t and x_{t−1} look alike, so this is where the step can
    be seen. (H, W, 3)."""
    change = b.result()[0] - x_t.float()
    gain = display_gain(change)
    shown = f" (×{gain:g})" if gain != 1 else ""
    return labelled_strip([change * gain], [f"x_{paper_t(b.t_prev)} − x_{paper_t(b.t)}{shown}"], min_size=min_size)


def frame_breakdown(run: Trajectory, frame: Frame) -> StepBreakdown | None:
    """The stored frame's step (its first image) as terms, or None when the run did not keep them."""
    if run.settings is None or run.schedule is None or frame.pred_eps is None:
        return None
    return step_breakdown(run.schedule, frame.first_step(run.num_steps), run.settings)
