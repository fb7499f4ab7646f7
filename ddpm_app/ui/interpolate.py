"""The Interpolate tab: DDIM from points on the great circle between two seeds' starting noises x_T, a strip of the
images from one seed's to the other's."""

from __future__ import annotations

from typing import Iterator

import gradio as gr

from ddpm_app.checks import flag, resolve_seed, whole_number
from ddpm_app.diffusion.samplers import SamplerSettings
from ddpm_app.diffusion.schedule import paper_t
from ddpm_app.image import to_uint8
from ddpm_app.pictures import labelled_strip
from ddpm_app.serve.runs import Throttle, sampler_words, stream
from ddpm_app.serve.served import ServedModel
from ddpm_app.serve.server import JOBS
from ddpm_app.text import text
from ddpm_app.ui import widgets
from ddpm_app.ui.i18n import i18n
from ddpm_app.ui.kit import DEFAULT_SETTINGS, TabHandlers, help_markdown, output_image
from ddpm_app.ui.widgets import user_errors
from ddpm_app.views.state import UserState

MAX_INTERPOLATION = 10  # images in an interpolation strip

INTERPOLATE_HELP = text("interpolate.help")


class InterpolateHandlers(TabHandlers):
    def interpolate(self, seed_a: float, seed_b: float, n: float, steps: float, eta: float, clip_x0: bool,
                    user: UserState) -> Iterator[tuple]:
        """DDIM from slerps between two seeds' x_T (and, for η > 0, their z), streamed: (strip of x̂₀ or the
        images, status)."""
        served, language = self.served(user), user.language
        with user_errors(language):
            a, b = resolve_seed(seed_a), resolve_seed(seed_b)
            n = whole_number(n, "number of images", 2, MAX_INTERPOLATION)
            settings = SamplerSettings.checked("ddim", steps, eta, flag(clip_x0, "clip x̂₀"), served.timesteps)
        title = text("interpolate.title", language, a=a, b=b,
                     settings=sampler_words(settings, served.timesteps - 1, language))
        labels = [f"w = {i / (n - 1):.2f}" for i in range(n)]

        def render(step) -> tuple:
            images = step.x_prev if step.is_last else step.pred_x0
            if step.is_last:
                user.lesson.interpolation = to_uint8(images).cpu()
                user.lesson.interpolation_title = text("interpolate.figure_title", language, title=title)
            status = (text("interpolate.done", language, title=title) if step.is_last else
                      text("interpolate.step", language, step=step.index + 1, steps=step.num_steps, t=paper_t(step.t)))
            return labelled_strip(list(images), labels, min_size=96), status

        yield from stream(served.interpolate(a, b, n, settings), None, Throttle(self.preview_interval), render,
                          self.library.worker)


def interpolate_tab(h: InterpolateHandlers, user: gr.State, first: ServedModel) -> tuple[gr.Slider, gr.Slider]:
    """The Interpolate tab with its events; returns its DDIM-steps and η sliders (a model switch sets them). Call
    inside ``gr.Tabs()``."""
    T = first.timesteps
    with gr.Tab(i18n("tab.interpolate"), id="interpolate", elem_id="interpolate-tab"):
        help_markdown("interpolate.help")
        with gr.Row():
            seed_a = widgets.Number(1, label=i18n("interpolate.seed_a"), precision=0, min_width=100)
            seed_b = widgets.Number(2, label=i18n("interpolate.seed_b"), precision=0, min_width=100)
            n = widgets.Slider(2, MAX_INTERPOLATION, value=6, step=1, label=i18n("generate.images"), min_width=160)
            steps = widgets.Slider(1, T, value=min(25, T), step=1, label=i18n("sampler.ddim_steps"), min_width=160)
            eta = widgets.Slider(0, 1, value=first.config.sampling.ddim_eta, step=0.05,
                                 label=i18n("interpolate.eta"), min_width=120, elem_id="interp-eta")
            clip = gr.Checkbox(DEFAULT_SETTINGS.clip_x0, label=i18n("interpolate.clip"), min_width=100)
        run_btn = gr.Button(i18n("interpolate.button"), variant="primary")
        status = gr.Markdown("", label=i18n("label.status"), elem_id="interp-status")
        strip = output_image("interpolate.strip", height=None, pixelated=False, elem_id="interp-strip")

    run_btn.click(h.interpolate, [seed_a, seed_b, n, steps, eta, clip, user], [strip, status],
                  api_name="interpolate", show_progress="hidden", concurrency_limit=1, concurrency_id=JOBS)
    return steps, eta
