"""The 2-D lab tab: DDPM on points, trained live. Pick or draw a data set, watch q(x_t|x₀) spread it, train the
ε-model (Algorithm 1) while the loss and samples stream, then sample (Algorithm 2 or DDIM) and see the paths, the
learned field and x̂₀ — and how far the samples are from the data, beside noise and held-out data.

:class:`LabHandlers` holds one method per event (plain functions or generators of widget values and the user's
:class:`~ddpm_app.views.state.UserState`, so tests call them directly); :func:`lab_tab` lays the tab out and wires it inside
:func:`ddpm_app.ui.page.build`. The math is the library's (:mod:`ddpm_app.lab`, :mod:`ddpm_app.diffusion.samplers`); the pictures
and the per-user lab are in :mod:`ddpm_app.views.lab`.

Training runs on the app's device worker a fraction of a second at a time, so other users' work takes turns with
it instead of waiting for the whole run; one request trains at most :data:`MAX_STEPS` steps and
:data:`MAX_TRAIN_SECONDS` seconds (Continue goes on from there).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import gradio as gr
import torch

from ddpm_app.checks import InvalidValue, choice, whole_number
from ddpm_app.checks import text as text_value
from ddpm_app.diffusion.samplers import VARIANCES, SamplerSettings
from ddpm_app.diffusion.schedule import paper_t, table_index
from ddpm_app.lab import DATASETS, PointSet, dataset, from_csv, from_drawing
from ddpm_app.lab.points import MAX_CSV_BYTES, MAX_POINTS, MAX_WORD
from ddpm_app.serve.worker import DeviceWorker
from ddpm_app.text import ENGLISH, text, translated
from ddpm_app.ui import widgets
from ddpm_app.ui.i18n import choices as i18n_choices
from ddpm_app.ui.i18n import i18n, written
from ddpm_app.ui.kit import LATEX, help_markdown, output_image
from ddpm_app.ui.widgets import CSVInput, SketchInput, user_error, user_errors
from ddpm_app.views.export import ExportFolder, save_gif, save_mp4
from ddpm_app.views.lab import (
    MAX_SAMPLES,
    MAX_STEPS,
    MAX_TIMESTEPS,
    MAX_TRAIN_SECONDS,
    LabSettings,
    LabState,
    check_points,
    check_samples,
    data_picture,
    field_picture,
    forward_pictures,
    loss_picture,
    paths_picture,
    preview_picture,
    quality,
    training_frames,
    trajectory_frames,
    x0_picture,
)
from ddpm_app.views.state import UserState

SOURCES = [("lab.source_preset", "preset"), ("lab.source_drawing", "drawing"), ("lab.source_csv", "csv"),
           ("lab.source_text", "text")]  # catalogue keys
CHUNK_SECONDS = 0.3  # training runs on the device worker this long at a time, then other users' work gets a turn
PREVIEW_SECONDS = 1.5  # at most one preview (samples + pictures) per this much training
DEFAULTS = LabSettings()
PICTURE_MIN_WIDTH = 300  # pixels: narrower than two of these (a phone), the pictures stack one per line

HELP = text("lab.help")

# label: (what to change, the catalogue key of its label and of what to look for, which is the key + "_note")
EXPERIMENTS = {text(key): (change, key) for change, key in (
    (dict(timesteps=50), "lab.exp.small_t"), (dict(beta_end=0.002), "lab.exp.small_beta"),
    (dict(variance="beta"), "lab.exp.beta_variance"), (dict(clip=False), "lab.exp.no_clip"),
    (dict(width=8, depth=1), "lab.exp.tiny_net"))}


TRAINING_KEYS = ("timesteps", "beta_end", "width", "depth")  # an experiment changing one of these trains again
SAMPLING_BASELINE = dict(variance="posterior", clip=True)


def retrains(change: dict) -> bool:
    return any(k in TRAINING_KEYS for k in change)


def experiment_values(change: dict) -> dict:
    """The settings an experiment sets: one that trains again sets the defaults plus its change (so experiments do
    not pile up); one that only samples sets the sampler's defaults plus its change and leaves the model's settings
    as they are, matching the model it samples from."""
    s = DEFAULTS
    sampling = SAMPLING_BASELINE | {k: v for k, v in change.items() if k not in TRAINING_KEYS}
    if not retrains(change):
        return sampling
    return dict(timesteps=s.schedule.timesteps, beta_end=s.schedule.beta_end, width=s.network.width,
                depth=s.network.depth) | {k: v for k, v in change.items() if k in TRAINING_KEYS} | sampling


def slider_row(t: float, name: str, T: int) -> int:
    """The tables' row of a t slider's value, the paper's t (1…T; the field's slider goes to 1000, and a t above
    this model's T means T)."""
    return table_index(min(whole_number(t, name, 1, MAX_STEPS), T))


