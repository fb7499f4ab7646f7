"""What the tabs share: the handlers' common state, the output picture and sampler widgets, the run status line and
its previews, and the texts more than one tab shows."""

from __future__ import annotations

import filecmp
import html
import io
import time
from dataclasses import replace
from pathlib import Path

import gradio as gr
import numpy as np
from gradio import processing_utils
from PIL import Image

from ddpm_app.checks import InvalidValue
from ddpm_app.diffusion.samplers import SamplerSettings, Step, step_breakdown
from ddpm_app.diffusion.schedule import paper_t
from ddpm_app.numbers import number
from ddpm_app.pictures import noise_picture, picture
from ddpm_app.serve.library import ModelLibrary
from ddpm_app.serve.runs import DEFAULT_PREVIEW_INTERVAL, DEFAULT_TRAJECTORY_BYTES, Trajectory
from ddpm_app.serve.served import ServedModel
from ddpm_app.text import ENGLISH, sentences, text
from ddpm_app.ui import widgets
from ddpm_app.ui.i18n import choices as i18n_choices
from ddpm_app.ui.i18n import i18n, written
from ddpm_app.ui.widgets import PhotoInput
from ddpm_app.views.export import ExportFolder
from ddpm_app.views.pace import Pace, about, time_left
from ddpm_app.views.reverse_step import equation_text
from ddpm_app.views.state import Users, UserState

ASSETS = Path(__file__).parents[1] / "assets"
EXAMPLES = sorted(ASSETS.glob("*.png"))
LATEX = [{"left": "$$", "right": "$$", "display": True}, {"left": "$", "right": "$", "display": False}]
DEFAULT_SETTINGS = SamplerSettings()  # what the sampler controls show first
FIRST_BATCH = 4  # the images Generate makes at first (one where a step is slow here: ServedModel.first_run)

NOISE_SHOWN = text("noise_shown")  # under the help of the tabs that show noise pictures
STOPPED = i18n("run.stopped")


class TabHandlers:
    """What every tab's handlers share: the model library and its device worker, the users' results, how runs stream
    and are kept, and the folders downloads are written to. Each tab's module adds its events to it;
    :class:`ddpm_app.ui.page.Handlers` has them all.

    All tensor work runs on the worker (:class:`~ddpm_app.serve.worker.DeviceWorker`): a handler hands it a job with
    ``self.worker.run(fn, …)``, or a generator with ``self.worker.stream(…)``; checking what the user sent and
    formatting text happen on the handler's own thread."""

    def __init__(self, library: ModelLibrary, preview_interval: float | None = DEFAULT_PREVIEW_INTERVAL,
                 max_trajectory_bytes: int = DEFAULT_TRAJECTORY_BYTES, export_dir: str | Path | None = None,
                 users: Users | None = None, figure_dir: str | Path | None = None):
        self.library = library
        self.worker = library.worker
        self.preview_interval = preview_interval  # None: send only the final images
        self.max_trajectory_bytes = max_trajectory_bytes
        self.exports = ExportFolder(export_dir) if export_dir else ExportFolder.temporary("ddpm_app_")
        # bounded, like exports
        self.figures = ExportFolder(figure_dir) if figure_dir else ExportFolder.temporary("ddpm_figures_")
        self.users = Users() if users is None else users  # whose runs and photos stay in memory, and for how long
        self.pace = Pace()  # how fast each model's fp32 network went in the loss curve and the bound

    def leave(self, request: gr.Request) -> None:
        """The user's tab (or API client) has closed: release its run and photo."""
        self.users.leave(request.session_hash)

    def served(self, user: UserState) -> ServedModel:
        """The model this user has chosen (shared with every other user of it)."""
        return self.library.get(user.model)

    def estimate(self, served: ServedModel, inputs: int, language: str = ENGLISH) -> str:
        """How long ``inputs`` fp32 network inputs should take, "≈ 6 s" (in ``language``), from :attr:`pace` or the
        step time measured when the model loaded; "" where neither is known."""
        fallback = served.ms_per_step / 1000 if served.ms_per_step is not None else None
        seconds = self.pace.estimate(served.name, inputs, fallback)
        return "" if seconds is None else about(seconds, language)

    def carry_photo(self, tab: str, photo: str | None, target: str | None, user: UserState) -> str | dict:
        """The Forward tab's ``photo`` for ``tab``'s photo input, which holds ``target``: taken when the input is
        empty or still holds the photo carried there last; one the user put there is kept (``gr.skip()``)."""
        last = user.carried.get(tab)
        if photo is None or (target is not None and (same_file(target, photo) or not same_file(target, last))):
            return gr.skip()
        user.carried[tab] = photo
        return photo


