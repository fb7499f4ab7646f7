"""The Training tab: Algorithm 1 of DDPM on your photo. One step's pictures and loss, the per-pixel error, and the
loss at every t for the photo beside held-out images of the model's data."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import gradio as gr
import numpy as np
from torch import Tensor

from ddpm_app.diffusion.loss import curve_timesteps
from ddpm_app.numbers import number
from ddpm_app.pictures import noise_picture, picture
from ddpm_app.serve.inputs import random_seed, resolve_seed
from ddpm_app.serve.served import ServedModel
from ddpm_app.ui import widgets
from ddpm_app.ui.kit import LATEX, TabHandlers, carried_into, output_image, photo_column, photo_given
from ddpm_app.ui.widgets import user_errors
from ddpm_app.views.state import UserState
from ddpm_app.views.training import (
    CURVE_DRAWS,
    CURVE_TIMESTEPS,
    curve_plot,
    error_heatmap,
    heat_scale,
    photo_curve,
    training_step,
)

CURVE_SEED = 0  # the photo's loss curve draws its ε from this seed: the same curve every time

TRAINING_HELP = r"""**Algorithm 1 of DDPM, on your photo.** Training repeats one step: take an image $x_0$, pick
$t$ uniformly, draw $\varepsilon \sim \mathcal N(0, I)$, form $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,
\varepsilon$ and move $\theta$ down the gradient of $\lVert\varepsilon - \varepsilon_\theta(x_t, t)\rVert^2$.
Where does that loss come from? The ELBO's term for step $t$ is a KL divergence between two Gaussians of equal
variance, $q(x_{t-1}\mid x_t, x_0)$ and $p_\theta(x_{t-1}\mid x_t)$; it is a weighted squared distance between
their means, and with both means written through the noise it becomes a weighted $\lVert\varepsilon -
\hat\varepsilon\rVert^2$. DDPM drops the weight. Below: the pictures of one such step, the per-pixel error,
and the loss at every $t$ — for your photo and for held-out images of the model's data."""


@dataclass(frozen=True)
class TrainingOutputs:
    """What the training view shows after a step."""

    x0: object
    eps: object
    x_t: object
    pred_eps: object
    heatmap: object
    numbers: str
    plot: object

    def as_tuple(self) -> tuple:
        return (self.x0, self.eps, self.x_t, self.pred_eps, self.heatmap, self.numbers, self.plot)


class TrainingHandlers(TabHandlers):
    def train_step(self, photo: str | None, t: float, noise_seed: float | None, user: UserState) -> tuple:
        """One step of Algorithm 1 on the photo: (x₀, ε, x_t, ε̂, |ε − ε̂|² map, numbers, loss-curve plot)."""
        served = self.served(user)
        with user_errors():
            t = served.check_t(t)
            seed = resolve_seed(noise_seed)
            x0 = self.worker.run(served.prepare_photo, photo_given(photo))
        return self.worker.run(self._step_outputs, served, photo, x0, t, seed, user)

    def _step_outputs(self, served: ServedModel, photo: str, x0: Tensor, t: int, seed: int, user: UserState) -> tuple:
        """(On the worker.)"""
        step = training_step(served, x0, t, seed)
        user.lesson.step = step
        level = served.noise_level(t)
        numbers = (f"**t = {t}**, noise seed {seed} · $\\bar\\alpha_t$ = {number(level.alpha_bar)}"
                   f"\n\n$$x_{{{t}}} = {number(level.sqrt_alpha_bar, latex=True)}\\,x_0 + "
                   f"{number(level.sqrt_one_minus_alpha_bar, latex=True)}\\,\\varepsilon$$\n\n"
                   f"loss $\\frac{{1}}{{D}}\\lVert\\varepsilon - \\hat\\varepsilon\\rVert^2$ = **{number(step.loss)}** "
                   f"(the mean over D = {step.eps.numel()} values: what training minimises) · "
                   f"$\\lVert\\varepsilon - \\hat\\varepsilon\\rVert^2$ = **{step.loss_sum:.1f}** (the tutorial's "
                   f"per-image sum). A network that predicted ε̂ = 0 would score about 1 per value. "
                   f"Heat map of (ε − ε̂)²: black 0 … white {number(heat_scale(step.squared_error))}.")
        plot = self._curve_plot(served, photo, user, t)
        return TrainingOutputs(picture(x0), noise_picture(step.eps), picture(step.x_t), noise_picture(step.pred_eps),
                               error_heatmap(step.squared_error, heat_scale(step.squared_error)), numbers,
                               plot).as_tuple()

    def _curve_plot(self, served: ServedModel, photo: str | None, user: UserState, t: int) -> np.ndarray:
        """The loss-curve plot for this model and photo, ``t`` marked: with the photo's curve once computed, else
        held-out only. (On the worker.)"""
        lesson = user.lesson
        has_curve = lesson.curve is not None and lesson.curve_for == (served.name, photo)
        key = (served.name, photo if has_curve else None)
        if lesson.plot is None or lesson.plot_for != key:
            lesson.plot = curve_plot(lesson.curve if has_curve else None, served.heldout, served.timesteps)
            lesson.plot_for = key
        return lesson.plot.at(t)

    def loss_curve(self, photo: str | None, t: float, user: UserState) -> Iterator[tuple]:
        """The photo's loss at every t (several ε each) beside the held-out curve: (plot, summary); before a curve
        not computed yet, (no change, what is computed and how long it should take)."""
        served = self.served(user)
        with user_errors():
            t = served.check_t(t)
            x0 = self.worker.run(served.prepare_photo, photo_given(photo))
        lesson = user.lesson
        if lesson.curve is None or lesson.curve_for != (served.name, photo):
            timesteps = len(curve_timesteps(served.timesteps, CURVE_TIMESTEPS))
            inputs = timesteps * CURVE_DRAWS
            estimate = self.estimate(served, inputs)
            yield gr.skip(), (f"*Computing your photo's loss at {timesteps} timesteps, {CURVE_DRAWS} ε each "
                              f"({inputs} network inputs in one call){f', {estimate}' if estimate else ''}…*")
            started = time.perf_counter()
            lesson.curve = self.worker.run(photo_curve, served, x0, CURVE_SEED)
            self.pace.record(served.name, inputs, time.perf_counter() - started)
            lesson.curve_for = (served.name, photo)
        curve = lesson.curve
        held = served.heldout
        summary = (f"Your photo: the loss at {len(curve.timesteps)} timesteps, {curve.draws} ε each "
                   f"(mean over t: {number(sum(curve.mean) / len(curve.mean))}). ")
        if held is not None and held.loss is not None:
            ratio = [a / b for a, b in zip(curve.mean, (held.loss.at(s) for s in curve.timesteps))]
            summary += (f"Held-out images ({held.loss.num_images}, {held.data}): mean over t "
                        f"{number(sum(held.loss.mean) / len(held.loss.mean))}; your photo's loss is "
                        f"{min(ratio):.2f}–{max(ratio):.2f}× theirs across t. ")
        else:
            summary += f"No held-out curve to compare with: {served.heldout_note}. "
        summary += ("At large t, x_t is almost pure noise, so ε̂ ≈ x_t and the loss is small; at small t the noise "
                    "is faint and hard to tell from the photo's own detail, so the loss is largest there.")
        yield self.worker.run(self._curve_plot, served, photo, user, t), summary

    def random_t(self, user: UserState) -> int:
        """t ~ Uniform{0, …, T−1}, as Algorithm 1 draws it."""
        return random_seed() % self.served(user).timesteps


