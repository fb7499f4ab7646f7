"""The Denoise tab (SDEdit): run the reverse chain from the Forward tab's x_t at its t back to 0."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import gradio as gr

from ddpm_app.checks import resolve_seed
from ddpm_app.diffusion.samplers import SamplerSettings, Step
from ddpm_app.diffusion.schedule import paper_t
from ddpm_app.image import psnr
from ddpm_app.pictures import labelled_strip
from ddpm_app.serve.runs import PREVIEW_BUDGET, RunName, Throttle, Trajectory, stream
from ddpm_app.serve.server import JOBS
from ddpm_app.text import text
from ddpm_app.ui import widgets
from ddpm_app.ui.frames import FramesTab
from ddpm_app.ui.i18n import i18n
from ddpm_app.ui.kit import (
    STOPPED,
    TabHandlers,
    help_markdown,
    output_image,
    preview_file,
    run_preview,
    sampler_controls,
    user_key,
)
from ddpm_app.ui.widgets import user_error, user_errors
from ddpm_app.views.state import UserState

# what each sampler runs from the noised photo's t (catalogue keys)
SDEDIT_CHOICES = [("sampler.sdedit_ddpm", "ddpm"), ("sampler.sdedit_ddim", "ddim")]

DENOISE_HELP = text("denoise.help")


class DenoiseHandlers(TabHandlers):
    def denoise(self, sampler: str, steps: float, eta: float, seed: float | None, clip_x0: bool,
                user: UserState, request: gr.Request | None = None) -> Iterator[tuple]:
        """Run the reverse chain from the forward tab's x_t at its t back to x₀ (SDEdit); yields
        (x_t, x̂₀, original | noised | result, status, seed used, frame-slider update)."""
        served = self.served(user)
        forward, language = user.forward, user.language
        with user_errors(language):
            settings = served.settings(sampler, steps, eta, clip_x0)
            seed = resolve_seed(seed)
        if forward.x_t is None or forward.model != served.name:
            raise user_error(text("denoise.needs_forward", language))
        t, x0, x_t = forward.t, forward.x0, forward.x_t
        run = Trajectory.of(RunName(settings, t, seed, from_photo=True), served.shape(1), served.schedule,
                            self.max_trajectory_bytes, language, model=served.name)
        user.keep("denoise", run)
        self.users.seen(user_key(user, request), user)
        started = time.perf_counter()

        def render(step: Step) -> tuple:
            x_now, x0_now, _, status, seed_used, slider = run_preview(served, run, step, started, False, language)
            result = run.result()
            now = "denoise.result" if step.is_last else "denoise.current_guess"
            labels = [text(key, language, t=paper_t(t)) for key in ("denoise.original", "denoise.noised", now)]
            compare = labelled_strip([x0, x_t, result], labels)
            compare = compare if step.is_last else preview_file(compare)
            if step.is_last:
                status += text("denoise.psnr", language, psnr=f"{psnr(result, x0):.1f}")
            return x_now, x0_now, compare, status, seed_used, slider

        yield from stream(served.sdedit(x_t, t, settings, seed), run, Throttle(self.preview_interval, budget=PREVIEW_BUDGET), render,
                          self.library.worker)


@dataclass
class DenoiseTab:
    """The Denoise tab's components that other tabs' events update."""

    start: gr.Image  # x_t, drawn by the Forward tab
    note: gr.Markdown  # where x_t comes from, written by the Forward tab
    steps: gr.Slider
    eta: gr.Slider
    clip: gr.Checkbox


def denoise_tab(h: DenoiseHandlers, user: gr.State, T: int, settings: SamplerSettings,
                frames: FramesTab) -> DenoiseTab:
    """The Denoise tab with its events; call inside ``gr.Tabs()``."""
    with gr.Tab(i18n("tab.denoise"), id="denoise"):
        help_markdown("denoise.help")
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                note = gr.Markdown(i18n("forward.upload_first"), label=i18n("denoise.starting_point"))
                start = output_image("denoise.start", height=200, elem_id="sd-start")
                sampler, steps, eta = sampler_controls(T, SDEDIT_CHOICES, settings)
                seed = widgets.Number(-1, label=i18n("generate.seed"), precision=0)
                clip = gr.Checkbox(settings.clip_x0, label=i18n("generate.clip"))
                with gr.Row():
                    run_btn = gr.Button(i18n("denoise.button"), variant="primary", min_width=100)
                    stop_btn = gr.Button(i18n("button.stop"), variant="stop", min_width=80)
                seed_used = gr.Textbox(label=i18n("generate.seed_used"), interactive=False)
            with gr.Column(scale=2, min_width=300):
                status = gr.HTML(i18n("denoise.press"), label=i18n("label.progress"), elem_id="sd-status",
                                 min_height=60)
                with gr.Row():
                    x_t = output_image("picture.x_t", min_width=200)
                    x0 = output_image("picture.pred_x0", min_width=200)
                compare = output_image("denoise.compare", height=220, pixelated=False)

    event = run_btn.click(h.denoise, [sampler, steps, eta, seed, clip, user],
                          [x_t, x0, compare, status, seed_used, frames.slider], api_name="denoise",
                          show_progress="full", show_progress_on=[status], concurrency_limit=1, concurrency_id=JOBS)
    event.success(**frames.show_frame, api_name="show_denoised", api_visibility="private")
    stop_btn.click(lambda: STOPPED, None, status, cancels=[event], api_visibility="private",
                   queue=False).then(**frames.show_stopped)
    frames.cleared_by(run_btn)
    return DenoiseTab(start, note, steps, eta, clip)