def same_file(a: str | None, b: str | None) -> bool:
    """Whether two photo files hold the same bytes (Gradio copies a photo it shows into its cache, by a new path)."""
    if a is None or b is None:
        return False
    try:
        return filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def photo_given(photo: str | None) -> str:
    """The photo's path, or an error asking for one."""
    if photo is None:
        raise InvalidValue("error.upload_first")
    return photo


def first_settings(first: ServedModel) -> SamplerSettings:
    """What the sampler controls show for the first model: fewer DDIM steps where a step is slow here, and the η
    and clipping the model asks for."""
    first_run = first.first_run(FIRST_BATCH, DEFAULT_SETTINGS.steps)
    return replace(DEFAULT_SETTINGS, eta=first.config.sampling.ddim_eta, steps=first_run.ddim_steps,
                   clip_x0=first.config.sampling.clip_x0)


def starting_t(T: int) -> int:
    """Where Forward's and Training's t sliders start: the paper's t = T/4, at least 1."""
    return max(T // 4, 1)


def user_key(user: UserState, request: gr.Request | None) -> object:
    """Who ``user`` is to :class:`~ddpm_app.views.state.Users`: the Gradio session, or the object when called directly."""
    return request.session_hash if request is not None else id(user)


def frame_slider(count: int, value: int | None = None) -> dict:
    """The frame slider's update for ``count`` stored frames, numbered from 1 (its range is at least 1…2)."""
    update = gr.update(maximum=max(count, 2))
    if value is not None:
        update["value"] = max(value, 1)
    return update


# ---------------------------------------------------------------------------------------------------------------
# A run's previews and status line (Generate and Denoise)


def run_preview(served: ServedModel, run: Trajectory, step: Step, started: float, show_eps: bool = True,
                language: str = ENGLISH) -> tuple:
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
            status_html(served, run, step, time.perf_counter() - started, update, language), str(run.seed), slider)


def preview_file(array: np.ndarray) -> str:
    """A picture streamed while a run goes on, as a JPEG file (quality 90, full colour resolution) in Gradio's cache.

    Gradio would encode an array as PNG for each panel, many times slower than this JPEG at four times the bytes
    (docs/performance.md, "Streaming cost"), and previews compete with sampling for the cores. Final pictures and
    the frame scrubber stay lossless PNG.
    """
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=90, subsampling=0)
    return processing_utils.save_bytes_to_cache(buffer.getvalue(), "preview.jpeg", processing_utils.get_upload_folder())


