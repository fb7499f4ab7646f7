"""The Gradio app: watch q(x_t|x₀) noise a photo, and watch the reverse chain p_θ turn noise into images.

:func:`build` makes the Blocks from a :class:`~ddpm_app.serve.library.ModelLibrary`: it lays out one tab per module
of this package (each module holds its tab's layout and its handlers) and connects the events that cross tabs.
:class:`Handlers` holds every tab's handlers over their shared state, plain functions (or generators) of widget
values and the user's :class:`~ddpm_app.views.state.UserState`, so the tests call them directly. The math lives in the
library: the tabs only turn widget values into calls and results into pictures and text.
"""

from __future__ import annotations

import gradio as gr

from ddpm_app.serve.library import ModelLibrary
from ddpm_app.serve.runs import DEFAULT_PREVIEW_INTERVAL, DEFAULT_TRAJECTORY_BYTES
from ddpm_app.serve.served import ServedModel
from ddpm_app.serve.server import JOBS, limit_waiting
from ddpm_app.ui import widgets
from ddpm_app.ui.compare import CompareHandlers, compare_tab
from ddpm_app.ui.denoise import DenoiseHandlers, denoise_tab
from ddpm_app.ui.figures import FigureHandlers, figure_row
from ddpm_app.ui.forward import ForwardHandlers, forward_events, forward_numbers, forward_tab, schedule_plot
from ddpm_app.ui.frames import FramesHandlers, frames_tab
from ddpm_app.ui.generate import GenerateHandlers, generate_events, generate_tab
from ddpm_app.ui.interpolate import InterpolateHandlers, interpolate_tab
from ddpm_app.ui.kit import DEFAULT_SETTINGS, FIRST_BATCH, first_settings
from ddpm_app.ui.lab import LabHandlers, lab_tab
from ddpm_app.ui.likelihood import LikelihoodHandlers, likelihood_tab
from ddpm_app.ui.model import ModelHandlers, model_card, model_events, model_header, model_tab
from ddpm_app.ui.training import TrainingHandlers, training_tab
from ddpm_app.views.state import Users, UserState

QUEUE_SIZE = 16  # sampling jobs waiting at most; more get "queue full"
VIEW_QUEUE_SIZE = 32  # quick views (a frame, a training step, an export) waiting at most, counted apart from jobs