def training_tab(h: TrainingHandlers, user: gr.State, T: int, carry_from: gr.Image) -> gr.Slider:
    """The Training tab with its events; returns its t slider (a model switch sets its range). Opening it brings
    the Forward tab's photo (``carry_from``) along. Call inside ``gr.Tabs()``."""
    with gr.Tab("Training", id="training", elem_id="training-tab") as tab:
        gr.Markdown(TRAINING_HELP, latex_delimiters=LATEX)
        with gr.Row():
            photo = photo_column("Photo x₀")
            with gr.Column(scale=2, min_width=300):
                t = widgets.Slider(0, T - 1, value=T // 4, step=1, label="t", elem_id="train-t")
                with gr.Row():
                    random_btn = gr.Button("Random t (as in training)", size="sm", min_width=120)
                    seed = widgets.Number(0, label="Noise seed for ε", precision=0, min_width=120)
                numbers = gr.Markdown("Upload a photo (or pick an example).", latex_delimiters=LATEX,
                                      label="numbers", elem_id="train-numbers")
        with gr.Row():
            x0 = output_image("x₀", height=200)
            eps = output_image("ε (×½)", height=200)
            x_t = output_image("x_t", height=200)
            pred = output_image("ε̂ (×½)", height=200, elem_id="train-pred")
            error = output_image("(ε − ε̂)²", height=200)
        plot = output_image("loss against t", height=None, pixelated=False, elem_id="train-curve")
        summary = gr.Markdown("", label="loss curve", elem_id="train-summary")

    quick = dict(show_progress="hidden", trigger_mode="always_last", concurrency_limit=4)
    outputs = [x0, eps, x_t, pred, error, numbers, plot]
    inputs = [photo, t, seed, user]
    t.change(h.train_step, inputs, outputs, api_name="train_step", **quick)
    seed.submit(h.train_step, inputs, outputs, api_visibility="private", **quick)
    photo.change(h.train_step, inputs, outputs, api_visibility="private", **quick).success(
        h.loss_curve, [photo, t, user], [plot, summary], api_name="loss_curve",
        show_progress="minimal", show_progress_on=plot).success(  # mark the t the slider has got to meanwhile
        h.train_step, inputs, outputs, api_visibility="private", **quick)
    random_btn.click(h.random_t, user, t, api_visibility="private", queue=False)
    carried_into(h, tab, photo, carry_from, user)
    return t
