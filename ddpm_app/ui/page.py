"""The Gradio app: watch q(x_t|x₀) noise a photo, and watch the reverse chain p_θ turn noise into images.

:func:`build` makes the Blocks from a :class:`~ddpm_app.serve.library.ModelLibrary`; :class:`Handlers` holds one method
per event, each a plain function (or generator) of widget values and the user's
:class:`~ddpm_app.views.state.UserState`, so the tests call them directly. The math lives in the library: this module
only turns widget values into calls and results into pictures and text.
"""

from __future__ import annotations

import functools
import html
import io
import time
from contextlib import contextmanager
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import gradio as gr
import numpy as np
from gradio import processing_utils
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from ddpm_app.checks import InvalidValue
from ddpm_app.diffusion.samplers import SamplerSettings, Step, step_breakdown
from ddpm_app.image import MAX_FILE_BYTES, ImageError, psnr
from ddpm_app.io.model_folder import ModelFolderError, SamplingDefaults
from ddpm_app.numbers import number
from ddpm_app.pictures import labelled_strip, noise_picture, picture
from ddpm_app.serve.inputs import MAX_BATCH, choice, flag, resolve_seed, whole_number
from ddpm_app.serve.library import ModelLibrary
from ddpm_app.serve.runs import (
    DEFAULT_PREVIEW_INTERVAL,
    DEFAULT_TRAJECTORY_BYTES,
    PREVIEW_BUDGET,
    Throttle,
    Trajectory,
    stream,
)
from ddpm_app.serve.served import ServedModel, schedule_curves
from ddpm_app.serve.server import JOBS, limit_waiting
from ddpm_app.ui import widgets
from ddpm_app.ui.widgets import user_error
from ddpm_app.views.export import ExportFolder, export_gif, export_mp4, export_png
from ddpm_app.views.reverse_step import equation_markdown, equation_text, frame_breakdown, terms_strip
from ddpm_app.views.state import DEFAULT_TIME_TO_LIVE, Users, UserState

ASSETS = Path(__file__).parents[1] / "assets"
EXAMPLES = sorted(ASSETS.glob("*.png"))
QUEUE_SIZE = 16  # sampling jobs waiting at most; more get "queue full"
VIEW_QUEUE_SIZE = 32  # quick views (a frame, a training step, an export) waiting at most, counted apart from jobs
# what each sampler runs: from x_T in Generate, from the noised photo's t in Denoise
SAMPLER_CHOICES = [("DDPM (all T steps)", "ddpm"), ("DDIM (K steps)", "ddim")]
SDEDIT_CHOICES = [("DDPM (every step from t to 0: t + 1 steps)", "ddpm"), ("DDIM (K steps, at most t + 1)", "ddim")]
STRIP_COLUMNS, STRIP_FONT_SIZE = 4, 18  # the forward strip: two rows of four, captions legible on a phone
DEFAULT_SETTINGS = SamplerSettings()  # what the sampler controls show first
FIRST_BATCH = 4  # the images Generate makes at first (one where a step is slow here: ServedModel.first_run)
LATEX = [{"left": "$$", "right": "$$", "display": True}, {"left": "$", "right": "$", "display": False}]

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

NOISE_SHOWN = r"""Noise pictures ($\varepsilon$, $\hat\varepsilon$, marked ×½) show $\varepsilon/2$, so that
$\pm 2$ standard deviations span black to white."""

INTRO = """# Denoising diffusion, step by step
A diffusion model learns to undo noise. **Forward**, a photo is mixed with Gaussian noise until nothing is left;
**reverse**, a network ε_θ predicts the noise in x_t and the sampler removes a little of it at each step."""

GENERATE_HELP = r"""Start from pure noise $x_T \sim \mathcal N(0, I)$ and step backwards. At each step the network
predicts the noise $\hat\varepsilon = \varepsilon_\theta(x_t, t)$, which gives a guess of the final image,
$\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\varepsilon)/\sqrt{\bar\alpha_t}$; the sampler then moves
$x_t$ a little towards it. **DDPM** takes all $T$ steps and adds fresh noise each time; **DDIM** visits only
$K$ of them ($\eta = 0$: no fresh noise, the same seed always gives the same image). """ + NOISE_SHOWN

FRAMES_HELP = r"""Every step of the last run is kept: scrub through it to see $x_t$ lose its noise while the guess
$\hat x_0$ forms. The earliest guesses ($t \gtrsim 900$) are saturated colour noise: $\hat x_0$ divides by
$\sqrt{\bar\alpha_t}$, which is tiny there, and clipping to $[-1, 1]$ leaves mostly pure colours. By
$t \approx 700$ the guess has the layout and colours of the final image; the rest of the chain adds the detail."""

FORWARD_HELP = r"""The forward process needs no network: for any $t$,
$$x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon,\qquad \varepsilon \sim \mathcal N(0, I),$$
where $\bar\alpha_t = \prod_{s \le t}(1-\beta_s)$ falls from 1 to about 0. The signal-to-noise ratio
$\mathrm{SNR}(t) = \bar\alpha_t/(1-\bar\alpha_t)$ says how much of the photo is left. Here $t$ counts from 0, as in
the code: $t = 0$ is the paper's first step ($t = 1$), so $x_t$ at $t = 0$ already holds a little noise, while
$x_0$ is the clean photo. """ + NOISE_SHOWN

DENOISE_HELP = r"""Take the photo noised to $t$ in the **Forward** tab and run the reverse chain from that $t$
back to 0 (SDEdit). Small $t$ keeps the photo; large $t$ keeps only its rough layout and colours, and the model
fills in the rest with what it has learned."""

RELEASED = ("Your last run is no longer kept (runs are released when you leave, after "
            f"{DEFAULT_TIME_TO_LIVE // 60} minutes without a new one, or when the server needs the memory for other "
            "users' runs): press **Generate** (or **Denoise**) again.")