class LabHandlers:
    """The lab's events, over the app's device worker (all tensor work runs there, a stretch at a time)."""

    def __init__(self, worker: DeviceWorker, export_dir: str | Path | None = None):
        self.worker = worker
        self.exports = ExportFolder(export_dir) if export_dir else ExportFolder.temporary("ddpm_lab_")

    # -- data -------------------------------------------------------------------------------------------------

    def points(self, source: str, preset: str, word: str, drawing: dict | None, csv_file: str | None, text: str,
               count: float, seed: float) -> PointSet:
        """The data set the controls describe (the same for the tab and the API)."""
        source = choice(source, "data source", [v for _, v in SOURCES])
        word = text_value(word, "word", MAX_WORD)
        text = text_value(text, "pasted points", MAX_CSV_BYTES)
        count = check_points(count)
        g = torch.Generator().manual_seed(whole_number(seed, "data seed", 0, 2**31 - 1))
        if source == "preset":
            return dataset(choice(preset, "data set", DATASETS), count, g, word)
        if source == "drawing":
            return from_drawing(None if drawing is None else drawing.get("composite"), count, g)
        if source == "csv":
            if not csv_file:
                raise InvalidValue("error.csv_upload_first")
            raw = Path(csv_file).read_bytes()[:MAX_CSV_BYTES + 1]
            try:
                return from_csv(raw.decode("utf-8-sig"), g, "your CSV")
            except UnicodeDecodeError:
                raise InvalidValue("error.csv_not_utf8") from None
        return from_csv(text, g, "your points")

    def show_data(self, *data_inputs, user: UserState):
        """Load the data the controls describe: (data picture, note)."""
        language = user.language
        with user_errors(language):
            data = self.worker.run(self.points, *data_inputs)  # the points are tensors, made on the worker
        user.lab.data = data
        note = text("lab.data_note", language, name=translated(data.name, language), count=len(data.train))
        return self.worker.run(data_picture, data, language), note

    # -- forward ----------------------------------------------------------------------------------------------

    def forward(self, t: float, index: float, kind: str, timesteps: float, beta_start: float, beta_end: float,
                user: UserState) -> tuple:
        """q(x_t|x₀) at t around point ``index``, and x_T beside N(0, I): (picture, picture, t-slider update)."""
        lab, language = user.lab, user.language
        with user_errors(language):
            settings = LabSettings.checked(kind, timesteps, beta_start, beta_end, DEFAULTS.network.width,
                                           DEFAULTS.network.depth, 1, DEFAULTS.training.learning_rate, 0)
            if lab.data is None:
                raise InvalidValue("lab.choose_data")
            T = settings.schedule.timesteps
            t = slider_row(t, "t", T)
            i = min(whole_number(index, "point", 1, MAX_POINTS), len(lab.data.train)) - 1
        pictures = self.worker.run(forward_pictures, settings.schedule, lab.data, t, i, language)
        return (*pictures, gr.update(maximum=T, value=paper_t(t)))

    # -- training ---------------------------------------------------------------------------------------------

    def train(self, source, preset, word, drawing, csv_file, text, count, data_seed, kind, timesteps, beta_start,
              beta_end, width, depth, steps, learning_rate, seed, user: UserState) -> Iterator[tuple]:
        """A fresh model on the data, trained ``steps`` steps (Algorithm 1) while the loss and samples stream:
        yields (status, data picture, loss picture, samples picture, quality, losses as JSON)."""
        language = user.language
        with user_errors(language):
            settings = LabSettings.checked(kind, timesteps, beta_start, beta_end, width, depth, steps,
                                           learning_rate, seed)
            data = self.worker.run(self.points, source, preset, word, drawing, csv_file, text, count, data_seed)
        lab = user.lab
        with self._holding(lab, language):
            self.worker.run(lab.start, data, settings)
            yield from self._train(lab, settings.steps, self.worker.run(data_picture, data, language), language)

    def go_on(self, steps: float, user: UserState) -> Iterator[tuple]:
        """``steps`` more steps of the current model (after Stop, or to train longer): the outputs of :meth:`train`."""
        lab, language = user.lab, user.language
        with user_errors(language):
            steps = whole_number(steps, "steps", 1, MAX_STEPS)
            lab.model  # noqa: B018  (raises "press Train first")
        with self._holding(lab, language):
            yield from self._train(lab, steps, gr.skip(), language)

    @staticmethod
    @contextmanager
    def _holding(lab: LabState, language: str = ENGLISH) -> Iterator[LabState]:
        """One training run per user at a time: a second one is refused with a message."""
        if lab.busy:
            raise user_error(text("lab.busy", language))
        lab.busy = True
        try:
            yield lab
        finally:
            lab.busy = False

    def _train(self, lab: LabState, steps: int, first, language: str = ENGLISH) -> Iterator[tuple]:
        for status, loss_pic, samples_pic, last in self.worker.stream(self._chunks(lab, steps, language)):
            result = self._result(lab, language) if last else gr.skip()
            yield status, first, loss_pic, samples_pic, result[0] if last else gr.skip(), \
                result[1] if last else gr.skip()
            first = gr.skip()
        lab.history.append(text("lab.history", language, settings=lab.settings.describe(), steps=lab.trainer.step,
                                seconds=f"{lab.seconds:.1f}", distance=f"{lab.previews[-1].distance:.4f}"))

    @classmethod
    def _chunks(cls, lab: LabState, steps: int, language: str = ENGLISH) -> Iterator[tuple]:
        """``steps`` training steps, :data:`CHUNK_SECONDS` of them at a time (on the worker): after each stretch
        (status, loss picture, samples picture, whether it was the last), with pictures at most every
        :data:`PREVIEW_SECONDS`."""
        records = lab.trainer.run(steps)
        started = time.perf_counter()
        target = lab.trainer.step + steps
        last_preview, done = -PREVIEW_SECONDS, False
        try:
            while not done:
                begin = time.perf_counter()
                for record in records:
                    lab.losses.append(record.loss)
                    if time.perf_counter() - begin > CHUNK_SECONDS:
                        break
                else:
                    done = True
                lab.seconds += time.perf_counter() - begin
                out_of_time = time.perf_counter() - started > MAX_TRAIN_SECONDS
                done = done or out_of_time
                if done or time.perf_counter() - last_preview > PREVIEW_SECONDS:
                    preview = lab.preview()
                    last_preview = time.perf_counter()
                    pictures = (loss_picture(lab.losses, lab.previews, language),
                                preview_picture(lab.data, preview, language=language))
                else:
                    pictures = (gr.skip(), gr.skip())
                yield cls._status(lab, target, out_of_time, language), *pictures, done
        finally:
            records.close()

    @staticmethod
    def _status(lab: LabState, target: int, out_of_time: bool, language: str = ENGLISH) -> str:
        step = lab.trainer.step
        recent = lab.losses[-100:]
        note = text("lab.limit", language, seconds=f"{MAX_TRAIN_SECONDS:.0f}") if out_of_time else ""
        line = text("lab.status", language, step=step, target=target, loss=f"{sum(recent) / max(len(recent), 1):.4f}",
                    recent=len(recent), seconds=f"{lab.seconds:.1f}", note=note)
        return f"<div class='ddpm-stats'><progress value='{step}' max='{target}'></progress><div>{line}</div></div>"

    def _result(self, lab: LabState, language: str = ENGLISH) -> tuple[str, dict]:
        """(quality of the last preview, the losses as JSON)."""
        q = self.worker.run(quality, lab.previews[-1].samples, lab.data)
        history = "\n".join(f"- {line}" for line in lab.history[-4:])
        words = q.markdown(language) + (text("lab.earlier", language, history=history) if history else "")
        return words, dict(steps=lab.trainer.step, seconds=round(lab.seconds, 3), losses=lab.losses,
                          energy_distance=q.model, noise_energy_distance=q.noise, heldout_energy_distance=q.heldout,
                          settings=lab.settings.describe())

    # -- sampling ---------------------------------------------------------------------------------------------

    def sample(self, sampler: str, ddim_steps: float, variance: str, clip_x0: bool, count: float, seed: float,
               field_t: float, arrows: str, user: UserState) -> tuple:
        """Run the reverse chain for ``count`` points: (paths, field at t, x̂₀ at t, quality, JSON data + samples)."""
        lab, language = user.lab, user.language
        with user_errors(language):
            lab.model  # noqa: B018
            T = lab.schedule.timesteps
            ddim_steps = min(whole_number(ddim_steps, "DDIM steps", 1, MAX_TIMESTEPS), T)  # the slider's 1…1000
            settings = SamplerSettings.checked(sampler, ddim_steps, 0.0, clip_x0, T)
            variance = choice(variance, "reverse variance σ²", VARIANCES)
            count = check_samples(count)
            seed = whole_number(seed, "seed", 0, 2**31 - 1)
            arrows = choice(arrows, "arrows", ("score", "eps"))
            field_t = slider_row(field_t, "t of the field", T)

        def run():
            result = lab.sample(settings, variance, count, seed, language)
            q = quality(result.final, lab.data, seed)
            return (paths_picture(lab.data, result, language=language),
                    field_picture(lab.model, lab.schedule, result, field_t, arrows, language),
                    x0_picture(lab.data, result, field_t, language), q)
        paths, field, x0, q = self.worker.run(run)
        return (paths, field, x0, q.markdown(language), dict(data=lab.data.train.tolist(),
                                                             samples=lab.run.final.tolist(), energy_distance=q.model,
                                                             noise_energy_distance=q.noise,
                                                             heldout_energy_distance=q.heldout, sampler=lab.run.title),
                gr.update(maximum=T))

    def field(self, field_t: float, arrows: str, user: UserState) -> tuple:
        """The field and x̂₀ pictures at another t of the last run: (field, x̂₀)."""
        lab, language = user.lab, user.language
        if lab.run is None:
            return gr.skip(), gr.skip()
        with user_errors(language):
            field_t = slider_row(field_t, "t of the field", lab.schedule.timesteps)
            arrows = choice(arrows, "arrows", ("score", "eps"))
        def draw():
            return (field_picture(lab.model, lab.schedule, lab.run, field_t, arrows, language),
                    x0_picture(lab.data, lab.run, field_t, language))
        return self.worker.run(draw)

    # -- exports ----------------------------------------------------------------------------------------------

    def export(self, what: str, kind: str, user: UserState) -> str:
        """The training animation (``what="training"``) or the trajectories (``"paths"``) as GIF or MP4."""
        with user_errors(user.language):
            frames = self.worker.run(training_frames if what == "training" else trajectory_frames, user.lab,
                                     language=user.language)
            write = save_gif if kind == "gif" else save_mp4
            stem = "lab-training" if what == "training" else "lab-trajectories"
            return str(self.exports.write(f"{stem}.{kind}", lambda path: write(frames, path)))


