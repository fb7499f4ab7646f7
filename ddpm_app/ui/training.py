"""The Training tab: Algorithm 1 of DDPM on your photo. One step's pictures and loss, the per-pixel error, and the
loss at every t for the photo beside held-out images of the model's data."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import gradio as gr
import numpy as np
from torch import Tensor

from ddpm_app.checks import random_seed, resolve_seed
from ddpm_app.diffusion.loss import curve_timesteps
from ddpm_app.diffusion.schedule import paper_t
from ddpm_app.numbers import number
from ddpm_app.pictures import noise_picture, picture
from ddpm_app.serve.served import ServedModel
from ddpm_app.text import text, translated
from ddpm_app.ui import widgets
from ddpm_app.ui.i18n import i18n
from ddpm_app.ui.kit import (
    LATEX,
    TabHandlers,
    carried_into,
    help_markdown,
    output_image,
    photo_column,
    photo_given,
    starting_t,
)
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

TRAINING_HELP = text("training.help")


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
        """One step of Algorithm 1 on the photo at the paper's ``t`` (1…T, as the slider): (x₀, ε, x_t, ε̂,
        |ε − ε̂|² map, numbers, loss-curve plot)."""
        served = self.served(user)
        with user_errors(user.language):
            t = served.t_index(t)
            seed = resolve_seed(noise_seed)
            x0 = self.worker.run(served.prepare_photo, photo_given(photo))
        return self.worker.run(self._step_outputs, served, photo, x0, t, seed, user)

    def _step_outputs(self, served: ServedModel, photo: str, x0: Tensor, t: int, seed: int, user: UserState) -> tuple:
        """(On the worker; ``t`` is the table index.)"""
        step = training_step(served, x0, t, seed)
        user.lesson.step = step
        level = served.noise_level(t)
        numbers = text("training.numbers", user.language, t=paper_t(t), seed=seed, alpha_bar=number(level.alpha_bar),
                       sqrt_alpha_bar=number(level.sqrt_alpha_bar, latex=True),
                       sqrt_one_minus=number(level.sqrt_one_minus_alpha_bar, latex=True), loss=number(step.loss),
                       values=step.eps.numel(), loss_sum=f"{step.loss_sum:.1f}",
                       scale=number(heat_scale(step.squared_error)))
        plot = self._curve_plot(served, photo, user, t)
        return TrainingOutputs(picture(x0), noise_picture(step.eps), picture(step.x_t), noise_picture(step.pred_eps),
                               error_heatmap(step.squared_error, heat_scale(step.squared_error)), numbers,
                               plot).as_tuple()

    def _curve_plot(self, served: ServedModel, photo: str | None, user: UserState, t: int) -> np.ndarray:
        """The loss-curve plot for this model and photo, ``t`` marked: with the photo's curve once computed, else
        held-out only. (On the worker.)"""
        lesson = user.lesson
        has_curve = lesson.curve is not None and lesson.curve_for == (served.name, photo)
        key = (served.name, photo if has_curve else None, user.language)
        if lesson.plot is None or lesson.plot_for != key:
            lesson.plot = curve_plot(lesson.curve if has_curve else None, served.heldout, served.timesteps,
                                     user.language)
            lesson.plot_for = key
        return lesson.plot.at(paper_t(t))

    def loss_curve(self, photo: str | None, t: float, user: UserState) -> Iterator[tuple]:
        """The photo's loss at every t (several ε each) beside the held-out curve: (plot, summary); before a curve
        not computed yet, (no change, what is computed and how long it should take)."""
        served, language = self.served(user), user.language
        with user_errors(language):
            t = served.t_index(t)
            x0 = self.worker.run(served.prepare_photo, photo_given(photo))
        lesson = user.lesson
        if lesson.curve is None or lesson.curve_for != (served.name, photo):
            timesteps = len(curve_timesteps(served.timesteps, CURVE_TIMESTEPS))
            inputs = timesteps * CURVE_DRAWS
            estimate = self.estimate(served, inputs, language)
            yield gr.skip(), text("training.computing", language, timesteps=timesteps, draws=CURVE_DRAWS,
                                  inputs=inputs, estimate=text("punct.comma", language) + estimate if estimate else "")
            started = time.perf_counter()
            lesson.curve = self.worker.run(photo_curve, served, x0, CURVE_SEED)
            self.pace.record(served.name, inputs, time.perf_counter() - started)
            lesson.curve_for = (served.name, photo)
        curve = lesson.curve
        held = served.heldout
        summary = text("training.summary", language, timesteps=len(curve.timesteps), draws=curve.draws,
                       mean=number(sum(curve.mean) / len(curve.mean)))
        if held is not None and held.loss is not None:
            ratio = [a / b for a, b in zip(curve.mean, (held.loss.at(s) for s in curve.timesteps))]
            summary += text("training.summary_heldout", language, images=held.loss.num_images, data=held.data,
                            mean=number(sum(held.loss.mean) / len(held.loss.mean)), low=f"{min(ratio):.2f}",
                            high=f"{max(ratio):.2f}")
        else:
            summary += text("training.summary_none", language, note=translated(served.heldout_note, language))
        summary += text("training.summary_end", language)
        yield self.worker.run(self._curve_plot, served, photo, user, t), summary

    def random_t(self, user: UserState) -> int:
        """t ~ Uniform{1, …, T}, as Algorithm 1 draws it."""
        return 1 + random_seed() % self.served(user).timesteps


def training_tab(h: TrainingHandlers, user: gr.State, T: int, carry_from: gr.Image) -> gr.Slider:
    """The Training tab with its events; returns its t slider (a model switch sets its range). Opening it brings
    the Forward tab's photo (``carry_from``) along. Call inside ``gr.Tabs()``."""
    with gr.Tab(i18n("tab.training"), id="training", elem_id="training-tab") as tab:
        help_markdown("training.help")
        with gr.Row():
            photo = photo_column("training.photo", elem_id="train-photo")
            with gr.Column(scale=2, min_width=300):
                t = widgets.Slider(1, T, value=starting_t(T), step=1, label="t", elem_id="train-t")
                with gr.Row():
                    random_btn = gr.Button(i18n("training.random_t"), size="sm", min_width=120)
                    seed = widgets.Number(0, label=i18n("training.noise_seed"), precision=0, min_width=120)
                numbers = gr.Markdown(i18n("training.upload"), latex_delimiters=LATEX, label=i18n("label.numbers"),
                                      elem_id="train-numbers")
        with gr.Row():
            x0 = output_image("picture.x0", height=200)
            eps = output_image("picture.eps", height=200)
            x_t = output_image("picture.x_t", height=200)
            pred = output_image("picture.eps_hat", height=200, elem_id="train-pred")
            error = output_image("picture.error", height=200)
        plot = output_image("training.curve", height=None, pixelated=False, elem_id="train-curve")
        summary = gr.Markdown("", label=i18n("training.curve_label"), elem_id="train-summary")

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