STOPPED = "<div class='ddpm-stats'><b>Stopped.</b> The steps computed so far are in the <b>Frames</b> tab.</div>"

MODEL_HELP = """Each model is a folder with `config.json` (architecture, schedule, image size) and
`model.safetensors`. Pick one from the weights folder (**Rescan** after adding one there), load a model folder
nested inside it, or download one in this format from the Hugging Face Hub."""


def on_device(method):
    """Run a handler on the library's device worker, the one thread that does the app's tensor work."""
    @functools.wraps(method)
    def on_worker(self: Handlers, *args, **kwargs):
        return self.library.worker.run(method, self, *args, **kwargs)
    return on_worker


class Handlers:
    """The event handlers, over a model library. Generators stream previews; every step is stored in the
    user's trajectory as it is computed, so Stop (which closes the generator) keeps what was done. All tensor
    work runs on the library's device worker (see :class:`~ddpm_app.serve.library.DeviceWorker`)."""

    def __init__(self, library: ModelLibrary, preview_interval: float | None = DEFAULT_PREVIEW_INTERVAL,
                 max_trajectory_bytes: int = DEFAULT_TRAJECTORY_BYTES, export_dir: str | Path | None = None,
                 users: Users | None = None):
        self.library = library
        self.preview_interval = preview_interval  # None: send only the final images
        self.max_trajectory_bytes = max_trajectory_bytes
        self.exports = ExportFolder(export_dir) if export_dir else ExportFolder.temporary("ddpm_app_")
        self.users = Users() if users is None else users  # whose runs and photos stay in memory, and for how long

    def leave(self, request: gr.Request) -> None:
        """The user's tab (or API client) has closed: release its run and photo."""
        self.users.leave(request.session_hash)

    def served(self, user: UserState) -> ServedModel:
        """The model this user has chosen (shared with every other user of it)."""
        return self.library.get(user.model)

    # -- Generate ------------------------------------------------------------------------------------------

    def generate(self, sampler: str, steps: float, eta: float, seed: float | None, batch: float, clip_x0: bool,
                 show_eps: bool, user: UserState, request: gr.Request | None = None) -> Iterator[tuple]:
        """Sample from noise, yielding (x_t, x̂₀, ε̂, status, seed used, frame-slider update) per preview."""
        served = self.served(user)
        with user_errors():
            settings = served.settings(sampler, steps, eta, clip_x0)
            batch = served.check_batch(batch)
            seed = resolve_seed(seed)
            show_eps = flag(show_eps, "show ε̂")
        start_t = served.timesteps - 1
        clipped = "x̂₀ clipped" if settings.clip_x0 else "x̂₀ not clipped"
        run = Trajectory(f"{settings.describe(start_t)}, {clipped}, seed {seed}", settings.num_steps(start_t),
                         served.shape(batch), seed, self.max_trajectory_bytes, settings, served.schedule,
                         file_stem=f"{settings.file_stem(start_t)}_seed{seed}")
        user.keep("generate", run)  # a new object per run: a stopped run still finishing its step cannot write into it
        self.users.seen(user_key(user, request), user)
        started = time.perf_counter()
        yield from stream(served.sample(settings, batch, seed), run, Throttle(self.preview_interval, budget=PREVIEW_BUDGET),
                          lambda step: self._preview(served, run, step, started, show_eps), self.library.worker)

    @staticmethod
    def _preview(served: ServedModel, run: Trajectory, step: Step, started: float,
                 show_eps: bool = True) -> tuple:
        """(x_t, x̂₀, ε̂, status, seed, frame-slider update) for one step; the last one shows the finished x₀.

        The frame slider counts stored frames from 1, as the Frames label does. Pictures on the way are JPEG files
        (:func:`preview_file`); the last step's are arrays, sent as PNG."""
        count = len(run.frames)  # the scrubber grows with the run
        jump = step.is_last or step.index == 0  # to the last frame when done; to the first on a new run
        slider = frame_slider(count, count if jump else None)
        send = (lambda array: array) if step.is_last else preview_file
        update = equation_text(step_breakdown(served.schedule, step, run.settings))
        return (send(picture(step.x_prev if step.is_last else step.x_t)), send(picture(step.pred_x0)),
                send(noise_picture(step.pred_eps)) if show_eps or step.is_last else gr.skip(),
                status_html(served, run, step, time.perf_counter() - started, update), str(run.seed), slider)

    # -- Step through the frames -------------------------------------------------------------------------

    @on_device
    def frame(self, number: float, user: UserState) -> tuple:
        """Stored frame ``number`` (1 = the first) of the run Frames shows (the user's latest Generate or Denoise
        run): (x_t, x̂₀, label, the step's update with its numbers, its terms as pictures, which run)."""
        run = user.run
        if run is not None and run.released:
            return None, None, RELEASED, "", None, user.shown
        if run is None or not run.frames:
            return (None, None, f"No {user.shown} run yet: press **{user.shown.capitalize()}** first.",
                    "", None, user.shown)
        with user_errors():
            i = whole_number(number, "frame", 1, len(run.frames)) - 1
        f = run.frames[i]
        user.frame_index = i
        state = ("finished" if run.finished else f"stopped after {run.steps_done} of {run.num_steps} steps"
                 if run.stopped else f"running: {run.steps_done} of {run.num_steps} steps")
        every = "every step" if run.stride == 1 else f"every {run.stride}th step and the last"
        label = (f"**step {f.index + 1} of {run.num_steps} · t = {f.t}** — frame {i + 1}/{len(run.frames)}: "
                 f"{run.title} ({state}). Stored: {every}.")
        parts = frame_breakdown(run, f)
        if parts is None:
            return picture(f.x_t), picture(f.pred_x0), label, "", None, user.shown
        return (picture(f.x_t), picture(f.pred_x0), label, equation_markdown(parts, run.settings.clip_x0),
                terms_strip(parts, f.x_prev), user.shown)

    @on_device
    def nudge(self, number: float, delta: int, user: UserState) -> tuple:
        """Prev/next: (new slider value, then the outputs of :meth:`frame`), kept inside the stored frames (1…count)."""
        count = len(user.run.frames) if user.run and user.run.frames else 1
        with user_errors():
            number = min(max(whole_number(number, "frame", 1, count) + delta, 1), count)
        return (number, *self.frame(number, user))

    @on_device
    def show_run(self, which: str, user: UserState) -> tuple:
        """Switch Frames between the latest Generate and Denoise runs: (slider update, outputs of :meth:`frame`)."""
        with user_errors():
            user.show(which)
        count = len(user.run.frames) if user.run and user.run.frames else 1
        return (frame_slider(count, count), *self.frame(count, user))

    def show_stopped(self, user: UserState, wait_s: float = 60.0) -> tuple:
        """After Stop: wait until the run has ended (the step in progress finishes), then show its last stored
        frame: (frame-slider update, then the outputs of :meth:`frame`). Not on the device thread, which is
        finishing the run."""
        run = user.run
        if run is None:
            return gr.skip(), *self.frame(1, user)
        run.ended.wait(wait_s)
        return frame_slider(len(run.frames), len(run.frames)), *self.frame(max(len(run.frames), 1), user)

    @on_device
    def export(self, kind: str, user: UserState, progress: gr.Progress | None = None) -> str:
        """Write the latest run as ``gif`` / ``mp4`` (x_t | x̂₀ per frame) or ``png`` (final images), named by
        what ran (``ddim-50steps-eta0_seed7.gif``); returns a path. ``progress`` hears of each frame drawn."""
        run = user.run
        told = None if progress is None else (
            lambda done, total: progress((done, total), desc=f"{kind.upper()}: drawing frames", unit="frames"))

        def write(path: Path) -> Path:
            if kind == "png":
                return export_png(run, path)
            return {"gif": export_gif, "mp4": export_mp4}[kind](run, path, progress=told)

        with user_errors():
            return str(self.exports.write(f"{run.file_stem if run else 'run'}.{kind}", write))

    # -- Forward process ----------------------------------------------------------------------------------

    @on_device
    def noise(self, photo: str | None, t: float, fix_noise: bool, noise_seed: float | None,
              user: UserState, request: gr.Request | None = None) -> tuple:
        """x_t of the photo at ``t``: (x₀, ε, x_t, numbers, strip over t, schedule plot, SDEdit start, SDEdit note)."""
        served = self.served(user)
        forward = user.forward
        with user_errors():
            t = served.check_t(t)
            forward.update(served, photo, t, flag(fix_noise, "fix the noise"), noise_seed)
        self.users.seen(user_key(user, request), user)
        numbers, plot = forward_numbers(served, t, forward.eps_seed), schedule_plot(served, t)
        if forward.x0 is None:
            hint = "Upload a photo (or pick an example) in the **Forward** tab first."
            return None, None, None, numbers, None, plot, None, hint
        ts = served.strip_timesteps()
        strip = labelled_strip(served.q_sample(forward.x0, ts, forward.eps), [f"t = {s}" for s in ts],
                               min_size=128, columns=STRIP_COLUMNS, font_size=STRIP_FONT_SIZE)
        note = (f"Starting point: the photo noised to **t = {t}** (noise seed {forward.eps_seed}); "
                f"change it in the **Forward** tab.")
        return (picture(forward.x0), noise_picture(forward.eps), picture(forward.x_t), numbers, strip, plot,
                picture(forward.x_t), note)

    def new_noise(self, photo: str | None, t: float, user: UserState, request: gr.Request | None = None) -> tuple:
        """Draw a fresh ε: (noise-seed box reset to −1, then the outputs of :meth:`noise`)."""
        return (-1, *self.noise(photo, t, False, -1, user, request))

    # -- Noise it, then denoise it --------------------------------------------------------------------

    def denoise(self, sampler: str, steps: float, eta: float, seed: float | None, clip_x0: bool,
                user: UserState, request: gr.Request | None = None) -> Iterator[tuple]:
        """Run the reverse chain from the forward tab's x_t at its t back to 0 (SDEdit); yields
        (x_t, x̂₀, original | noised | result, status, seed used, frame-slider update)."""
        served = self.served(user)
        forward = user.forward
        with user_errors():
            settings = served.settings(sampler, steps, eta, clip_x0)
            seed = resolve_seed(seed)
        if forward.x_t is None or forward.model != served.name:
            raise user_error("Noise a photo in the Forward tab first (upload or pick one, then choose t).")
        t, x0, x_t = forward.t, forward.x0, forward.x_t
        run = Trajectory(f"SDEdit from t = {t}, {settings.describe(t)}, seed {seed}", settings.num_steps(t),
                         served.shape(1), seed, self.max_trajectory_bytes, settings, served.schedule,
                         file_stem=f"sdedit-t{t}_{settings.file_stem(t)}_seed{seed}")
        user.keep("denoise", run)
        self.users.seen(user_key(user, request), user)
        started = time.perf_counter()

        def render(step: Step) -> tuple:
            x_now, x0_now, _, status, seed_used, slider = self._preview(served, run, step, started, False)
            result = run.result()
            compare = labelled_strip([x0, x_t, result], ["original", f"noised to t={t}",
                                                         "result" if step.is_last else "current guess"])
            compare = compare if step.is_last else preview_file(compare)
            if step.is_last:
                status += f"<div>PSNR of the result against the original: <b>{psnr(result, x0):.1f} dB</b></div>"
            return x_now, x0_now, compare, status, seed_used, slider

        yield from stream(served.sdedit(x_t, t, settings, seed), run, Throttle(self.preview_interval, budget=PREVIEW_BUDGET), render,
                          self.library.worker)

    # -- Model ------------------------------------------------------------------------------------------

    def select_model(self, name: str, user: UserState) -> tuple:
        """Switch this user's model: (summary, card, samples, header, t-slider, DDIM-steps updates of Generate and
        Denoise, Generate's image count, clip-x̂₀ updates of Generate and Denoise, DDIM-η updates of Generate and
        Denoise, dropdown update)."""
        with user_errors():
            served = self.library.get(choice(name, "model", self.library.names))
        return self._switch(user, served, f"Loaded **{served.name}**.")

    def download_model(self, repo_id: str, user: UserState) -> tuple:
        """Download a model from the Hub and switch to it; on failure the current model stays."""
        try:
            name = self.library.add_from_hub(repo_id)
        except (InvalidValue, ModelFolderError) as e:
            raise user_error(f"{e} — the current model stays loaded.") from None
        return self._switch(user, self.library.get(name), f"Downloaded and loaded **{name}**.")

    def load_folder(self, path: str, user: UserState) -> tuple:
        """Load a model folder inside a weights folder and switch to it; on failure the current model stays."""
        try:
            name = self.library.add_folder(path)
            served = self.library.get(name)
        except (InvalidValue, ModelFolderError) as e:
            raise user_error(f"{e} — the current model stays loaded.") from None
        return self._switch(user, served, f"Loaded **{name}** from `{served.folder}`.")

    def rescan(self, user: UserState) -> tuple[dict, str]:
        """Look at the weights folders again: (model dropdown update, what changed)."""
        new, gone = self.library.rescan()
        names = self.library.names
        changes = [f"new: {', '.join(new)}"] * bool(new) + [f"gone: {', '.join(gone)}"] * bool(gone)
        refused = self.library.refused
        note = (f"{len(names)} model{'s' if len(names) != 1 else ''} in "
                f"{', '.join(f'`{r}/`' for r in self.library.roots)}"
                f"{' (' + '; '.join(changes) + ')' if changes else ', no change'}."
                + (f" Left out, a link in them leads out of the weights folders: {', '.join(refused)}."
                   if refused else ""))
        if user.model not in names:  # this user's model folder is gone: back to the default
            user.model = None
        return gr.update(choices=names, value=user.model or self.library.default), note

    def _switch(self, user: UserState, served: ServedModel, status: str) -> tuple:
        """Every output of a model switch, built first: only then is ``user`` on ``served``, so an output that
        cannot be made leaves the user on their model, with a message."""
        try:
            outputs = self._model_outputs(served, status)
        except OSError as e:
            raise user_error(f"{served.name}: its model card could not be read ({e}) — the current model stays "
                             "loaded.") from None
        user.model = served.name
        return outputs

    @on_device
    def _model_outputs(self, served: ServedModel, status: str) -> tuple:
        T = served.timesteps
        defaults = served.config.sampling
        if defaults != SamplingDefaults():
            differs = ([f"DDIM η starts at {number(defaults.ddim_eta)}"] * (defaults.ddim_eta != 0)
                       + ["x̂₀ clipping starts off"] * (not defaults.clip_x0)
                       + ["DDPM adds noise with σ_t² = β_t"] * (defaults.variance == "beta"))
            status += f" {', '.join(differs) or 'Sampling'} for this model: {defaults.why}"
        first = served.first_run(FIRST_BATCH, DEFAULT_SETTINGS.steps)  # the model card's table says why, if it differs
        table, card, samples = model_card(served)
        # one update per output: Gradio takes the value out of an update dict as it sends it
        ddim_steps = [gr.update(maximum=T, value=first.ddim_steps) for _ in range(2)]
        ddim_eta = [gr.update(value=defaults.ddim_eta) for _ in range(2)]
        clip = [gr.update(value=defaults.clip_x0) for _ in range(2)]
        return (status + "\n\n" + table, card, samples, model_header(served),
                gr.update(maximum=T - 1, value=T // 4), *ddim_steps, gr.update(value=first.batch), *clip, *ddim_eta,
                gr.update(choices=self.library.names, value=served.name))


def user_key(user: UserState, request: gr.Request | None) -> object:
    """Who ``user`` is to :class:`~ddpm_app.views.state.Users`: the Gradio session, or the object when called directly."""
    return request.session_hash if request is not None else id(user)


def frame_slider(count: int, value: int | None = None) -> dict:
    """The frame slider's update for ``count`` stored frames, numbered from 1 (its range is at least 1…2)."""
    update = gr.update(maximum=max(count, 2))
    if value is not None:
        update["value"] = max(value, 1)
    return update


@contextmanager
def user_errors():
    """Turn what a user can get wrong (a value out of range, a bad image, a bad model) into a gr.Error message."""
    try:
        yield
    except (InvalidValue, ImageError, ModelFolderError) as e:
        raise user_error(str(e)) from None


# ---------------------------------------------------------------------------------------------------------------
# Text and plots


def preview_file(array: np.ndarray) -> str:
    """A picture streamed while a run goes on, as a JPEG file (quality 90, full colour resolution) in Gradio's cache.

    Gradio would encode an array as PNG for each panel: about 20 ms for a 4-image grid on a 2-core CPU, against
    0.4 ms for this JPEG at a quarter of the bytes, which matters when previews compete with sampling for the
    cores. Final pictures and the frame scrubber stay lossless PNG.
    """
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=90, subsampling=0)
    return processing_utils.save_bytes_to_cache(buffer.getvalue(), "preview.jpeg", processing_utils.get_upload_folder())


