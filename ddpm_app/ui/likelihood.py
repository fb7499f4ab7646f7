"""The Likelihood tab: how likely is your photo under the model? The variational bound on −log p_θ(x₀), in bits
per dimension, streamed as its terms are evaluated."""

from __future__ import annotations

import time
from typing import Iterator

import gradio as gr

from ddpm_app.serve.inputs import flag, resolve_seed
from ddpm_app.serve.server import JOBS
from ddpm_app.serve.worker import Reports
from ddpm_app.ui import widgets
from ddpm_app.ui.kit import LATEX, TabHandlers, carried_into, output_image, photo_column, photo_given
from ddpm_app.ui.widgets import user_errors
from ddpm_app.views.likelihood import CLIP_X0, ESTIMATE_TIMESTEPS, photo_bits_per_dim, terms_plot, verdict
from ddpm_app.views.pace import time_left
from ddpm_app.views.state import UserState

LIKELIHOOD_HELP = r"""**How likely is your photo under the model?** The same bound that gave the training loss,
$-\log p_\theta(x_0) \le L_T + \sum_{t\ge 2} L_{t-1} + L_0$, measured on your photo in bits per dimension
(per colour value of the 8-bit image; lower is more likely, and storing the raw pixels takes 8). $L_T$ is the prior
term (tiny: $x_T$ is pure noise whatever the photo), $L_{t-1}$ the KL of each reverse step, $L_0$ the decoder's
probability of the exact pixel values. The quick estimate evaluates a stratified sample of $t$; the exact bound
evaluates all $T$ terms, each still at one random $x_t$. The reverse step's mean uses $\hat x_0$ clipped to
$[-1, 1]$, as sampling does; Ho et al.'s bound leaves it unclipped."""


class LikelihoodHandlers(TabHandlers):
    def likelihood(self, photo: str | None, exact: bool, seed: float | None, clip_x0: bool,
                   user: UserState) -> Iterator[tuple]:
        """The bound for the photo, streamed: (progress, plot, verdict), the previous photo's plot and verdict
        cleared first, then after every batch of timesteps, then the result. ``exact``: all T timesteps; otherwise
        the quick estimate from a stratified sample. ``clip_x0``: p_θ's mean from the clipped x̂₀, as sampling
        does; otherwise Ho et al.'s bound."""
        served = self.served(user)
        with user_errors():
            exact = flag(exact, "exact")
            clip_x0 = flag(clip_x0, "clip x̂₀")
            seed = resolve_seed(seed)
            x0 = self.worker.run(served.prepare_photo, photo_given(photo))
        num = None if exact else min(ESTIMATE_TIMESTEPS, served.timesteps)
        total = num or served.timesteps
        reports = Reports()  # one job: it says how far it has got after every batch of timesteps
        started = time.perf_counter()
        estimate = self.estimate(served, total)
        yield progress_html(0, total, 0.0, exact, f"{estimate} in all" if estimate else ""), None, CLEARED

        def progress(done: int, total: int) -> None:
            if 0 < done < total:  # 0 was said above
                elapsed = time.perf_counter() - started
                reports((progress_html(done, total, elapsed, exact, time_left(done, total, elapsed)), gr.skip(),
                         gr.skip()))

        def bound() -> Iterator[tuple]:
            bpd = photo_bits_per_dim(served, x0, seed, num, progress, clip_x0)
            self.pace.record(served.name, bpd.timesteps_evaluated, time.perf_counter() - started)
            plot = terms_plot(bpd, served.heldout, served.timesteps)
            user.lesson.likelihood, user.lesson.likelihood_plot = bpd, plot
            elapsed = time.perf_counter() - started
            clipped = "x̂₀ clipped" if clip_x0 else "x̂₀ not clipped"
            done_text = (f"<div class='ddpm-stats'><progress value='1' max='1'></progress><div><b>Done</b>: "
                         f"{bpd.timesteps_evaluated} timesteps in {elapsed:.1f} s (seed {seed}, {clipped}).</div></div>")
            yield done_text, plot, verdict(bpd, served.heldout, served.heldout_note, served.timesteps)

        yield from self.worker.stream(bound(), reports)


CLEARED = "*The bound for this photo is being computed…*"  # the previous photo's verdict, gone


def progress_html(done: int, total: int, elapsed: float, exact: bool, left: str = "") -> str:
    """The progress bar and line: timesteps done, seconds so far and (``left``) how long the rest should take."""
    what = "exact bound, all timesteps" if exact else "estimate"
    return (f"<div class='ddpm-stats'><progress value='{done}' max='{total}'></progress>"
            f"<div>{done} / {total} timesteps ({what}) · {elapsed:.1f} s{f' · {left}' if left else ''}</div></div>")


def likelihood_tab(h: LikelihoodHandlers, user: gr.State, T: int, carry_from: gr.Image) -> None:
    """The Likelihood tab with its events; opening it brings the Forward tab's photo (``carry_from``) along. Call
    inside ``gr.Tabs()``."""
    with gr.Tab("Likelihood", id="likelihood", elem_id="likelihood-tab") as tab:
        gr.Markdown(LIKELIHOOD_HELP, latex_delimiters=LATEX)
        with gr.Row():
            photo = photo_column("Photo")
            with gr.Column(scale=2, min_width=300):
                exact = gr.Checkbox(False, label=f"Exact: all {T} timesteps (slower)", elem_id="lk-exact",
                                    info="every t, each at one random x_t: the seed still moves it a little")
                clip = gr.Checkbox(CLIP_X0, label="Clip x̂₀ to [−1, 1] (as sampling does)", elem_id="lk-clip",
                                   info="unticked: Ho et al.'s bound, x̂₀ as the network gives it")
                seed = widgets.Number(0, label="Seed (timesteps and noise)", precision=0)
                with gr.Row():
                    run_btn = gr.Button("Bits/dim of this photo", variant="primary", min_width=120)
                    stop_btn = gr.Button("Stop", variant="stop", min_width=80)
                status = gr.HTML("<div class='ddpm-stats'>Pick a photo, then press <b>Bits/dim</b>.</div>",
                                 label="progress", elem_id="lk-status")
                meaning = gr.Markdown("", label="what it means", elem_id="lk-verdict")
        plot = output_image("the terms of the bound", height=None, pixelated=False, elem_id="lk-plot")

    # the previous photo's result goes at once, also while this run waits for the device
    run_btn.click(lambda: (None, CLEARED), None, [plot, meaning], api_visibility="private", queue=False,
                  show_progress="hidden")
    event = run_btn.click(h.likelihood, [photo, exact, seed, clip, user], [status, plot, meaning],
                          api_name="likelihood", show_progress="full", show_progress_on=[status], concurrency_limit=1,
                          concurrency_id=JOBS)
    stop_btn.click(lambda: "<div class='ddpm-stats'><b>Stopped.</b></div>", None, status, cancels=[event],
                   api_visibility="private", queue=False)
    carried_into(h, tab, photo, carry_from, user)
