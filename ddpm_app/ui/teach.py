"""The teaching tabs of the app: Algorithm 1 on your photo, the likelihood of your photo, runs side by side,
interpolation between two seeds, and figures for slides.

:class:`TeachHandlers` holds one method per event, plain functions (or generators) of widget values and the
user's :class:`~ddpm_app.views.state.UserState`, so tests call them directly; :func:`teach_tabs` lays out the tabs and wires
them inside :func:`ddpm_app.ui.page.build`. The math lives in the library (:mod:`ddpm_app.diffusion.loss`,
:mod:`ddpm_app.diffusion.likelihood`, :mod:`ddpm_app.diffusion.interpolation`), the per-view logic in :mod:`ddpm_app.views`.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import gradio as gr

from ddpm_app.diffusion.samplers import SamplerSettings
from ddpm_app.image import to_uint8
from ddpm_app.numbers import number
from ddpm_app.pictures import labelled_strip, noise_picture, picture
from ddpm_app.serve.inputs import InputError, choice, flag, random_seed, resolve_seed, whole_number
from ddpm_app.serve.library import ModelLibrary
from ddpm_app.serve.runs import Throttle, stream
from ddpm_app.serve.served import ServedModel
from ddpm_app.serve.server import JOBS
from ddpm_app.ui import widgets
from ddpm_app.ui.page import EXAMPLES, LATEX, _image, on_device, user_errors
from ddpm_app.ui.widgets import PhotoInput
from ddpm_app.views.compare import compare_picture
from ddpm_app.views.export import ExportFolder
from ddpm_app.views.figures import VIEWS, figure, save_figure
from ddpm_app.views.likelihood import ESTIMATE_TIMESTEPS, photo_bits_per_dim, terms_plot, verdict
from ddpm_app.views.state import UserState
from ddpm_app.views.training import curve_plot, error_heatmap, heat_scale, photo_curve, training_step

MAX_INTERPOLATION = 10  # images in an interpolation strip
CURVE_SEED = 0  # the photo's loss curve draws its ε from this seed: the same curve every time

TRAINING_HELP = r"""**Algorithm 1 of DDPM, on your photo.** Training repeats one step: take an image $x_0$, pick
$t$ uniformly, draw $\varepsilon \sim \mathcal N(0, I)$, form $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,
\varepsilon$ and move $\theta$ down the gradient of $\lVert\varepsilon - \varepsilon_\theta(x_t, t)\rVert^2$.
Where does that loss come from? The ELBO's term for step $t$ is a KL divergence between two Gaussians of equal
variance, $q(x_{t-1}\mid x_t, x_0)$ and $p_\theta(x_{t-1}\mid x_t)$; it is a weighted squared distance between
their means, and with both means written through the noise it becomes a weighted $\lVert\varepsilon -
\hat\varepsilon\rVert^2$. DDPM drops the weight. Below: the pictures of one such step, the per-pixel error,
and the loss at every $t$ — for your photo and for held-out images of the model's data."""

LIKELIHOOD_HELP = r"""**How likely is your photo under the model?** The same bound that gave the training loss,
$-\log p_\theta(x_0) \le L_T + \sum_{t\ge 2} L_{t-1} + L_0$, measured on your photo in bits per dimension
(per colour value of the 8-bit image; lower is more likely). $L_T$ is the prior term (tiny: $x_T$ is pure noise
whatever the photo), $L_{t-1}$ the KL of each reverse step, $L_0$ the decoder's probability of the exact pixel
values. The quick estimate evaluates a stratified sample of $t$; the exact bound evaluates all $T$ terms."""

COMPARE_HELP = r"""**Runs side by side.** Pin a run (the one shown in **Frames**), then run another from the same
seed — DDPM against DDIM, or clipping on against off — and scrub both by $t$ with one slider. **A** is the pinned
run, **B** the run **Frames** shows now."""

INTERPOLATE_HELP = r"""**Between two seeds.** DDIM with $\eta = 0$ is a deterministic map from $x_T$ to an image.
Take the two seeds' starting noises, walk between them along a great circle (spherical interpolation keeps each
interpolant as long as a real Gaussian sample), and run the map from each: the images change smoothly from one
seed's image to the other's (the DDIM paper's figure). η starts at the model's own (as in **Generate**); with
$\eta > 0$ each step's fresh noise $z$ is interpolated between the two seeds' in the same way, so the ends are
still exactly the two seeds' **Generate** images with these settings."""

