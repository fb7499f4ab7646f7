"""The Forward tab: q(x_t|x₀) noises a photo, x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε, with the numbers at t, a strip over t
and the noise schedules. Its x_t is where the Denoise tab starts."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import gradio as gr
import numpy as np
from matplotlib.figure import Figure

from ddpm_app.checks import flag
from ddpm_app.diffusion.schedule import paper_t
from ddpm_app.numbers import number
from ddpm_app.pictures import labelled_strip, noise_picture, picture
from ddpm_app.serve.served import ServedModel, schedule_curves
from ddpm_app.text import ENGLISH, text
from ddpm_app.ui import widgets
from ddpm_app.ui.i18n import i18n
from ddpm_app.ui.kit import (
    EXAMPLES,
    LATEX,
    NOISE_SHOWN,
    TabHandlers,
    help_markdown,
    output_image,
    starting_t,
    user_key,
)
from ddpm_app.ui.widgets import user_errors
from ddpm_app.views.plots import pixels
from ddpm_app.views.state import ForwardState, UserState

STRIP_COLUMNS, STRIP_FONT_SIZE = 4, 18  # the forward strip: two rows of four, captions legible on a phone

FORWARD_HELP = text("forward.help") + NOISE_SHOWN  # as the page shows it in English


class ForwardHandlers(TabHandlers):
    def noise(self, photo: str | None, t: float, fix_noise: bool, noise_seed: float | None,
              user: UserState, request: gr.Request | None = None) -> tuple:
        """x_t of the photo at the paper's ``t`` (1…T, as the slider): (x₀, ε, x_t, numbers, strip over t, schedule
        plot, SDEdit start, SDEdit note)."""
        served = self.served(user)
        with user_errors(user.language):
            t = served.t_index(t)
            outputs = self.worker.run(forward_view, served, user.forward, photo, t, flag(fix_noise, "fix the noise"),
                                      noise_seed, user.language)
        self.users.seen(user_key(user, request), user)
        return outputs

    def new_noise(self, photo: str | None, t: float, user: UserState, request: gr.Request | None = None) -> tuple:
        """Draw a fresh ε: (noise-seed box reset to −1, then the outputs of :meth:`noise`)."""
        return (-1, *self.noise(photo, t, False, -1, user, request))


def forward_view(served: ServedModel, forward: ForwardState, photo: str | None, t: int, fix_noise: bool,
                 noise_seed: float | None, language: str = ENGLISH) -> tuple:
    """Noise ``photo`` to the table index ``t`` (:meth:`~ddpm_app.views.state.ForwardState.update`) and draw the
    view: (x₀, ε, x_t, numbers, strip over t, schedule plot, SDEdit start, SDEdit note)."""
    forward.update(served, photo, t, fix_noise, noise_seed)
    numbers = forward_numbers(served, t, forward.eps_seed, language)
    plot = schedule_plot(served, t, language)
    if forward.x0 is None:
        return None, None, None, numbers, None, plot, None, text("forward.upload_first", language)
    ts = served.strip_timesteps()
    strip = labelled_strip(served.q_sample(forward.x0, ts, forward.eps), [f"t = {paper_t(s)}" for s in ts],
                           min_size=128, columns=STRIP_COLUMNS, font_size=STRIP_FONT_SIZE)
    note = text("forward.starting_point", language, t=paper_t(t), seed=forward.eps_seed)
    return (picture(forward.x0), noise_picture(forward.eps), picture(forward.x_t), numbers, strip, plot,
            picture(forward.x_t), note)


def forward_numbers(served: ServedModel, t: int, noise_seed: int | None = None, language: str = ENGLISH) -> str:
    """ᾱ_t, SNR and q(x_t|x₀) with the numbers filled in, for the table index ``t`` (shown as the paper's t)."""
    lv = served.noise_level(t)
    seed = text("forward.numbers_seed", language, seed=noise_seed) if noise_seed is not None else ""
    head = text("forward.numbers", language, t=paper_t(t), T=served.timesteps, kind=served.config.schedule.kind,
                seed=seed)
    return (f"{head}\n\n"
            f"$\\bar\\alpha_t$ = **{number(lv.alpha_bar)}** · "
            f"$\\sqrt{{\\bar\\alpha_t}}$ = **{number(lv.sqrt_alpha_bar)}** · "
            f"$\\sqrt{{1-\\bar\\alpha_t}}$ = **{number(lv.sqrt_one_minus_alpha_bar)}** · "
            f"SNR = $\\bar\\alpha_t/(1-\\bar\\alpha_t)$ = {number(lv.snr)} = **{lv.snr_db:+.1f} dB**\n\n"
            f"$$x_t = {number(lv.sqrt_alpha_bar, 3, latex=True)}\\,x_0 + "
            f"{number(lv.sqrt_one_minus_alpha_bar, 3, latex=True)}\\,\\varepsilon \\qquad (t = {paper_t(t)})$$")


def schedule_plot(served: ServedModel, t: int, language: str = ENGLISH) -> np.ndarray:
    """ᾱ_t and SNR (dB) against the paper's t for both schedules, the model's drawn bold, the table index ``t``
    marked: (H, W, 3).

    The curves are drawn once per model and language (matplotlib is slow); moving t only paints the marker line."""
    base, marks = _schedule_figure(served.timesteps, served.config.schedule.kind, language)
    img = base.copy()
    for x0, dx, top, bottom in marks:
        x = round(x0 + dx * paper_t(t))
        img[top:bottom, x - 1:x + 1] = (220, 20, 60)
    return img


@lru_cache(maxsize=8)
def _schedule_figure(timesteps: int, own: str, language: str) -> tuple[np.ndarray, list[tuple[float, float, int, int]]]:
    """The two panels, one above the other (narrow enough to stay legible on a phone), as pixels, and for each
    the marker geometry: x pixel = x0 + dx·t for the paper's t, rows top…bottom."""
    fig = Figure(figsize=(4.8, 4.4), dpi=100, layout="constrained")
    fig.suptitle(text("plot.schedules_title", language), fontsize=12)
    ax_a, ax_s = fig.subplots(2, 1, sharex=True)
    ts = np.arange(1, timesteps + 1)  # the paper's t
    for kind, (abar, snr_db) in schedule_curves(timesteps).items():
        style = dict(lw=2.6 if kind == own else 1.2, alpha=1.0 if kind == own else 0.55,
                     label=text("plot.this_model", language, kind=kind) if kind == own else kind)
        ax_a.plot(ts, abar, **style)
        ax_s.plot(ts, snr_db, **style)
    for ax, name in ((ax_a, r"$\bar\alpha_t$"), (ax_s, "SNR (dB)")):
        ax.set_ylabel(name, fontsize=11)
        ax.tick_params(labelsize=10)
        ax.grid(alpha=0.3)
    ax_s.set_xlabel(text("plot.t", language), fontsize=11)
    ax_a.legend(fontsize=10, loc="lower left")  # the top right holds the picture's buttons
    image = pixels(fig)
    height = image.shape[0]
    marks = []
    for ax in (ax_a, ax_s):
        (x_start, _), (x_end, _) = ax.transData.transform([(1, 0), (timesteps, 0)])
        box = ax.get_window_extent()  # pixels from the bottom left
        dx = (x_end - x_start) / max(timesteps - 1, 1)
        marks.append((x_start - dx, dx, int(height - box.y1) + 1, int(height - box.y0) - 1))
    return image, marks


@dataclass
class ForwardTab:
    """The Forward tab's components that other tabs' events use: its inputs and t slider, and the pictures and
    numbers a model switch refreshes."""

    photo: widgets.PhotoInput
    t: gr.Slider
    fix_noise: gr.Checkbox
    noise_seed: gr.Number
    new_noise: gr.Button
    outputs: list  # of the forward view, in the order of :meth:`ForwardHandlers.noise`'s first six values

    def noise_event(self, h: ForwardHandlers, user: gr.State, sdedit: list) -> dict:
        """The event that redraws the view (and ``sdedit``, the Denoise tab's start picture and note)."""
        return dict(fn=h.noise, inputs=[self.photo, self.t, self.fix_noise, self.noise_seed, user],
                    outputs=self.outputs + sdedit, show_progress="hidden", trigger_mode="always_last",
                    concurrency_limit=4)


def forward_tab(T: int, numbers: str, plot: np.ndarray) -> ForwardTab:
    """The Forward tab's layout, showing ``numbers`` and ``plot`` at first (its events: :func:`forward_events`, once
    the Denoise tab exists); call inside ``gr.Tabs()``."""
    with gr.Tab(i18n("tab.forward"), id="forward"):
        help_markdown("forward.help", noise_pictures=True)
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                photo = widgets.PhotoInput(label=i18n("forward.photo"), type="filepath",
                                           image_mode=None, sources=["upload", "clipboard"], height=260,
                                           elem_id="fwd-photo", elem_classes="ddpm-photo")
                gr.Examples([[str(p)] for p in EXAMPLES], inputs=photo, label=i18n("label.examples"),
                            cache_examples=False)
            with gr.Column(scale=2, min_width=300):
                # t right above x_t, so x_t stays in view while t moves (on a phone too); the pictures
                # in the order of x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε
                t_slider = widgets.Slider(1, T, value=starting_t(T), step=1, label="t", elem_id="t-slider")
                with gr.Row():
                    q_xt = output_image("picture.x_t", height=240, elem_id="fwd-xt")
                    q_x0 = output_image("picture.x0", height=240)
                    q_eps = output_image("picture.eps", height=240)
                numbers_md = gr.Markdown(numbers, latex_delimiters=LATEX, label=i18n("label.numbers"),
                                         elem_id="fwd-numbers")
                with gr.Row():
                    fix_noise = gr.Checkbox(True, label=i18n("forward.fix_noise"), min_width=140)
                    noise_seed = widgets.Number(-1, label=i18n("forward.noise_seed"), precision=0, min_width=120)
                    new_noise = gr.Button(i18n("forward.new_noise"), size="sm", min_width=80)
        with gr.Row():
            strip = output_image("forward.strip", height=None, pixelated=False, scale=3, min_width=300,
                                 elem_id="fwd-strip")
            plot_image = output_image("forward.schedules", height=None, pixelated=False, value=plot, scale=2,
                                      min_width=300, show_label=False, elem_id="fwd-plot")
    return ForwardTab(photo, t_slider, fix_noise, noise_seed, new_noise,
                      [q_x0, q_eps, q_xt, numbers_md, strip, plot_image])


def forward_events(h: ForwardHandlers, tab: ForwardTab, user: gr.State, sdedit: list) -> None:
    """Every change of the photo, t or the noise redraws the view and Denoise's starting point (``sdedit``)."""
    noise = tab.noise_event(h, user, sdedit)
    tab.t.change(**noise, api_name="noise")
    for trigger in (tab.photo.change, tab.fix_noise.change, tab.noise_seed.submit):
        trigger(**noise, api_visibility="private")
    tab.new_noise.click(h.new_noise, [tab.photo, tab.t, user], [tab.noise_seed, *noise["outputs"]],
                        api_visibility="private", show_progress="hidden", trigger_mode="always_last",
                        concurrency_limit=4)