def status_html(served: ServedModel, run: Trajectory, step: Step, elapsed: float, update: str = "") -> str:
    """Progress, the step's t, ᾱ_t and SNR, and (``update``) the step's update with its numbers filled in."""
    level = served.noise_level(step.t)
    n = run.num_steps
    if step.is_last:
        head = f"<b>Done</b>: {n} steps in {elapsed:.1f} s ({n / max(elapsed, 1e-9):.0f} steps/s). Shown: the final x₀."
    else:
        head = f"Step <b>{step.index + 1}</b> / {n}"
    return (f"<div class='ddpm-stats'><progress value='{step.index + 1}' max='{n}'></progress>"
            f"<div>{head}</div>"
            f"<div>t = <b>{step.t}</b> · ᾱ_t = {number(level.alpha_bar)} · SNR = {level.snr_db:+.1f} dB · "
            f"{elapsed:.1f} s · seed {run.seed}</div>"
            + (f"<div class='ddpm-update'>{html.escape(update)}</div>" if update else "") + "</div>")


def forward_numbers(served: ServedModel, t: int, noise_seed: int | None = None) -> str:
    lv = served.noise_level(t)
    seed = f" · noise seed {noise_seed}" if noise_seed is not None else ""
    return (f"**t = {t}** of 0…{served.timesteps - 1} ({served.config.schedule.kind} schedule){seed}\n\n"
            f"$\\bar\\alpha_t$ = **{number(lv.alpha_bar)}** · "
            f"$\\sqrt{{\\bar\\alpha_t}}$ = **{number(lv.sqrt_alpha_bar)}** · "
            f"$\\sqrt{{1-\\bar\\alpha_t}}$ = **{number(lv.sqrt_one_minus_alpha_bar)}** · "
            f"SNR = $\\bar\\alpha_t/(1-\\bar\\alpha_t)$ = {number(lv.snr)} = **{lv.snr_db:+.1f} dB**\n\n"
            f"$$x_t = {number(lv.sqrt_alpha_bar, 3, latex=True)}\\,x_0 + "
            f"{number(lv.sqrt_one_minus_alpha_bar, 3, latex=True)}\\,\\varepsilon \\qquad (t = {t})$$")