def _plot(label: str, elem_id: str) -> gr.Image:
    """A figure of the lab (540 px square or so), at least :data:`PICTURE_MIN_WIDTH` wide."""
    return output_image(label, height=None, pixelated=False, min_width=PICTURE_MIN_WIDTH, elem_id=elem_id)


def lab_tab(lh: LabHandlers, user: gr.State) -> None:
    """The 2-D lab tab with its events (API names ``toy_train``, ``toy_continue``, ``toy_sample``); call inside
    ``gr.Tabs()``."""
    s = DEFAULTS
    with gr.Tab(i18n("tab.lab"), id="lab", elem_id="lab-tab"):
        help_markdown("lab.help")
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                source = widgets.Radio(i18n_choices(SOURCES), value="preset", label=i18n("lab.source"))
                preset = widgets.Dropdown(i18n_choices([(f"lab.set.{name}", name) for name in DATASETS]),
                                          value="two moons", label=i18n("lab.data_set"))
                word = widgets.Textbox("DDPM", label=i18n("lab.word"), max_length=12)
                with gr.Accordion(i18n("lab.draw_accordion"), open=False):
                    drawing = SketchInput(label=i18n("lab.draw"), height=300,
                                          type="numpy", sources=(), elem_id="lab-sketch", image_mode="RGBA",
                                          brush=gr.Brush(colors=["#000000"], color_mode="fixed"))
                    csv_file = CSVInput(label=i18n("lab.csv", max=MAX_POINTS), file_types=[".csv", ".txt"],
                                       type="filepath")
                    pasted = widgets.Textbox(label=i18n("lab.paste"), lines=3)
                with gr.Row():
                    count = widgets.Slider(50, MAX_POINTS, value=1000, step=50, label=i18n("lab.points"),
                                           min_width=140)
                    data_seed = widgets.Number(0, label=i18n("lab.data_seed"), precision=0, min_width=100)
                use_btn = gr.Button(i18n("lab.use"), size="sm")
                data_note = gr.Markdown("", elem_id="lab-data-note")
            with gr.Column(scale=1, min_width=280):
                data_plot = _plot("lab.data", elem_id="lab-data")

        gr.Markdown(i18n("lab.forward_heading"), latex_delimiters=LATEX)
        with gr.Row():
            fwd_t = widgets.Slider(1, s.schedule.timesteps, value=100, step=1, label="t", elem_id="lab-t",
                                   min_width=200)
            fwd_point = widgets.Slider(1, 1000, value=1, step=1, label=i18n("lab.red_point"), min_width=200)
        with gr.Row():
            fwd_plot = _plot("lab.forward_plot", elem_id="lab-forward")
            marg_plot = _plot("lab.marginal_plot", elem_id="lab-marginal")

        gr.Markdown(i18n("lab.train_heading"))
        with gr.Row():
            kind = widgets.Radio(["linear", "cosine"], value=s.schedule.kind, label=i18n("lab.schedule"),
                                 min_width=140)
            timesteps = widgets.Slider(2, 1000, value=s.schedule.timesteps, step=1, label="T", min_width=160)
            beta_start = widgets.Number(s.schedule.beta_start, label=i18n("lab.beta_start"), min_width=100)
            beta_end = widgets.Number(s.schedule.beta_end, label=i18n("lab.beta_end"), min_width=100)
        with gr.Row():
            width = widgets.Slider(2, 512, value=s.network.width, step=1, label=i18n("lab.width"), min_width=140)
            depth = widgets.Slider(1, 6, value=s.network.depth, step=1, label=i18n("lab.depth"), min_width=140)
            steps = widgets.Slider(100, MAX_STEPS, value=s.steps, step=100, label=i18n("lab.steps"), min_width=160,
                                   elem_id="lab-steps")
            lr = widgets.Number(s.training.learning_rate, label=i18n("lab.learning_rate"), min_width=100)
            seed = widgets.Number(0, label=i18n("lab.seed"), precision=0, min_width=80)
        with gr.Row():
            train_btn = gr.Button(i18n("lab.train"), variant="primary", min_width=90)
            more_btn = gr.Button(i18n("lab.continue"), min_width=90)
            stop_btn = gr.Button(i18n("button.stop"), variant="stop", min_width=80)
        status = gr.HTML(i18n("lab.press_train"), elem_id="lab-status", min_height=50)
        with gr.Row():
            loss_plot = _plot("lab.loss", elem_id="lab-loss")
            preview_plot = _plot("lab.preview", elem_id="lab-preview")
        quality_md = gr.Markdown("", elem_id="lab-quality")
        with gr.Accordion(i18n("lab.losses_accordion"), open=False):
            losses_json = gr.JSON(label=i18n("lab.losses"))

        gr.Markdown(i18n("lab.experiments_heading"))
        with gr.Row():
            exp_btns = [gr.Button(i18n(key), size="sm", min_width=120) for _, key in EXPERIMENTS.values()]
        exp_note = gr.Markdown("", elem_id="lab-experiment")

        gr.Markdown(i18n("lab.sample_heading"))
        with gr.Row():
            sampler = widgets.Radio([("DDPM", "ddpm"), ("DDIM", "ddim")], value="ddpm", label=i18n("sampler.label"),
                                    min_width=120)
            ddim_steps = widgets.Slider(1, 1000, value=50, step=1, label=i18n("lab.ddim_steps"), min_width=140)
            variance = widgets.Radio([(i18n("lab.variance_posterior"), "posterior"), ("β", "beta")], value="posterior",
                                     label=i18n("lab.variance"), min_width=140)
            clip = gr.Checkbox(True, label=i18n("generate.clip"), min_width=100)
        with gr.Row():
            n_samples = widgets.Slider(10, MAX_SAMPLES, value=500, step=10, label=i18n("lab.points"), min_width=140)
            sample_seed = widgets.Number(0, label=i18n("lab.seed"), precision=0, min_width=80)
            field_t = widgets.Slider(1, 1000, value=300, step=1, label=i18n("lab.field_t"), min_width=160,
                                     elem_id="lab-field-t")
            arrows = widgets.Radio([(i18n("lab.arrows_score"), "score"), ("−ε̂", "eps")], value="score",
                                   label=i18n("lab.arrows"), min_width=120)
        sample_btn = gr.Button(i18n("lab.sample"), variant="primary")
        with gr.Row():
            paths_plot = _plot("lab.paths", elem_id="lab-paths")
            field_plot = _plot("lab.field", elem_id="lab-field")
            x0_plot = _plot("lab.x0_along", elem_id="lab-x0")
        sample_quality = gr.Markdown("", elem_id="lab-sample-quality")
        with gr.Accordion(i18n("lab.samples_accordion"), open=False):
            samples_json = gr.JSON(label=i18n("lab.samples"), elem_id="lab-samples-json")
        with gr.Row():
            export_btns = [(gr.Button(i18n(f"lab.export_{what}", kind=kind.upper()), size="sm", min_width=120), what,
                            kind) for what in ("training", "paths") for kind in ("gif", "mp4")]
        lab_file = gr.File(label=i18n("lab.download"), interactive=False, elem_classes="ddpm-download")

    # events ----------------------------------------------------------------------------------------------------
    data_inputs = [source, preset, word, drawing, csv_file, pasted, count, data_seed]
    schedule_inputs = [kind, timesteps, beta_start, beta_end]
    train_inputs = data_inputs + schedule_inputs + [width, depth, steps, lr, seed, user]
    train_outputs = [status, data_plot, loss_plot, preview_plot, quality_md, losses_json]
    sample_inputs = [sampler, ddim_steps, variance, clip, n_samples, sample_seed, field_t, arrows, user]
    sample_outputs = [paths_plot, field_plot, x0_plot, sample_quality, samples_json, field_t]
    forward = dict(fn=lh.forward, inputs=[fwd_t, fwd_point, *schedule_inputs, user],
                   outputs=[fwd_plot, marg_plot, fwd_t], show_progress="hidden", trigger_mode="always_last",
                   concurrency_limit=4)
    lab = dict(concurrency_limit=2, concurrency_id="lab")

    def show(*values):
        return lh.show_data(*values[:-1], user=values[-1])
    for trigger in (use_btn.click, preset.input, source.input):
        trigger(show, data_inputs + [user], [data_plot, data_note], api_visibility="private",
                show_progress="minimal").success(**forward, api_visibility="private")
    fwd_t.input(**forward, api_name="toy_forward")
    for control in (fwd_point, kind, timesteps):
        control.input(**forward, api_visibility="private")
    train_event = train_btn.click(lh.train, train_inputs, train_outputs, api_name="toy_train", **lab)
    more_event = more_btn.click(lh.go_on, [steps, user], train_outputs, api_name="toy_continue", **lab)
    stop_btn.click(None, None, None, cancels=[train_event, more_event], api_visibility="private",
                   queue=False)
    sample_btn.click(lh.sample, sample_inputs, sample_outputs, api_name="toy_sample", **lab)
    field_t.input(lh.field, [field_t, arrows, user], [field_plot, x0_plot], api_visibility="private",
                  show_progress="hidden", trigger_mode="always_last", concurrency_limit=4)
    arrows.input(lh.field, [field_t, arrows, user], [field_plot, x0_plot], api_visibility="private",
                 show_progress="hidden")

    widget_of = dict(timesteps=timesteps, beta_end=beta_end, width=width, depth=depth, variance=variance, clip=clip)
    for btn, (change, key) in zip(exp_btns, EXPERIMENTS.values()):
        values = experiment_values(change)
        note = written(lambda language, key=key: text("lab.exp.note", language, label=text(key, language),
                                                      note=text(f"{key}_note", language)))

        def apply(values=values, note=note):
            return [values.get(k, gr.skip()) for k in widget_of] + [note]
        event = btn.click(apply, None, list(widget_of.values()) + [exp_note], api_visibility="private", queue=False)
        if retrains(change):
            event = event.success(lh.train, train_inputs, train_outputs, api_visibility="private", **lab)
        event.success(lh.sample, sample_inputs, sample_outputs, api_visibility="private", **lab).success(
            **forward, api_visibility="private")

    for btn, what, kind_ in export_btns:
        btn.click(lambda u, what=what, kind_=kind_: lh.export(what, kind_, u), user, lab_file,
                  api_name=f"toy_export_{what}_{kind_}", show_progress="minimal")