def status_html(served: ServedModel, run: Trajectory, step: Step, elapsed: float, update: str = "",
                language: str = ENGLISH) -> str:
    """Progress, the step's t, ᾱ_t and SNR, and (``update``) the step's update with its numbers filled in."""
    level = served.noise_level(step.t)
    n = run.num_steps
    if step.is_last:
        head = text("status.done", language, steps=n, seconds=f"{elapsed:.1f}", rate=f"{n / max(elapsed, 1e-9):.0f}")
    else:
        left = time_left(step.index + 1, n, elapsed, language)
        head = text("status.step", language, step=step.index + 1, steps=n) + (f" · {left}" if left else "")
    return (f"<div class='ddpm-stats'><progress value='{step.index + 1}' max='{n}'></progress>"
            f"<div>{head}</div>"
            f"<div>t = <b>{paper_t(step.t)}</b> · ᾱ_t = {number(level.alpha_bar)} · "
            f"SNR = {level.snr_db:+.1f} dB · "
            f"{elapsed:.1f} s · {text('status.seed', language, seed=run.seed)}</div>"
            + (f"<div class='ddpm-update'>{html.escape(update)}</div>" if update else "") + "</div>")


# ---------------------------------------------------------------------------------------------------------------
# Widgets more than one tab lays out


def output_image(label: str, height: int | None = 280, pixelated: bool = True, **kw) -> gr.Image:
    """An output picture labelled with the catalogue text ``label`` above it (class ``ddpm-picture``); ``pixelated``
    enlarges small model images with sharp pixels."""
    return gr.Image(label=i18n(label), format="png", interactive=False, height=height,
                    elem_classes=["ddpm-picture"] + ["pixelated"] * pixelated, buttons=["download", "fullscreen"],
                    **{"min_width": 140} | kw)


def sampler_controls(T: int, choices: list[tuple[str, str]],
                     default: SamplerSettings) -> tuple[gr.Radio, gr.Slider, gr.Slider]:
    """Sampler choice (``choices``: catalogue keys saying what each runs, and the samplers), and DDIM's K and η
    (shown only for DDIM)."""
    sampler = widgets.Radio(i18n_choices(choices), value=default.sampler, label=i18n("sampler.label"))
    with gr.Column(visible=default.sampler == "ddim") as ddim_row:
        steps = widgets.Slider(1, T, value=min(default.steps, T), step=1, label=i18n("sampler.ddim_steps"))
        eta = widgets.Slider(0, 1, value=default.eta, step=0.05, label=i18n("sampler.eta"))
    sampler.change(lambda s: gr.update(visible=s == "ddim"), sampler, ddim_row, api_visibility="private",
                   queue=False, show_progress="hidden")
    return sampler, steps, eta


def help_markdown(key: str, noise_pictures: bool = False) -> None:
    """A tab's help, the catalogue text ``key`` with its formulas; ``noise_pictures``: followed, in the same
    paragraph, by how noise pictures are shown."""
    if noise_pictures:
        words = written(lambda language: sentences(text(key, language), text("noise_shown", language)))
    else:
        words = i18n(key)
    gr.Markdown(words, latex_delimiters=LATEX)


def photo_column(label: str, elem_id: str | None = None) -> PhotoInput:
    """A photo upload (labelled with the catalogue text ``label``) with the example pictures under it, in a narrow
    column."""
    with gr.Column(scale=1, min_width=260):
        photo = PhotoInput(label=i18n(label), type="filepath", image_mode=None, sources=["upload", "clipboard"],
                           height=220, elem_id=elem_id, elem_classes="ddpm-photo")
        gr.Examples([[str(p)] for p in EXAMPLES], inputs=photo, label=i18n("label.examples"), cache_examples=False)
    return photo


def carried_into(h: TabHandlers, tab: gr.Tab, photo: PhotoInput, source: gr.Image, user: gr.State) -> None:
    """Opening ``tab`` brings the Forward tab's photo (``source``) into its ``photo`` input, unless the user put
    another one there (:meth:`TabHandlers.carry_photo`). On opening, not at once: the tab's own work on a new photo
    (the training view's loss curve) runs only for a user who looks at it."""
    def carry(source_photo: str | None, target: str | None, state: UserState) -> str | dict:
        return h.carry_photo(tab.id, source_photo, target, state)
    carry.__name__ = f"carry_photo_{tab.id}"
    tab.select(carry, [source, photo, user], photo, api_visibility="private", queue=False, show_progress="hidden")