def schedule_plot(served: ServedModel, t: int) -> np.ndarray:
    """ᾱ_t and SNR (dB) against t for both schedules, the model's drawn bold, the current t marked: (H, W, 3).

    The curves are drawn once per model (matplotlib is slow); moving t only paints the marker line."""
    base, marks = _schedule_figure(served.timesteps, served.config.schedule.kind)
    img = base.copy()
    for x0, dx, top, bottom in marks:
        x = round(x0 + dx * t)
        img[top:bottom, x - 1:x + 1] = (220, 20, 60)
    return img


@lru_cache(maxsize=8)
def _schedule_figure(timesteps: int, own: str) -> tuple[np.ndarray, list[tuple[float, float, int, int]]]:
    """The two panels, one above the other (narrow enough to stay legible on a phone), as pixels, and for each
    the marker geometry: x pixel = x0 + dx·t, rows top…bottom."""
    fig = Figure(figsize=(4.8, 4.4), dpi=100, layout="constrained")
    fig.suptitle("Noise schedules (red line: the current t)", fontsize=10)
    ax_a, ax_s = fig.subplots(2, 1, sharex=True)
    for kind, (abar, snr_db) in schedule_curves(timesteps).items():
        style = dict(lw=2.6 if kind == own else 1.2, alpha=1.0 if kind == own else 0.55,
                     label=f"{kind}{' (this model)' if kind == own else ''}")
        ax_a.plot(abar, **style)
        ax_s.plot(snr_db, **style)
    for ax, name in ((ax_a, r"$\bar\alpha_t$"), (ax_s, "SNR (dB)")):
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    ax_s.set_xlabel("t")
    ax_a.legend(fontsize=8, loc="lower left")  # the top right holds the picture's buttons
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    height = pixels.shape[0]
    marks = []
    for ax in (ax_a, ax_s):
        (x_start, _), (x_end, _) = ax.transData.transform([(0, 0), (timesteps - 1, 0)])
        box = ax.get_window_extent()  # pixels from the bottom left
        marks.append((x_start, (x_end - x_start) / max(timesteps - 1, 1),
                      int(height - box.y1) + 1, int(height - box.y0) - 1))
    return pixels, marks