FIGURE_HELP = """Figures for slides: the latest result of a view as one PNG, every image at least 512 pixels
(enlarged with sharp pixels), labelled."""


class Cancelled(Exception):
    """The user left or pressed Stop: the computation in progress ends early."""


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


class TeachHandlers:
    """Handlers of the teaching tabs, over a model library; tensor work runs on its device worker."""

    def __init__(self, library: ModelLibrary, export_dir: str | Path | None = None,
                 preview_interval: float | None = 0.2):
        self.library = library
        self.figures = ExportFolder(export_dir) if export_dir else ExportFolder.temporary("ddpm_figures_")  # bounded, like exports
        self.preview_interval = preview_interval

    def served(self, user: UserState) -> ServedModel:
        return self.library.get(user.model)

    # -- Training view ---------------------------------------------------------------------------------------

    @on_device
    def train_step(self, photo: str | None, t: float, noise_seed: float | None, user: UserState) -> tuple:
        """One step of Algorithm 1 on the photo: (x₀, ε, x_t, ε̂, |ε − ε̂|² map, numbers, loss-curve plot)."""
        served = self.served(user)
        with user_errors():
            t = served.check_t(t)
            seed = resolve_seed(noise_seed)
            if photo is None:
                raise InputError("upload a photo (or pick an example) first")
            x0 = served.prepare_photo(photo)
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
        plot = self._curve_plot(served, photo, user).at(t)
        return TrainingOutputs(picture(x0), noise_picture(step.eps), picture(step.x_t), noise_picture(step.pred_eps),
                               error_heatmap(step.squared_error, heat_scale(step.squared_error)), numbers,
                               plot).as_tuple()

    def _curve_plot(self, served: ServedModel, photo: str | None, user: UserState):
        """The loss-curve plot for this model and photo: with the photo's curve once computed, else held-out only."""
        lesson = user.lesson
        has_curve = lesson.curve is not None and lesson.curve_for == (served.name, photo)
        key = (served.name, photo if has_curve else None)
        if lesson.plot is None or lesson.plot_for != key:
            lesson.plot = curve_plot(lesson.curve if has_curve else None, served.heldout, served.timesteps)
            lesson.plot_for = key
        return lesson.plot

    @on_device
    def loss_curve(self, photo: str | None, t: float, user: UserState) -> tuple:
        """The photo's loss at every t (several ε each) beside the held-out curve: (plot, summary)."""
        served = self.served(user)
        with user_errors():
            t = served.check_t(t)
            if photo is None:
                raise InputError("upload a photo (or pick an example) first")
            x0 = served.prepare_photo(photo)
        lesson = user.lesson
        if lesson.curve is None or lesson.curve_for != (served.name, photo):
            lesson.curve = photo_curve(served, x0, CURVE_SEED)
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
        return self._curve_plot(served, photo, user).at(t), summary

    @on_device
    def random_t(self, user: UserState) -> int:
        """t ~ Uniform{0, …, T−1}, as Algorithm 1 draws it."""
        return random_seed() % self.served(user).timesteps

    # -- Likelihood ---------------------------------------------------------------------------------------------

    def likelihood(self, photo: str | None, exact: bool, seed: float | None, user: UserState) -> Iterator[tuple]:
        """The bound for the photo, streamed: (progress, plot, verdict) after every batch of timesteps, then the
        result. ``exact``: all T timesteps; otherwise the quick estimate from a stratified sample."""
        served = self.served(user)
        with user_errors():
            exact = flag(exact, "exact")
            seed = resolve_seed(seed)
            if photo is None:
                raise InputError("upload a photo (or pick an example) first")
            x0 = self.library.worker.run(served.prepare_photo, photo)
        num = None if exact else min(ESTIMATE_TIMESTEPS, served.timesteps)
        updates: queue.Queue = queue.Queue()
        cancel = threading.Event()

        def progress(done: int, total: int) -> None:
            if cancel.is_set():
                raise Cancelled
            updates.put((done, total))

        started = time.perf_counter()
        job = self.library.worker.submit(photo_bits_per_dim, served, x0, seed, num, progress)
        try:
            while not job.done() or not updates.empty():
                try:
                    done, total = updates.get(timeout=0.1)
                except queue.Empty:
                    continue
                if done < total:
                    yield progress_html(done, total, time.perf_counter() - started, exact), gr.skip(), gr.skip()
            bpd = job.result()
        finally:
            cancel.set()
        plot = self.library.worker.run(terms_plot, bpd, served.heldout, served.timesteps)
        user.lesson.likelihood, user.lesson.likelihood_plot = bpd, plot
        elapsed = time.perf_counter() - started
        done_text = (f"<div class='ddpm-stats'><progress value='1' max='1'></progress><div><b>Done</b>: "
                     f"{bpd.timesteps_evaluated} timesteps in {elapsed:.1f} s (seed {seed}).</div></div>")
        yield done_text, plot, verdict(bpd, served.heldout, served.heldout_note, served.timesteps)

    # -- Runs side by side ---------------------------------------------------------------------------------------

    @on_device
    def pin(self, user: UserState) -> tuple:
        """Pin the run Frames shows: (caption, compare picture, t-slider update)."""
        if user.run is None or not user.run.frames:
            raise gr.Error("Nothing to pin yet: run Generate (or Denoise) first.", print_exception=False)
        user.pinned = user.run
        first = user.pinned.frames[0].t
        return (f"Pinned **A**: {user.pinned.title}. Now change a setting (keep the seed) and run again.",
                *self.compare(first, user)[:1], gr.update(value=first))

    @on_device
    def compare(self, t: float, user: UserState) -> tuple:
        """Both runs at timestep ``t`` (in the model's 0…T−1, as the slider): (picture, caption)."""
        with user_errors():
            t = self.served(user).check_t(t)
        if user.pinned is None:
            return None, "Nothing pinned yet: run **Generate**, then press **Pin this run**."
        latest = user.run
        if latest is None or not latest.frames:
            return None, "Pinned; now run another (Generate or Denoise) to compare with."
        user.lesson.compare_t = t
        return compare_picture(user.pinned, latest, t)

    def play(self, user: UserState, positions: int = 30, delay: float = 0.15) -> Iterator[tuple]:
        """Both runs from x_T down to x₀: (t, picture, caption) at ``positions`` evenly spaced timesteps."""
        if user.pinned is None or user.run is None or not user.run.frames:
            raise gr.Error("Pin a run and run another first.", print_exception=False)
        top = max(user.pinned.frames[0].t, user.run.frames[0].t)
        for i in range(positions):
            t = round(top * (1 - i / (positions - 1)))
            yield (t, *self.compare(t, user))
            time.sleep(delay)

    # -- Interpolation -------------------------------------------------------------------------------------------

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

    def ranges(self, user: UserState) -> tuple:
        """Slider updates for this user's model: (training t, compare t, interpolation DDIM steps, its η: the
        model's own DDIM η)."""
        served = self.served(user)
        T = served.timesteps
        return (gr.update(maximum=T - 1, value=min(T // 4, T - 1)), gr.update(maximum=T - 1, value=T - 1),
                gr.update(maximum=T, value=min(25, T)), gr.update(value=served.config.sampling.ddim_eta))

    # -- Figures for slides -------------------------------------------------------------------------------------

    @on_device
    def export_figure(self, view: str, user: UserState) -> str:
        """The latest result of ``view`` as a slide figure (PNG, ≥ 512 px per image); returns its path."""
        with user_errors():
            picture_ = figure(choice(view, "view", VIEWS), user, self.served(user))
        return str(self.figures.write(f"ddpm_{view}.png", lambda path: save_figure(picture_, path)))


def progress_html(done: int, total: int, elapsed: float, exact: bool) -> str:
    what = "exact bound, all timesteps" if exact else "estimate"
    return (f"<div class='ddpm-stats'><progress value='{done}' max='{total}'></progress>"
            f"<div>{done} / {total} timesteps ({what}) · {elapsed:.1f} s</div></div>")


# ---------------------------------------------------------------------------------------------------------------
# Layout and wiring


@dataclass
class TeachTabs:
    """The teaching tabs' components that follow the model (their ranges depend on its T)."""

    train_t: gr.Slider
    compare_t: gr.Slider
    interp_steps: gr.Slider
    interp_eta: gr.Slider


def _photo_column(label: str) -> PhotoInput:
    """A photo upload with the example pictures under it, in a narrow column."""
    with gr.Column(scale=1, min_width=260):
        photo = PhotoInput(label=label, type="filepath", image_mode=None, sources=["upload", "clipboard"],
                           height=220)
        gr.Examples([[str(p)] for p in EXAMPLES], inputs=photo, label="Examples", cache_examples=False)
    return photo


def teach_tabs(th: TeachHandlers, user: gr.State, first: ServedModel) -> TeachTabs:
    """The Training, Likelihood, Compare and Interpolate tabs with their events; call inside ``gr.Tabs()``."""
    from ddpm_app.ui.page import DEFAULT_SETTINGS

    T = first.timesteps
    quick = dict(show_progress="hidden", trigger_mode="always_last", concurrency_limit=4)

    with gr.Tab("Training", id="training", elem_id="training-tab"):
        gr.Markdown(TRAINING_HELP, latex_delimiters=LATEX)
        with gr.Row():
            tr_photo = _photo_column("Photo x₀")
            with gr.Column(scale=2, min_width=300):
                tr_t = widgets.Slider(0, T - 1, value=T // 4, step=1, label="t", elem_id="train-t")
                with gr.Row():
                    tr_random = gr.Button("Random t (as in training)", size="sm", min_width=120)
                    tr_seed = widgets.Number(0, label="Noise seed for ε", precision=0, min_width=120)
                tr_numbers = gr.Markdown("Upload a photo (or pick an example).", latex_delimiters=LATEX,
                                         label="numbers", elem_id="train-numbers")
        with gr.Row():
            tr_x0 = _image("x₀", height=200)
            tr_eps = _image("ε (×½)", height=200)
            tr_xt = _image("x_t", height=200)
            tr_pred = _image("ε̂ (×½)", height=200, elem_id="train-pred")
            tr_err = _image("(ε − ε̂)²", height=200)
        tr_plot = _image("loss against t", height=None, pixelated=False, elem_id="train-curve")
        tr_summary = gr.Markdown("", label="loss curve", elem_id="train-summary")

    with gr.Tab("Likelihood", id="likelihood", elem_id="likelihood-tab"):
        gr.Markdown(LIKELIHOOD_HELP, latex_delimiters=LATEX)
        with gr.Row():
            lk_photo = _photo_column("Photo")
            with gr.Column(scale=2, min_width=300):
                lk_exact = gr.Checkbox(False, label=f"Exact: all {T} timesteps (slower)")
                lk_seed = widgets.Number(0, label="Seed (timesteps and noise)", precision=0)
                with gr.Row():
                    lk_btn = gr.Button("Bits/dim of this photo", variant="primary", min_width=120)
                    lk_stop = gr.Button("Stop", variant="stop", min_width=80)
                lk_status = gr.HTML("<div class='ddpm-stats'>Pick a photo, then press <b>Bits/dim</b>.</div>",
                                    label="progress", elem_id="lk-status")
                lk_verdict = gr.Markdown("", label="what it means", elem_id="lk-verdict")
        lk_plot = _image("the terms of the bound", height=None, pixelated=False, elem_id="lk-plot")

    with gr.Tab("Compare", id="compare", elem_id="compare-tab"):
        gr.Markdown(COMPARE_HELP, latex_delimiters=LATEX)
        with gr.Row():
            pin_btn = gr.Button("Pin this run (as A)", variant="primary", min_width=120)
            play_btn = gr.Button("Play both ▶", min_width=100)
        cmp_t = widgets.Slider(0, T - 1, value=T - 1, step=1, label="t (both runs)", elem_id="compare-t")
        cmp_caption = gr.Markdown("Nothing pinned yet: run **Generate**, then press **Pin this run**.",
                                  label="runs", elem_id="compare-caption")
        cmp_image = _image("A: x_t, x̂₀ | B: x_t, x̂₀", height=300, pixelated=False, elem_id="compare-image")

    with gr.Tab("Interpolate", id="interpolate", elem_id="interpolate-tab"):
        gr.Markdown(INTERPOLATE_HELP, latex_delimiters=LATEX)
        with gr.Row():
            in_a = widgets.Number(1, label="Seed a", precision=0, min_width=100)
            in_b = widgets.Number(2, label="Seed b", precision=0, min_width=100)
            in_n = widgets.Slider(2, MAX_INTERPOLATION, value=6, step=1, label="Images", min_width=160)
            in_steps = widgets.Slider(1, T, value=min(25, T), step=1, label="DDIM steps K", min_width=160)
            in_eta = widgets.Slider(0, 1, value=first.config.sampling.ddim_eta, step=0.05, label="η (eta)",
                                    min_width=120, elem_id="interp-eta")
            in_clip = gr.Checkbox(DEFAULT_SETTINGS.clip_x0, label="Clip x̂₀", min_width=100)
        in_btn = gr.Button("Interpolate", variant="primary")
        in_status = gr.Markdown("", label="status", elem_id="interp-status")
        in_strip = _image("from seed a (w = 0) to seed b (w = 1)", height=None, pixelated=False,
                          elem_id="interp-strip")

    # events ------------------------------------------------------------------------------------------------
    train_outputs = [tr_x0, tr_eps, tr_xt, tr_pred, tr_err, tr_numbers, tr_plot]
    tr_inputs = [tr_photo, tr_t, tr_seed, user]
    tr_t.change(th.train_step, tr_inputs, train_outputs, api_name="train_step", **quick)
    tr_seed.submit(th.train_step, tr_inputs, train_outputs, api_visibility="private", **quick)
    tr_photo.change(th.train_step, tr_inputs, train_outputs, api_visibility="private", **quick).success(
        th.loss_curve, [tr_photo, tr_t, user], [tr_plot, tr_summary], api_name="loss_curve",
        show_progress="minimal", show_progress_on=tr_plot).success(  # mark the t the slider has got to meanwhile
        th.train_step, tr_inputs, train_outputs, api_visibility="private", **quick)
    tr_random.click(th.random_t, user, tr_t, api_visibility="private", queue=False)

    lk_event = lk_btn.click(th.likelihood, [lk_photo, lk_exact, lk_seed, user], [lk_status, lk_plot, lk_verdict],
                            api_name="likelihood", show_progress="hidden", concurrency_limit=1,
                            concurrency_id=JOBS)
    lk_stop.click(lambda: "<div class='ddpm-stats'><b>Stopped.</b></div>", None, lk_status, cancels=[lk_event],
                  api_visibility="private", queue=False)

    pin_btn.click(th.pin, user, [cmp_caption, cmp_image, cmp_t], api_name="pin", show_progress="hidden")
    cmp_t.input(th.compare, [cmp_t, user], [cmp_image, cmp_caption], api_name="compare", **quick)
    play_btn.click(th.play, user, [cmp_t, cmp_image, cmp_caption], api_visibility="private",
                   show_progress="hidden")

    in_btn.click(th.interpolate, [in_a, in_b, in_n, in_steps, in_eta, in_clip, user], [in_strip, in_status],
                 api_name="interpolate", show_progress="hidden", concurrency_limit=1, concurrency_id=JOBS)
    return TeachTabs(tr_t, cmp_t, in_steps, in_eta)


def figure_row(th: TeachHandlers, user: gr.State) -> None:
    """One row under the tabs: pick a view, get its slide figure."""
    names = {"step": "Frames: this step's terms", "forward": "Forward: x_t over t", "training": "Training step",
             "likelihood": "Likelihood terms", "compare": "Compare A | B", "interpolation": "Interpolation strip"}
    with gr.Accordion("Figures for slides (PNG)", open=False):
        gr.Markdown(FIGURE_HELP)
        with gr.Row():
            view = widgets.Dropdown([(names[v], v) for v in VIEWS], value="training", label="View", min_width=200)
            btn = gr.Button("Export figure", size="sm", min_width=100)
        out = gr.File(label="Figure", interactive=False, elem_id="figure-file")
    btn.click(th.export_figure, [view, user], out, api_name="export_figure")
