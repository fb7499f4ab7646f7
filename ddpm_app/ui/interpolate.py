"""The Interpolate tab: DDIM from points on the great circle between two seeds' starting noises x_T, a strip of the
images from one seed's to the other's."""

from __future__ import annotations

from typing import Iterator

import gradio as gr

from ddpm_app.diffusion.samplers import SamplerSettings
from ddpm_app.image import to_uint8
from ddpm_app.pictures import labelled_strip
from ddpm_app.serve.inputs import flag, resolve_seed, whole_number
from ddpm_app.serve.runs import Throttle, stream
from ddpm_app.serve.served import ServedModel
from ddpm_app.serve.server import JOBS
from ddpm_app.ui import widgets
from ddpm_app.ui.kit import DEFAULT_SETTINGS, LATEX, TabHandlers, output_image
from ddpm_app.ui.widgets import user_errors
from ddpm_app.views.state import UserState

MAX_INTERPOLATION = 10  # images in an interpolation strip

INTERPOLATE_HELP = r"""**Between two seeds.** DDIM with $\eta = 0$ is a deterministic map from $x_T$ to an image.
Take the two seeds' starting noises, walk between them along a great circle (spherical interpolation keeps each
interpolant as long as a real Gaussian sample), and run the map from each: the images change smoothly from one
seed's image to the other's (the DDIM paper's figure). η starts at the model's own (as in **Generate**); with
$\eta > 0$ each step's fresh noise $z$ is interpolated between the two seeds' in the same way, so the ends are
still exactly the two seeds' **Generate** images with these settings."""


class InterpolateHandlers(TabHandlers):
    def interpolate(self, seed_a: float, seed_b: float, n: float, steps: float, eta: float, clip_x0: bool,
                    user: UserState) -> Iterator[tuple]:
        """DDIM from slerps between two seeds' x_T (and, for η > 0, their z), streamed: (strip of x̂₀ or the
        images, status)."""
        served = self.served(user)
        with user_errors():
            a, b = resolve_seed(seed_a), resolve_seed(seed_b)
            n = whole_number(n, "number of images", 2, MAX_INTERPOLATION)
            settings = SamplerSettings.checked("ddim", steps, eta, flag(clip_x0, "clip x̂₀"), served.timesteps)
        title = f"seed {a} → seed {b}, {settings.describe(served.timesteps - 1)}"
        labels = [f"w = {i / (n - 1):.2f}" for i in range(n)]

        def render(step) -> tuple:
            images = step.x_prev if step.is_last else step.pred_x0
            if step.is_last:
                user.lesson.interpolation = to_uint8(images).cpu()
                user.lesson.interpolation_title = f"Interpolation: {title}"
            status = (f"Done: {title}." if step.is_last else
                      f"Step {step.index + 1} / {step.num_steps} (t = {step.t}); shown: the current guesses x̂₀.")
            return labelled_strip(list(images), labels, min_size=96), status

        yield from stream(served.interpolate(a, b, n, settings), None, Throttle(self.preview_interval), render,
                          self.library.worker)


def interpolate_tab(h: InterpolateHandlers, user: gr.State, first: ServedModel) -> tuple[gr.Slider, gr.Slider]:
    """The Interpolate tab with its events; returns its DDIM-steps and η sliders (a model switch sets them). Call
    inside ``gr.Tabs()``."""
    T = first.timesteps
    with gr.Tab("Interpolate", id="interpolate", elem_id="interpolate-tab"):
        gr.Markdown(INTERPOLATE_HELP, latex_delimiters=LATEX)
        with gr.Row():
            seed_a = widgets.Number(1, label="Seed a", precision=0, min_width=100)
            seed_b = widgets.Number(2, label="Seed b", precision=0, min_width=100)
            n = widgets.Slider(2, MAX_INTERPOLATION, value=6, step=1, label="Images", min_width=160)
            steps = widgets.Slider(1, T, value=min(25, T), step=1, label="DDIM steps K", min_width=160)
            eta = widgets.Slider(0, 1, value=first.config.sampling.ddim_eta, step=0.05, label="η (eta)",
                                 min_width=120, elem_id="interp-eta")
            clip = gr.Checkbox(DEFAULT_SETTINGS.clip_x0, label="Clip x̂₀", min_width=100)
        run_btn = gr.Button("Interpolate", variant="primary")
        status = gr.Markdown("", label="status", elem_id="interp-status")
        strip = output_image("from seed a (w = 0) to seed b (w = 1)", height=None, pixelated=False,
                             elem_id="interp-strip")

    run_btn.click(h.interpolate, [seed_a, seed_b, n, steps, eta, clip, user], [strip, status],
                  api_name="interpolate", show_progress="hidden", concurrency_limit=1, concurrency_id=JOBS)
    return steps, eta