def model_header(served: ServedModel) -> str:
    c = served.config
    return (f"Model: **{served.name}** — {c.image_size}×{c.image_size}, {c.channels} channel"
            f"{'s' if c.channels > 1 else ''}, {c.schedule.kind} schedule, T = {c.schedule.timesteps}, "
            f"device {served.device.type}")


def model_card(served: ServedModel) -> tuple[str, str, str | None]:
    """(summary table, model card text) in Markdown, and the path of the card's sample grid if there is one."""
    s = served.summary()
    rows = [("source", f"`{s.source}`"), ("dataset", s.dataset or "not recorded"), ("architecture", s.arch),
            ("parameters", f"{s.parameters / 1e6:.1f} M"),
            ("image size", f"{s.image_size}×{s.image_size}, {s.channels} channel(s)"),
            ("schedule", f"{s.schedule.kind}, T = {s.schedule.timesteps}"),
            ("speed here", "not measured (compiled on first use)" if s.ms_per_step is None
             else f"{s.ms_per_step:.1f} ms per step at batch 1, measured on this machine when the model was loaded"),
            ("runs on", s.runtime)]
    first = served.first_run(FIRST_BATCH, DEFAULT_SETTINGS.steps)
    rows += [("first settings", first.note)] if first.note else []
    rows += [(k.replace("_", " "), str(v)) for k, v in s.training.items()
             if isinstance(v, (str, int, float, bool)) and k != "dataset"][:12]
    table = "| property | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    card = s.card[:3000] + ("…" if len(s.card) > 3000 else "")
    return table, card or "This model has no README.md card.", served_picture(s.samples)


