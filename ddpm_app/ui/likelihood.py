"""The Likelihood tab: how likely is your photo under the model? The variational bound on −log p_θ(x₀), in bits
per dimension, streamed as its terms are evaluated."""

from __future__ import annotations

import time
from typing import Iterator

import gradio as gr

from ddpm_app.checks import flag, resolve_seed
from ddpm_app.serve.server import JOBS
from ddpm_app.serve.worker import Reports
from ddpm_app.text import ENGLISH, text
from ddpm_app.ui import widgets
from ddpm_app.ui.i18n import i18n
from ddpm_app.ui.kit import TabHandlers, carried_into, help_markdown, output_image, photo_column, photo_given
from ddpm_app.ui.widgets import user_errors
from ddpm_app.views.likelihood import CLIP_X0, ESTIMATE_TIMESTEPS, photo_bits_per_dim, terms_plot, verdict
from ddpm_app.views.pace import time_left
from ddpm_app.views.state import UserState

LIKELIHOOD_HELP = text("likelihood.help")


class LikelihoodHandlers(TabHandlers):
    def likelihood(self, photo: str | None, exact: bool, seed: float | None, clip_x0: bool,
                   user: UserState) -> Iterator[tuple]:
        """The bound for the photo, streamed: (progress, plot, verdict), the previous photo's plot and verdict
        cleared first, then after every batch of timesteps, then the result. ``exact``: all T timesteps; otherwise
        the quick estimate from a stratified sample. ``clip_x0``: p_θ's mean from the clipped x̂₀, as sampling
        does; otherwise Ho et al.'s bound."""
        served, language = self.served(user), user.language
        with user_errors(language):
            exact = flag(exact, "exact")
            clip_x0 = flag(clip_x0, "clip x̂₀")
            seed = resolve_seed(seed)
            x0 = self.worker.run(served.prepare_photo, photo_given(photo))
        num = None if exact else min(ESTIMATE_TIMESTEPS, served.timesteps)
        total = num or served.timesteps
        reports = Reports()  # one job: it says how far it has got after every batch of timesteps
        started = time.perf_counter()
        estimate = self.estimate(served, total, language)
        yield (progress_html(0, total, 0.0, exact, text("likelihood.in_all", language, about=estimate) if estimate
                             else "", language), None, text("likelihood.cleared", language))

        def progress(done: int, total: int) -> None:
            if 0 < done < total:  # 0 was said above
                elapsed = time.perf_counter() - started
                reports((progress_html(done, total, elapsed, exact, time_left(done, total, elapsed, language),
                                       language), gr.skip(), gr.skip()))

        def bound() -> Iterator[tuple]:
            bpd = photo_bits_per_dim(served, x0, seed, num, progress, clip_x0)
            self.pace.record(served.name, bpd.timesteps_evaluated, time.perf_counter() - started)
            plot = terms_plot(bpd, served.heldout, served.timesteps, language=language)
            user.lesson.likelihood, user.lesson.likelihood_plot = bpd, plot
            elapsed = time.perf_counter() - started
            done = text("likelihood.done", language, timesteps=bpd.timesteps_evaluated, seconds=f"{elapsed:.1f}",
                        seed=seed, clipped=text("run.clipped" if clip_x0 else "run.not_clipped", language))
            done_text = f"<div class='ddpm-stats'><progress value='1' max='1'></progress><div>{done}</div></div>"
            yield done_text, plot, verdict(bpd, served.heldout, served.heldout_note, served.timesteps, language)

        yield from self.worker.stream(bound(), reports)


def progress_html(done: int, total: int, elapsed: float, exact: bool, left: str = "", language: str = ENGLISH) -> str:
    """The progress bar and line: timesteps done, seconds so far and (``left``) how long the rest should take."""
    what = text("likelihood.progress_exact" if exact else "likelihood.progress_estimate", language)
    line = text("likelihood.progress", language, done=done, total=total, what=what, seconds=f"{elapsed:.1f}",
                left=f" · {left}" if left else "")
    return f"<div class='ddpm-stats'><progress value='{done}' max='{total}'></progress><div>{line}</div></div>"


def likelihood_tab(h: LikelihoodHandlers, user: gr.State, T: int, carry_from: gr.Image) -> None:
    """The Likelihood tab with its events; opening it brings the Forward tab's photo (``carry_from``) along. Call
    inside ``gr.Tabs()``."""
    with gr.Tab(i18n("tab.likelihood"), id="likelihood", elem_id="likelihood-tab") as tab:
        help_markdown("likelihood.help")
        with gr.Row():
            photo = photo_column("likelihood.photo", elem_id="lk-photo")
            with gr.Column(scale=2, min_width=300):
                exact = gr.Checkbox(False, label=i18n("likelihood.exact", T=T), elem_id="lk-exact",
                                    info=i18n("likelihood.exact_info"))
                clip = gr.Checkbox(CLIP_X0, label=i18n("likelihood.clip"), elem_id="lk-clip",
                                   info=i18n("likelihood.clip_info"))
                seed = widgets.Number(0, label=i18n("likelihood.seed"), precision=0)
                with gr.Row():
                    run_btn = gr.Button(i18n("likelihood.button"), variant="primary", min_width=120)
                    stop_btn = gr.Button(i18n("button.stop"), variant="stop", min_width=80)
                status = gr.HTML(i18n("likelihood.press"), label=i18n("label.progress"), elem_id="lk-status")
                meaning = gr.Markdown("", label=i18n("likelihood.meaning"), elem_id="lk-verdict")
        plot = output_image("likelihood.terms", height=None, pixelated=False, elem_id="lk-plot")

    # the previous photo's result goes at once, also while this run waits for the device
    run_btn.click(lambda: (None, i18n("likelihood.cleared")), None, [plot, meaning], api_visibility="private",
                  queue=False, show_progress="hidden")
    event = run_btn.click(h.likelihood, [photo, exact, seed, clip, user], [status, plot, meaning],
                          api_name="likelihood", show_progress="full", show_progress_on=[status], concurrency_limit=1,
                          concurrency_id=JOBS)
    stop_btn.click(lambda: i18n("likelihood.stopped"), None, status, cancels=[event],
                   api_visibility="private", queue=False)
    carried_into(h, tab, photo, carry_from, user)
