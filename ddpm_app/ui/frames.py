"""The Frames tab: scrub through every stored step of the latest Generate or Denoise run, see the step's update
with its numbers and its terms as pictures, and export the run as GIF, MP4 or PNG."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from ddpm_app.checks import whole_number
from ddpm_app.diffusion.schedule import paper_t
from ddpm_app.pictures import picture
from ddpm_app.serve.runs import Frame, Trajectory
from ddpm_app.text import ENGLISH, text
from ddpm_app.ui import widgets
from ddpm_app.ui.i18n import choices as i18n_choices
from ddpm_app.ui.i18n import i18n
from ddpm_app.ui.kit import LATEX, TabHandlers, frame_slider, help_markdown, output_image
from ddpm_app.ui.widgets import user_errors
from ddpm_app.views.export import export_gif, export_mp4, export_png
from ddpm_app.views.reverse_step import change_picture, equation_markdown, frame_breakdown, terms_strip
from ddpm_app.views.state import DEFAULT_TIME_TO_LIVE, UserState

FRAMES_HELP = text("frames.help")
RELEASED = text("run.released", minutes=DEFAULT_TIME_TO_LIVE // 60)


class FramesHandlers(TabHandlers):
    def frame(self, number: float, user: UserState) -> tuple:
        """Stored frame ``number`` (1 = the first) of the run Frames shows (the user's latest Generate or Denoise
        run): (x_t, x̂₀, label, the step's update with its numbers, its terms as pictures, which run, the step's
        change x_{t−1} − x_t as a picture)."""
        run, language = user.run, user.language
        if run is not None and run.released:
            return (None, None, text("run.released", language, minutes=DEFAULT_TIME_TO_LIVE // 60), "", None,
                    user.shown, None)
        if run is None or not run.frames:
            return (None, None, text("run.no_run", language, kind=text(f"run.noun.{user.shown}", language),
                                     button=text(f"run.kind.{user.shown}", language)), "", None, user.shown, None)
        with user_errors(user.language):
            i = whole_number(number, "frame", 1, len(run.frames)) - 1
        f = run.frames[i]
        user.frame_index = i
        done = dict(done=run.steps_done, total=run.num_steps)
        state = text("run.finished" if run.finished else "run.stopped_after" if run.stopped else "run.running",
                     language, **done)
        every = text("run.every_step" if run.stride == 1 else "run.every_nth", language, stride=run.stride)
        label = text("run.frame_label", language, step=f.index + 1, steps=run.num_steps, t=paper_t(f.t), frame=i + 1,
                     frames=len(run.frames), title=run.title, state=state, every=every,
                     model=model_named(run, user.model or self.library.default, language))
        x_t, x0, update, terms, change = self.worker.run(frame_pictures, run, f, language)
        return x_t, x0, label, update, terms, user.shown, change

    def nudge(self, number: float, delta: int, user: UserState) -> tuple:
        """Prev/next: (new slider value, then the outputs of :meth:`frame`), kept inside the stored frames (1…count)."""
        count = len(user.run.frames) if user.run and user.run.frames else 1
        with user_errors(user.language):
            number = min(max(whole_number(number, "frame", 1, count) + delta, 1), count)
        return (number, *self.frame(number, user))

    def show_run(self, which: str, user: UserState) -> tuple:
        """Switch Frames between the latest Generate and Denoise runs: (slider update, outputs of :meth:`frame`)."""
        with user_errors(user.language):
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

    def export(self, kind: str, user: UserState, progress: gr.Progress | None = None) -> str:
        """Write the latest run as ``gif`` / ``mp4`` (x_t | x̂₀ per frame) or ``png`` (final images), named by
        what ran (``ddim-50steps-eta0_seed7.gif``); returns a path. ``progress`` hears of each frame drawn."""
        run = user.run
        language = user.language
        told = None if progress is None else (
            lambda done, total: progress((done, total), desc=text("export.drawing_frames", language, kind=kind.upper()),
                                         unit=text("export.frames_unit", language)))

        def write(path: Path) -> Path:
            if kind == "png":
                return export_png(run, path)
            return {"gif": export_gif, "mp4": export_mp4}[kind](run, path, progress=told, language=language)

        with user_errors(user.language):
            return str(self.worker.run(self.exports.write, f"{run.file_stem if run else 'run'}.{kind}", write))


def model_named(run: Trajectory, selected: str, language: str = ENGLISH) -> str:
    """Which model made ``run``, and whether that is still the ``selected`` one: a run stays in Frames after a switch."""
    if run.model == selected:
        return text("run.model", language, model=run.model)
    return text("run.model_not_selected", language, model=run.model, selected=selected)


def frame_pictures(run: Trajectory, f: Frame, language: str = ENGLISH) -> tuple:
    """(x_t, x̂₀, the step's update with its numbers, its terms as pictures, its change x_{t−1} − x_t) of the
    stored frame ``f`` of ``run``."""
    parts = frame_breakdown(run, f)
    if parts is None:
        return picture(f.x_t), picture(f.pred_x0), "", None, None
    return (picture(f.x_t), picture(f.pred_x0), equation_markdown(parts, run.settings.clip_x0, language),
            terms_strip(parts, f.x_prev), change_picture(parts, f.first_x_t))


def _exporter(h: FramesHandlers, kind: str):
    """The export event's function for ``kind``: Gradio passes it a ``gr.Progress`` that the export reports to."""
    def export(user: UserState, progress=gr.Progress()) -> str:
        return h.export(kind, user, progress)
    export.__name__ = f"export_{kind}"
    return export


@dataclass
class FramesTab:
    """What the runs' tabs (Generate, Denoise) connect to: the frame slider, the events that show a frame, and the
    download box."""

    slider: gr.Slider
    show_frame: dict  # an event showing the slider's frame
    show_stopped: dict  # an event showing the last frame once a stopped run has ended
    export_file: gr.File

    def cleared_by(self, button: gr.Button) -> None:
        """A new run: the previous run's export goes."""
        button.click(lambda: None, None, self.export_file, api_visibility="private", queue=False,
                     show_progress="hidden")


def frames_tab(h: FramesHandlers, user: gr.State) -> FramesTab:
    """The Frames tab with its own events; call inside ``gr.Tabs()``."""
    with gr.Tab(i18n("tab.frames"), id="frames"):
        help_markdown("frames.help")
        frame = widgets.Slider(1, 2, value=1, step=1, label=i18n("frames.frame"), info=i18n("frames.frame_info"),
                               elem_id="frame-slider")
        with gr.Row():
            prev_btn = gr.Button(i18n("frames.previous"), size="sm", min_width=80)
            next_btn = gr.Button(i18n("frames.next"), size="sm", min_width=80)
        label = gr.Markdown(i18n("frames.none_yet"), label=i18n("frames.frame_info_label"), elem_id="frame-label")
        which_run = widgets.Radio(i18n_choices([("frames.latest_generate", "generate"),
                                                ("frames.latest_denoise", "denoise")]),
                                  value="generate", label=i18n("frames.run"), elem_id="which-run")
        with gr.Row():
            x_t = output_image("picture.x_t", min_width=200)
            x0 = output_image("picture.pred_x0", min_width=200)
        update = gr.Markdown("", latex_delimiters=LATEX, label=i18n("frames.update"), elem_id="frame-update")
        with gr.Row():
            terms = output_image("frames.terms", height=220, pixelated=False, elem_id="frame-terms", scale=4,
                                 min_width=300)
            change = output_image("frames.change", height=220, pixelated=False, elem_id="frame-change", scale=1,
                                  min_width=160)
        with gr.Row():
            gif_btn = gr.Button(i18n("frames.export_gif"), size="sm", min_width=80)
            mp4_btn = gr.Button(i18n("frames.export_mp4"), size="sm", min_width=80)
            png_btn = gr.Button(i18n("frames.export_png"), size="sm", min_width=80)
        export_file = gr.File(label=i18n("frames.download"), interactive=False,
                              elem_id="export-file", elem_classes="ddpm-download")

    outputs = [x_t, x0, label, update, terms, which_run, change]
    show_frame = dict(fn=h.frame, inputs=[frame, user], outputs=outputs, show_progress="hidden", concurrency_limit=4)
    show_stopped = dict(fn=h.show_stopped, inputs=user, outputs=[frame, *outputs], api_visibility="private",
                        show_progress="hidden", concurrency_limit=4)
    frame.input(**show_frame, api_name="frame", trigger_mode="always_last")
    prev_btn.click(lambda i, u: h.nudge(i, -1, u), [frame, user], [frame, *outputs], api_visibility="private")
    next_btn.click(lambda i, u: h.nudge(i, +1, u), [frame, user], [frame, *outputs], api_visibility="private")
    which_run.input(h.show_run, [which_run, user], [frame, *outputs], api_name="show_run", show_progress="hidden")
    for btn, kind in ((gif_btn, "gif"), (mp4_btn, "mp4"), (png_btn, "png")):
        btn.click(_exporter(h, kind), user, export_file, api_name=f"export_{kind}", show_progress="full")
    return FramesTab(frame, show_frame, show_stopped, export_file)