def served_picture(path: Path | None) -> str | None:
    """A copy of the picture at ``path`` in Gradio's cache, which Gradio serves (it refuses files outside the working
    and temporary folders and its ``allowed_paths``, and a model folder may be anywhere: another ``--weights``
    folder, the Hub's cache); None for no picture or one over the upload limit."""
    if path is None or path.stat().st_size > MAX_FILE_BYTES:
        return None
    return processing_utils.save_file_to_cache(path, processing_utils.get_upload_folder())


# ---------------------------------------------------------------------------------------------------------------
# Layout


def _image(label: str, height: int | None = 280, pixelated: bool = True, **kw) -> gr.Image:
    """An output picture, its label above it (class ``ddpm-picture``); ``pixelated`` enlarges small model images
    with sharp pixels."""
    return gr.Image(label=label, format="png", interactive=False, height=height,
                    elem_classes=["ddpm-picture"] + ["pixelated"] * pixelated, buttons=["download", "fullscreen"],
                    **{"min_width": 140} | kw)


def _sampler_controls(T: int, choices: list[tuple[str, str]] = SAMPLER_CHOICES,
                      default: SamplerSettings = DEFAULT_SETTINGS) -> tuple[gr.Radio, gr.Slider, gr.Slider]:
    """Sampler choice (``choices`` say what each runs), and DDIM's K and η (shown only for DDIM)."""
    sampler = widgets.Radio(choices, value=default.sampler, label="Sampler")
    with gr.Column(visible=default.sampler == "ddim") as ddim_row:
        steps = widgets.Slider(1, T, value=min(default.steps, T), step=1, label="DDIM steps K")
        eta = widgets.Slider(0, 1, value=default.eta, step=0.05, label="η (0 = deterministic, 1 = as much noise as DDPM)")
    sampler.change(lambda s: gr.update(visible=s == "ddim"), sampler, ddim_row, api_visibility="private",
                   queue=False, show_progress="hidden")
    return sampler, steps, eta


def _exporter(h: Handlers, kind: str):
    """The export event's function for ``kind``: Gradio passes it a ``gr.Progress`` that the export reports to."""
    def export(user: UserState, progress=gr.Progress()) -> str:
        return h.export(kind, user, progress)
    export.__name__ = f"export_{kind}"
    return export