CSS = """
/* small model outputs: scale up to the component, keep the pixels sharp */
.pixelated .image-container > button, .pixelated .image-frame { width: 100%; height: 100%; }
.pixelated .image-frame img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
/* a picture's label sits above it, and its buttons beside the label, instead of both floating over the picture
   (on a phone a floating label covers small images and runs under the buttons) */
.ddpm-picture > label[data-testid="block-label"] { position: static !important; width: fit-content;
  max-width: calc(100% - 72px); margin-bottom: 6px; }
.ddpm-picture { display: flex !important; flex-flow: column nowrap !important; }
.ddpm-picture .image-container { flex: 1 1 auto; min-height: 0; overflow: visible; }
.ddpm-picture .image-container > .icon-button-wrapper { top: -36px !important; }
/* the model table: words whole, the property names on one line, so it stays readable on a phone */
#model-summary td, #model-summary th { overflow-wrap: normal; word-break: normal; }
#model-summary td:first-child { white-space: nowrap; }
#model-summary code { word-break: break-all; }
/* the download box: one line high until there is a file */
.ddpm-download .empty.large { min-height: 3rem !important; }
.ddpm-stats { font-variant-numeric: tabular-nums; line-height: 1.6; }
/* an equation wider than a phone scrolls sideways inside its box instead of being cut off */
.katex-display { overflow-x: auto; overflow-y: hidden; }
.ddpm-stats progress { width: 100%; height: 0.9em; }
"""
# Gradio drops @media rules from `css`, so the phone-width rule goes into the page head.
# It lets all five tabs fit on one line instead of hiding three behind an overflow menu.
HEAD = """<style>
@media (max-width: 480px) {
  .tabs .tab-container button { padding-left: 6px !important; padding-right: 6px !important; }
}
</style>"""
THEME = gr.themes.Soft(font=["system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"],
                       font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"])

INTRO = """# Denoising diffusion, step by step
A diffusion model learns to undo noise. **Forward**, a photo is mixed with Gaussian noise until nothing is left;
**reverse**, a network ε_θ predicts the noise in x_t and the sampler removes a little of it at each step."""


class Handlers(GenerateHandlers, FramesHandlers, ForwardHandlers, DenoiseHandlers, TrainingHandlers,
               LikelihoodHandlers, CompareHandlers, InterpolateHandlers, FigureHandlers, ModelHandlers):
    """Every tab's event handlers (but the 2-D lab's, :class:`~ddpm_app.ui.lab.LabHandlers`), over the state they
    share (:class:`~ddpm_app.ui.kit.TabHandlers`): each tab's module defines its own."""


def first_views(first: ServedModel) -> tuple:
    """What the page shows of the first model before anyone asks: (header, Forward's numbers and schedule plot at
    t = T/4, the model card's table, text and samples)."""
    t = first.timesteps // 4
    return model_header(first), forward_numbers(first, t), schedule_plot(first, t), model_card(first)


def build(library: ModelLibrary, preview_interval: float | None = DEFAULT_PREVIEW_INTERVAL,
          max_trajectory_bytes: int = DEFAULT_TRAJECTORY_BYTES, queue_size: int = QUEUE_SIZE,
          users: Users | None = None) -> gr.Blocks:
    """The app's Blocks, queued; launch it with ``css=CSS, head=HEAD, theme=THEME``. ``users`` decides how long
    each user's results stay in memory (see :class:`~ddpm_app.views.state.Users`)."""
    h = Handlers(library, preview_interval, max_trajectory_bytes, users=users)
    first = library.get()
    T = first.timesteps
    settings = first_settings(first)
    # the first model's pictures and numbers, computed on the device thread like all tensor work: a tensor
    # operation on this thread would start a second OpenMP team, and sampling on a 2-core CPU then measured
    # 35-50 % slower for as long as the server runs (benchmarks/app_stream.py)
    header_text, numbers_text, plot_image, (table, card_text, samples_path) = library.worker.run(first_views, first)

    with widgets.Blocks(title="DDPM step by step", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        user = gr.State(UserState())
        gr.Markdown(INTRO)
        header = gr.Markdown(header_text, label="model")

        with gr.Tabs() as tabs:
            generate = generate_tab(T, settings, first.first_run(FIRST_BATCH, DEFAULT_SETTINGS.steps).batch)
            lab_tab(LabHandlers(library.worker), user)  # the 2-D lab: DDPM on points, trained live
            frames = frames_tab(h, user)
            forward = forward_tab(T, numbers_text, plot_image)
            denoise = denoise_tab(h, user, T, settings, frames)
            train_t = training_tab(h, user, T, forward.photo)
            likelihood_tab(h, user, T, forward.photo)
            compare_t = compare_tab(h, user, T)
            interpolation = interpolate_tab(h, user, first)
            model = model_tab(library.names, first.name, table, card_text, samples_path)
        figure_row(h, user, tabs)

        generate_events(h, generate, frames, user)
        sdedit = [denoise.start, denoise.note]
        forward_events(h, forward, user, sdedit)
        updated = [header, forward.t, generate.steps, denoise.steps, generate.batch, generate.clip, denoise.clip,
                   generate.eta, denoise.eta]
        model_events(h, model, user, header, updated, forward.noise_event(h, user, sdedit),
                     [train_t, compare_t, *interpolation])
        demo.unload(h.leave)
    demo.queue(max_size=None, default_concurrency_limit=2)
    limit_waiting(demo, JOBS, queue_size, VIEW_QUEUE_SIZE)  # views are never refused because jobs fill the queue
    return demo
