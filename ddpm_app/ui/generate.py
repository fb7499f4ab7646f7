"""The Generate tab: the reverse chain p_θ from pure noise x_T to images, streamed step by step."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import gradio as gr

from ddpm_app.checks import flag, resolve_seed
from ddpm_app.diffusion.samplers import SamplerSettings
from ddpm_app.serve.inputs import MAX_BATCH
from ddpm_app.serve.runs import PREVIEW_BUDGET, RunName, Throttle, Trajectory, stream
from ddpm_app.serve.server import JOBS
from ddpm_app.text import text
from ddpm_app.ui import widgets
from ddpm_app.ui.frames import FramesTab
from ddpm_app.ui.i18n import i18n
from ddpm_app.ui.kit import (
    NOISE_SHOWN,
    STOPPED,
    TabHandlers,
    help_markdown,
    output_image,
    run_preview,
    sampler_controls,
    user_key,
)
from ddpm_app.ui.widgets import user_errors
from ddpm_app.views.state import UserState

# what each sampler runs from x_T (catalogue keys)
SAMPLER_CHOICES = [("sampler.ddpm", "ddpm"), ("sampler.ddim", "ddim")]

# its x̂₀ formula is in braces: KaTeX breaks a braced group nowhere, so it is never split across two lines
GENERATE_HELP = text("generate.help") + NOISE_SHOWN  # as the page shows it in English


class GenerateHandlers(TabHandlers):
    """Generate streams previews; every step is stored in the user's trajectory as it is computed, so Stop (which
    closes the generator) keeps what was done."""

    def generate(self, sampler: str, steps: float, eta: float, seed: float | None, batch: float, clip_x0: bool,
                 show_eps: bool, user: UserState, request: gr.Request | None = None) -> Iterator[tuple]:
        """Sample from noise, yielding (x_t, x̂₀, ε̂, status, seed used, frame-slider update) per preview."""
        served = self.served(user)
        with user_errors(user.language):
            settings = served.settings(sampler, steps, eta, clip_x0)
            batch = served.check_batch(batch)
            seed = resolve_seed(seed)
            show_eps = flag(show_eps, "show ε̂")
        run = Trajectory.of(RunName(settings, served.timesteps - 1, seed), served.shape(batch), served.schedule,
                            self.max_trajectory_bytes, user.language, model=served.name)
        user.keep("generate", run)  # a new object per run: a stopped run still finishing its step cannot write into it
        self.users.seen(user_key(user, request), user)
        started = time.perf_counter()
        yield from stream(served.sample(settings, batch, seed), run, Throttle(self.preview_interval, budget=PREVIEW_BUDGET),
                          lambda step: run_preview(served, run, step, started, show_eps, user.language),
                          self.library.worker)


@dataclass
class GenerateTab:
    """The Generate tab's components."""

    sampler: gr.Radio
    steps: gr.Slider
    eta: gr.Slider
    seed: gr.Number
    seed_used: gr.Textbox
    batch: gr.Slider
    clip: gr.Checkbox
    show_eps: gr.Checkbox
    run: gr.Button
    stop: gr.Button
    status: gr.HTML
    x_t: gr.Image
    x0: gr.Image
    eps: gr.Image


def generate_tab(T: int, settings: SamplerSettings, batch: int) -> GenerateTab:
    """The Generate tab's layout (its events: :func:`generate_events`, once the Frames tab exists); call inside
    ``gr.Tabs()``."""
    with gr.Tab(i18n("tab.generate"), id="generate"):
        help_markdown("generate.help", noise_pictures=True)
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                sampler, steps, eta = sampler_controls(T, SAMPLER_CHOICES, settings)
                with gr.Row():
                    seed = widgets.Number(-1, label=i18n("generate.seed"), precision=0, min_width=120)
                    seed_used = gr.Textbox(label=i18n("generate.seed_used"), interactive=False, min_width=120)
                images = widgets.Slider(1, MAX_BATCH, value=batch, step=1, label=i18n("generate.images"))
                with gr.Row():
                    clip = gr.Checkbox(settings.clip_x0, label=i18n("generate.clip"), min_width=120)
                    show_eps = gr.Checkbox(False, label=i18n("generate.show_eps"), min_width=120,
                                           info=i18n("generate.show_eps_info"))
                with gr.Row():
                    run_btn = gr.Button(i18n("generate.button"), variant="primary", min_width=100)
                    stop_btn = gr.Button(i18n("button.stop"), variant="stop", min_width=80)
            with gr.Column(scale=2, min_width=300):
                status = gr.HTML(i18n("generate.press"), label=i18n("label.progress"), elem_id="gen-status",
                                 min_height=60)
                with gr.Row():
                    # at least 200 px each: one picture per line on a phone, big enough to see faces
                    x_t = output_image("picture.x_t", elem_id="gen-xt", min_width=200)
                    x0 = output_image("picture.pred_x0", elem_id="gen-x0", min_width=200)
                    eps = output_image("picture.pred_eps", visible=False, elem_id="gen-eps", min_width=200)
    return GenerateTab(sampler, steps, eta, seed, seed_used, images, clip, show_eps, run_btn, stop_btn, status, x_t,
                       x0, eps)


def generate_events(h: GenerateHandlers, tab: GenerateTab, frames: FramesTab, user: gr.State) -> None:
    """Generate streams into its pictures and the frame slider, then Frames shows the last frame; Stop keeps what
    was computed and shows it."""
    # while a run waits for the device, Gradio's tracker on the status line shows the queue position and an
    # estimate (with show_progress="hidden" it is drawn at opacity 0); while it streams the tracker hides
    waiting = dict(show_progress="full", show_progress_on=[tab.status])
    event = tab.run.click(h.generate, [tab.sampler, tab.steps, tab.eta, tab.seed, tab.batch, tab.clip, tab.show_eps,
                                       user],
                          [tab.x_t, tab.x0, tab.eps, tab.status, tab.seed_used, frames.slider], api_name="generate",
                          **waiting, concurrency_limit=1, concurrency_id=JOBS)  # one sampling job at a time
    event.success(**frames.show_frame, api_name="show_generated", api_visibility="private")
    tab.stop.click(lambda: STOPPED, None, tab.status, cancels=[event], api_visibility="private",
                   queue=False).then(**frames.show_stopped)
    tab.show_eps.change(lambda v: gr.update(visible=v), tab.show_eps, tab.eps, api_visibility="private", queue=False)
    frames.cleared_by(tab.run)