def build(library: ModelLibrary, preview_interval: float | None = DEFAULT_PREVIEW_INTERVAL,
          max_trajectory_bytes: int = DEFAULT_TRAJECTORY_BYTES, queue_size: int = QUEUE_SIZE,
          users: Users | None = None) -> gr.Blocks:
    """The app's Blocks, queued; launch it with ``css=CSS, head=HEAD, theme=THEME``. ``users`` decides how long
    each user's results stay in memory (see :class:`~ddpm_app.views.state.Users`)."""
    from ddpm_app.ui.lab import LabHandlers, lab_tab
    from ddpm_app.ui.teach import TeachHandlers, figure_row, teach_tabs

    h = Handlers(library, preview_interval, max_trajectory_bytes, users=users)
    th = TeachHandlers(library, preview_interval=preview_interval)
    first = library.get()
    T = first.timesteps
    first_run = first.first_run(FIRST_BATCH, DEFAULT_SETTINGS.steps)  # fewer where a step is slow here
    # the model may ask for another η and clipping
    first_settings = replace(DEFAULT_SETTINGS, eta=first.config.sampling.ddim_eta, steps=first_run.ddim_steps,
                             clip_x0=first.config.sampling.clip_x0)
    # the first model's pictures and numbers, computed on the device thread like all tensor work: a tensor
    # operation on this thread would start a second OpenMP team, and sampling on a 2-core CPU then measured
    # 35-50 % slower for as long as the server runs (benchmarks/app_stream.py)
    header_text, numbers_text, plot_image, (table, card_text, samples_path) = library.worker.run(
        lambda: (model_header(first), forward_numbers(first, T // 4), schedule_plot(first, T // 4),
                 model_card(first)))
    chain = dict(concurrency_limit=1, concurrency_id=JOBS)  # one sampling job at a time per device

    with widgets.Blocks(title="DDPM step by step", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        user = gr.State(UserState())
        gr.Markdown(INTRO)
        header = gr.Markdown(header_text, label="model")

        with gr.Tabs():
            # 1. Generate -----------------------------------------------------------------------------
            with gr.Tab("Generate", id="generate"):
                gr.Markdown(GENERATE_HELP, latex_delimiters=LATEX)
                with gr.Row():
                    with gr.Column(scale=1, min_width=260):
                        sampler, steps, eta = _sampler_controls(T, default=first_settings)
                        with gr.Row():
                            seed = widgets.Number(-1, label="Seed (−1 or blank = random)", precision=0,
                                                  min_width=120)
                            seed_used = gr.Textbox(label="Seed used", interactive=False, min_width=120)
                        batch = widgets.Slider(1, MAX_BATCH, value=first_run.batch, step=1, label="Images")
                        with gr.Row():
                            clip = gr.Checkbox(first_settings.clip_x0, label="Clip x̂₀ to [−1, 1]", min_width=120)
                            show_eps = gr.Checkbox(False, label="Show predicted noise ε̂", min_width=120,
                                                   info="with clipping on: the ε̂ consistent with the clipped x̂₀")
                        with gr.Row():
                            run_btn = gr.Button("Generate", variant="primary", min_width=100)
                            stop_btn = gr.Button("Stop", variant="stop", min_width=80)
                    with gr.Column(scale=2, min_width=300):
                        status = gr.HTML("<div class='ddpm-stats'>Press <b>Generate</b>.</div>", label="progress",
                                         elem_id="gen-status", min_height=60)
                        with gr.Row():
                            # at least 200 px each: one picture per line on a phone, big enough to see faces
                            g_xt = _image("x_t", elem_id="gen-xt", min_width=200)
                            g_x0 = _image("predicted x̂₀", elem_id="gen-x0", min_width=200)
                            g_eps = _image("predicted ε̂ (×½)", visible=False, elem_id="gen-eps", min_width=200)

            lab_tab(LabHandlers(library.worker), user)  # the 2-D lab: DDPM on points, trained live

            # 2. Step through the frames ----------------------------------------------------------
            with gr.Tab("Frames", id="frames"):
                gr.Markdown(FRAMES_HELP, latex_delimiters=LATEX)
                frame = widgets.Slider(1, 2, value=1, step=1, label="Frame",
                                       info="one stored step of the run: the line below says which step and t",
                                       elem_id="frame-slider")
                with gr.Row():
                    prev_btn = gr.Button("◀ Previous", size="sm", min_width=80)
                    next_btn = gr.Button("Next ▶", size="sm", min_width=80)
                frame_label = gr.Markdown("No run yet: press **Generate** first.", label="frame info",
                                          elem_id="frame-label")
                which_run = widgets.Radio([("Latest Generate run", "generate"), ("Latest Denoise run", "denoise")],
                                     value="generate", label="Run", elem_id="which-run")
                with gr.Row():
                    f_xt = _image("x_t", min_width=200)
                    f_x0 = _image("predicted x̂₀", min_width=200)
                f_update = gr.Markdown("", latex_delimiters=LATEX, label="this step's update",
                                       elem_id="frame-update")
                f_terms = _image("this step's terms (first image) and their sum", height=220, pixelated=False,
                                 elem_id="frame-terms")
                with gr.Row():
                    gif_btn = gr.Button("Export GIF", size="sm", min_width=80)
                    mp4_btn = gr.Button("Export MP4", size="sm", min_width=80)
                    png_btn = gr.Button("Final images (PNG)", size="sm", min_width=80)
                export_file = gr.File(label="Download (the latest run's export)", interactive=False,
                                      elem_id="export-file", elem_classes="ddpm-download")

            # 3. Forward process ----------------------------------------------------------------
            with gr.Tab("Forward", id="forward"):
                gr.Markdown(FORWARD_HELP, latex_delimiters=LATEX)
                with gr.Row():
                    with gr.Column(scale=1, min_width=260):
                        photo = widgets.PhotoInput(label="Photo (center-cropped, resized)", type="filepath",
                                         image_mode=None, sources=["upload", "clipboard"], height=260)
                        gr.Examples([[str(p)] for p in EXAMPLES], inputs=photo, label="Examples",
                                    cache_examples=False)
                    with gr.Column(scale=2, min_width=300):
                        # t right above x_t, so x_t stays in view while t moves (on a phone too); the pictures
                        # in the order of x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε
                        t_slider = widgets.Slider(0, T - 1, value=T // 4, step=1, label="t", elem_id="t-slider")
                        with gr.Row():
                            q_xt = _image("x_t", height=240, elem_id="fwd-xt")
                            q_x0 = _image("x₀", height=240)
                            q_eps = _image("ε (×½)", height=240)
                        numbers = gr.Markdown(numbers_text, latex_delimiters=LATEX,
                                              label="numbers", elem_id="fwd-numbers")
                        with gr.Row():
                            fix_noise = gr.Checkbox(True, label="Fix the noise ε while t moves", min_width=140)
                            noise_seed = widgets.Number(-1, label="Noise seed (−1 = random)", precision=0,
                                                   min_width=120)
                            new_noise = gr.Button("New noise", size="sm", min_width=80)
                with gr.Row():
                    strip = _image("x_t at evenly spaced t (same ε)", height=None, pixelated=False, scale=3,
                                   min_width=300, elem_id="fwd-strip")
                    plot = _image("noise schedules", height=None, pixelated=False, value=plot_image, scale=2,
                                  min_width=300, show_label=False, elem_id="fwd-plot")

            # 4. Noise it, then denoise it ------------------------------------------------------
            with gr.Tab("Denoise", id="denoise"):
                gr.Markdown(DENOISE_HELP, latex_delimiters=LATEX)
                with gr.Row():
                    with gr.Column(scale=1, min_width=260):
                        sd_note = gr.Markdown("Upload a photo (or pick an example) in the **Forward** tab first.",
                                              label="starting point")
                        sd_start = _image("start: x_t", height=200)
                        sd_sampler, sd_steps, sd_eta = _sampler_controls(T, SDEDIT_CHOICES, first_settings)
                        sd_seed = widgets.Number(-1, label="Seed (−1 or blank = random)", precision=0)
                        sd_clip = gr.Checkbox(first_settings.clip_x0, label="Clip x̂₀ to [−1, 1]")
                        with gr.Row():
                            sd_btn = gr.Button("Denoise", variant="primary", min_width=100)
                            sd_stop = gr.Button("Stop", variant="stop", min_width=80)
                        sd_seed_used = gr.Textbox(label="Seed used", interactive=False)
                    with gr.Column(scale=2, min_width=300):
                        sd_status = gr.HTML("<div class='ddpm-stats'>Press <b>Denoise</b>.</div>", label="progress",
                                            elem_id="sd-status", min_height=60)
                        with gr.Row():
                            sd_xt = _image("x_t", min_width=200)
                            sd_x0 = _image("predicted x̂₀", min_width=200)
                        sd_compare = _image("original | noised | result", height=220, pixelated=False)

            # 5.–8. Training, Likelihood, Compare, Interpolate ------------------------------------
            teach = teach_tabs(th, user, first)

            # 9. Model --------------------------------------------------------------------------
            with gr.Tab("Model", id="model"):
                gr.Markdown(MODEL_HELP)
                with gr.Row():
                    with gr.Column(min_width=240):
                        model_pick = widgets.Dropdown(library.names, value=first.name, label="Models in the weights folder")
                        rescan_btn = gr.Button("Rescan the weights folder", size="sm")
                    with gr.Column(min_width=240):
                        folder = gr.Textbox(label="Model folder inside the weights folder",
                                            placeholder="runs/my-faces", elem_id="model-folder")
                        folder_btn = gr.Button("Load folder", size="sm")
                    with gr.Column(min_width=240):
                        repo = gr.Textbox(label="Hub model id", placeholder="user/model-name")
                        download_btn = gr.Button("Download from the Hub", size="sm")
                model_note = gr.Markdown("", elem_id="model-note")
                with gr.Row():
                    with gr.Column(min_width=300):
                        summary = gr.Markdown(table, label="model summary", elem_id="model-summary")
                    with gr.Column(min_width=300):
                        samples = gr.Image(samples_path, label="samples from the model card", interactive=False,
                                           buttons=["fullscreen"], elem_classes="ddpm-picture",
                                           elem_id="model-samples")
                with gr.Accordion("Model card (README.md)", open=False):
                    card = gr.Markdown(card_text, label="model card")

        figure_row(th, user)

        # Events ------------------------------------------------------------------------------------------
        frame_outputs = [f_xt, f_x0, frame_label, f_update, f_terms, which_run]
        show_frame = dict(fn=h.frame, inputs=[frame, user], outputs=frame_outputs,
                          show_progress="hidden", concurrency_limit=4)
        # while a run waits for the device, Gradio's tracker on the status line shows the queue position and an
        # estimate (with show_progress="hidden" it is drawn at opacity 0); while it streams the tracker hides
        waiting = dict(show_progress="full", show_progress_on=[status])
        gen_event = run_btn.click(h.generate, [sampler, steps, eta, seed, batch, clip, show_eps, user],
                                  [g_xt, g_x0, g_eps, status, seed_used, frame], api_name="generate",
                                  **waiting, **chain)
        gen_event.success(**show_frame, api_name="show_generated", api_visibility="private")  # Stop: below
        stopped = dict(fn=h.show_stopped, inputs=user, outputs=[frame, *frame_outputs],
                       api_visibility="private", show_progress="hidden", concurrency_limit=4)
        stop_btn.click(lambda: STOPPED, None, status, cancels=[gen_event], api_visibility="private",
                       queue=False).then(**stopped)
        show_eps.change(lambda v: gr.update(visible=v), show_eps, g_eps, api_visibility="private", queue=False)

        frame.input(**show_frame, api_name="frame", trigger_mode="always_last")
        prev_btn.click(lambda i, u: h.nudge(i, -1, u), [frame, user], [frame, *frame_outputs],
                       api_visibility="private")
        next_btn.click(lambda i, u: h.nudge(i, +1, u), [frame, user], [frame, *frame_outputs],
                       api_visibility="private")
        which_run.input(h.show_run, [which_run, user], [frame, *frame_outputs], api_name="show_run",
                        show_progress="hidden")
        for btn, kind in ((gif_btn, "gif"), (mp4_btn, "mp4"), (png_btn, "png")):
            btn.click(_exporter(h, kind), user, export_file, api_name=f"export_{kind}", show_progress="full")
        for btn in (run_btn, sd_btn):  # a new run: the previous run's export goes
            btn.click(lambda: None, None, export_file, api_visibility="private", queue=False, show_progress="hidden")

        noise_inputs = [photo, t_slider, fix_noise, noise_seed, user]
        noise_outputs = [q_x0, q_eps, q_xt, numbers, strip, plot, sd_start, sd_note]
        noise_kw = dict(show_progress="hidden", trigger_mode="always_last", concurrency_limit=4)
        t_slider.change(h.noise, noise_inputs, noise_outputs, api_name="noise", **noise_kw)
        for trigger in (photo.change, fix_noise.change, noise_seed.submit):
            trigger(h.noise, noise_inputs, noise_outputs, api_visibility="private", **noise_kw)
        new_noise.click(h.new_noise, [photo, t_slider, user], [noise_seed, *noise_outputs],
                        api_visibility="private", **noise_kw)

        sd_event = sd_btn.click(h.denoise, [sd_sampler, sd_steps, sd_eta, sd_seed, sd_clip, user],
                                [sd_xt, sd_x0, sd_compare, sd_status, sd_seed_used, frame], api_name="denoise",
                                show_progress="full", show_progress_on=[sd_status], **chain)
        sd_event.success(**show_frame, api_name="show_denoised", api_visibility="private")
        sd_stop.click(lambda: STOPPED, None, sd_status, cancels=[sd_event], api_visibility="private",
                      queue=False).then(**stopped)

        model_outputs = [summary, card, samples, header, t_slider, steps, sd_steps, batch, clip, sd_clip, eta, sd_eta,
                         model_pick]
        refresh_forward = dict(fn=h.noise, inputs=noise_inputs, outputs=noise_outputs, api_visibility="private",
                               **noise_kw)
        teach_ranges = dict(fn=th.ranges, inputs=user, outputs=[teach.train_t, teach.compare_t, teach.interp_steps,
                                                        teach.interp_eta],
                            api_visibility="private", queue=False)
        model_pick.input(h.select_model, [model_pick, user], model_outputs, api_name="select_model",
                         show_progress="hidden").then(**refresh_forward).then(**teach_ranges)
        download_btn.click(h.download_model, [repo, user], model_outputs, api_name="download_model",
                           show_progress="minimal", show_progress_on=download_btn).success(
                               **refresh_forward).then(**teach_ranges)
        folder_btn.click(h.load_folder, [folder, user], model_outputs, api_name="load_folder",
                         show_progress="minimal", show_progress_on=folder_btn).success(
                             **refresh_forward).then(**teach_ranges)
        rescan_btn.click(h.rescan, user, [model_pick, model_note], api_name="rescan_models", show_progress="hidden")

        demo.unload(h.leave)
    demo.queue(max_size=None, default_concurrency_limit=2)
    limit_waiting(demo, JOBS, queue_size, VIEW_QUEUE_SIZE)  # views are never refused because jobs fill the queue
    return demo
