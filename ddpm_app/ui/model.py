"""The Model tab: pick a model folder from the weights folders, load a nested one or download one from the Hub,
and see its summary and model card. A switch is one user's: every tab's ranges and defaults follow their model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from gradio import processing_utils

from ddpm_app.checks import choice
from ddpm_app.image import MAX_FILE_BYTES
from ddpm_app.io.model_folder import SamplingDefaults
from ddpm_app.numbers import number
from ddpm_app.runtime.inference import Runtime
from ddpm_app.serve.served import ServedModel
from ddpm_app.text import ENGLISH, count, text, translated
from ddpm_app.ui import widgets
from ddpm_app.ui.i18n import i18n
from ddpm_app.ui.kit import DEFAULT_SETTINGS, FIRST_BATCH, TabHandlers, help_markdown, starting_t
from ddpm_app.ui.widgets import user_error, user_errors
from ddpm_app.views.state import UserState

MODEL_HELP = text("model.help")


class ModelHandlers(TabHandlers):
    def select_model(self, name: str, user: UserState) -> tuple:
        """Switch this user's model: (summary, card, samples, header, t-slider, DDIM-steps updates of Generate and
        Denoise, Generate's image count, clip-x̂₀ updates of Generate and Denoise, DDIM-η updates of Generate and
        Denoise, dropdown update)."""
        with user_errors(user.language):
            served = self.library.get(choice(name, "model", self.library.names))
        return self._switch(user, served, text("model.loaded", user.language, name=served.name))

    def switching(self, name: str, user: UserState) -> tuple[str, str]:
        """What the page says at once while this user's model switches to ``name``: (header, note). Loading a
        model that is not in memory takes seconds (its weights read, its network prepared and timed for this
        machine); the current model stays until the new one is ready (:meth:`model_now` then says which it is)."""
        if not isinstance(name, str) or name not in self.library.names:
            return gr.skip(), gr.skip()  # the switch itself says why
        now, language = user.model or self.library.default, user.language
        how = "switching" if self.library.in_memory(name) else "loading"
        return (text(f"model.{how}_header", language, now=now, name=name),
                text(f"model.{how}_note", language, name=name))

    def model_now(self, user: UserState) -> tuple[str, str]:
        """After a switch, whether it worked or not: (header of this user's model, note cleared)."""
        return model_header(self.served(user), user.language), ""

    def download_model(self, repo_id: str, user: UserState) -> tuple:
        """Download a model from the Hub and switch to it; on failure the current model stays."""
        with user_errors(user.language, then="model.stays"):
            name = self.library.add_from_hub(repo_id)
        return self._switch(user, self.library.get(name), text("model.downloaded", user.language, name=name))

    def load_folder(self, path: str, user: UserState) -> tuple:
        """Load a model folder inside a weights folder and switch to it; on failure the current model stays."""
        with user_errors(user.language, then="model.stays"):
            name = self.library.add_folder(path)
            served = self.library.get(name)
        return self._switch(user, served, text("model.loaded_from", user.language, name=name, folder=served.folder))

    def rescan(self, user: UserState) -> tuple[dict, str]:
        """Look at the weights folders again: (model dropdown update, what changed)."""
        new, gone = self.library.rescan()
        names, language = self.library.names, user.language
        changes = ([text("model.rescan_new", language, names=", ".join(new))] * bool(new)
                   + [text("model.rescan_gone", language, names=", ".join(gone))] * bool(gone))
        refused = self.library.refused
        note = (text("model.rescan_note", language, models=count("model", len(names), language),
                     roots=", ".join(f"`{r}/`" for r in self.library.roots),
                     changes=" (" + "; ".join(changes) + ")" if changes else text("model.rescan_no_change", language))
                + (text("model.rescan_refused", language, names=", ".join(refused)) if refused else ""))
        if user.model not in names:  # this user's model folder is gone: back to the default
            user.model = None
        return gr.update(choices=names, value=user.model or self.library.default), note

    def ranges(self, user: UserState) -> tuple:
        """The teaching tabs' slider updates for this user's model: (training t, compare t, both the paper's t = 1…T;
        interpolation DDIM steps, its η: the model's own DDIM η)."""
        served = self.served(user)
        T = served.timesteps
        return (gr.update(maximum=T, value=starting_t(T)), gr.update(maximum=T, value=T),
                gr.update(maximum=T, value=min(25, T)), gr.update(value=served.config.sampling.ddim_eta))

    def _switch(self, user: UserState, served: ServedModel, status: str) -> tuple:
        """Every output of a model switch, built first: only then is ``user`` on ``served``, so an output that
        cannot be made leaves the user on their model, with a message."""
        try:
            outputs = self.worker.run(self._model_outputs, served, status, user.language)
        except OSError as e:
            raise user_error(text("model.card_unreadable", user.language, name=served.name, error=e)) from None
        user.model = served.name
        return outputs

    def _model_outputs(self, served: ServedModel, status: str, language: str = ENGLISH) -> tuple:
        """(On the worker: the model card's table and the first run's settings measure the model.)"""
        T = served.timesteps
        defaults = served.config.sampling
        if defaults != SamplingDefaults():
            differs = ([text("model.differs_eta", language, eta=number(defaults.ddim_eta))] * (defaults.ddim_eta != 0)
                       + [text("model.differs_clip", language)] * (not defaults.clip_x0)
                       + [text("model.differs_variance", language)] * (defaults.variance == "beta"))
            status += text("model.differs", language,
                           what=", ".join(differs) or text("model.differs_sampling", language), why=defaults.why)
        first = served.first_run(FIRST_BATCH, DEFAULT_SETTINGS.steps)  # the model card's table says why, if it differs
        table, card, samples = model_card(served, language)
        # one update per output: Gradio takes the value out of an update dict as it sends it
        ddim_steps = [gr.update(maximum=T, value=first.ddim_steps) for _ in range(2)]
        ddim_eta = [gr.update(value=defaults.ddim_eta) for _ in range(2)]
        clip = [gr.update(value=defaults.clip_x0) for _ in range(2)]
        return (status + "\n\n" + table, card, samples, model_header(served, language),
                gr.update(maximum=T, value=starting_t(T)), *ddim_steps, gr.update(value=first.batch), *clip, *ddim_eta,
                gr.update(choices=self.library.names, value=served.name))


def model_header(served: ServedModel, language: str = ENGLISH) -> str:
    c = served.config
    return text("model.header", language, name=served.name, size=c.image_size,
                channels=count("channel", c.channels, language), kind=c.schedule.kind, T=c.schedule.timesteps,
                device=served.device.type)


def model_card(served: ServedModel, language: str = ENGLISH) -> tuple[str, str, str | None]:
    """(summary: a table in plain words, then how the network runs here in detail, folded; model card text) in
    Markdown, and the path of the card's sample grid if there is one. The card is the model's own README, shown as
    its author wrote it; the table's words are the app's."""
    s = served.summary()
    speed = (text("card.speed_unmeasured", language) if s.ms_per_step is None
             else text("card.speed_value", language, ms=f"{s.ms_per_step:.1f}"))
    rows = [("dataset", s.dataset or text("card.not_recorded", language)), ("architecture", s.arch),
            ("parameters", f"{s.parameters / 1e6:.1f} M"),
            ("image size", text("card.image_size_value", language, size=s.image_size, channels=s.channels)),
            ("schedule", f"{s.schedule.kind}, T = {s.schedule.timesteps}"), ("speed", speed),
            ("runs_on", runs_on(served, language))]
    first = served.first_run(FIRST_BATCH, DEFAULT_SETTINGS.steps)
    rows += [("first_settings", translated(first.note, language))] if first.note else []
    rows = [(text(f"card.{k.replace(' ', '_')}", language), v) for k, v in rows] + training_rows(s.training, language)
    head = f"| {text('card.property', language)} | {text('card.value', language)} |"
    table = head + "\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    card = s.card[:3000] + ("…" if len(s.card) > 3000 else "")
    return (table + "\n\n" + how_it_runs(served, s.source, language), card or text("model.no_card", language),
            served_picture(s.samples))


def fast_path(runtime: Runtime) -> bool:
    """Whether the network runs faster than plain PyTorch in float32: another engine (OpenVINO), lower precision
    (bf16, fp16) or a compiled step."""
    return runtime.engine.startswith("OpenVINO") or runtime.precision != "fp32" or runtime.compiled


def runs_on(served: ServedModel, language: str = ENGLISH) -> str:
    """Where the network runs, in plain words: "this computer's processor (CPU), fast path on"."""
    kind = served.device.type
    where = text(f"card.place_{kind}", language) if kind in ("cpu", "cuda") else kind
    return text("card.runs_on_value", language, where=where,
                state=text("card.on" if fast_path(served.runtime) else "card.off", language))


def how_it_runs(served: ServedModel, source: str, language: str = ENGLISH) -> str:
    """The details behind :func:`runs_on` and where the model was read from, folded until asked for."""
    r = served.runtime
    state = text("card.on" if fast_path(r) else "card.off", language)
    lines = [f"- **{text('card.device', language)}**: {translated(r.device, language)}",
             f"- **{text('card.engine', language)}**: {translated(r.engine, language) if r.engine else 'PyTorch'}",
             f"- **{text('card.arithmetic', language)}**: {r.precision}"
             + (text("card.compiled", language) if r.compiled else ""),
             f"- **{text('card.why', language)}**: {translated(r.reason, language)}",
             f"- **{text('card.fast_path', language)}**: {state} {text('card.fast_path_means', language)}",
             f"- **{text('card.read_from', language)}**: `{source}`"]
    return (f"<details><summary>{text('card.how_it_runs', language)}</summary>\n\n" + "\n".join(lines)
            + "\n\n</details>")


def training_rows(training: dict, language: str = ENGLISH) -> list[tuple[str, str]]:
    """The model's training record as table rows: one total of training steps (a run continued from an earlier
    one records its own steps and those before it), the time in minutes, numbers with thousands separators."""
    steps, before = training.get("steps"), training.get("steps_before_this_run")
    rows = []
    if isinstance(steps, int) and not isinstance(steps, bool):
        rows.append((text("card.training_steps", language),
                     text("card.training_steps_continued", language, total=f"{steps + before:,}",
                          before=f"{before:,}", steps=f"{steps:,}")
                     if isinstance(before, int) and before > 0 else f"{steps:,}"))
    for key, value in training.items():
        if key in ("dataset", "steps", "steps_before_this_run") or not isinstance(value, (str, int, float, bool)):
            continue
        if key == "train_seconds" and isinstance(value, (int, float)):
            rows.append((text("card.training_time", language),
                         text("card.minutes", language, n=f"{value / 60:,.0f}") if value >= 120
                         else text("card.seconds", language, n=f"{value:,.0f}")))
        else:
            rows.append((key.replace("_", " "), plain_number(value)))
    return rows[:12]


def plain_number(value: object) -> str:
    """A number with thousands separators (37,153,536); anything else as it is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:,}"


def served_picture(path: Path | None) -> str | None:
    """A copy of the picture at ``path`` in Gradio's cache, which Gradio serves (it refuses files outside the working
    and temporary folders and its ``allowed_paths``, and a model folder may be anywhere: another ``--weights``
    folder, the Hub's cache); None for no picture or one over the upload limit."""
    if path is None or path.stat().st_size > MAX_FILE_BYTES:
        return None
    return processing_utils.save_file_to_cache(path, processing_utils.get_upload_folder())


@dataclass
class ModelTab:
    """The Model tab's components."""

    pick: gr.Dropdown
    rescan: gr.Button
    folder: gr.Textbox
    load_folder: gr.Button
    repo: gr.Textbox
    download: gr.Button
    note: gr.Markdown
    summary: gr.Markdown
    samples: gr.Image
    card: gr.Markdown


def model_tab(names: list[str], first: str, table: str, card: str, samples: str | None) -> ModelTab:
    """The Model tab's layout, showing the first model's ``table``, ``card`` and ``samples`` (its events:
    :func:`model_events`, once every tab a switch updates exists); call inside ``gr.Tabs()``."""
    with gr.Tab(i18n("tab.model"), id="model"):
        help_markdown("model.help")
        with gr.Row():
            with gr.Column(min_width=240):
                pick = widgets.Dropdown(names, value=first, label=i18n("model.pick"))
                rescan_btn = gr.Button(i18n("model.rescan"), size="sm")
            with gr.Column(min_width=240):
                folder = gr.Textbox(label=i18n("model.folder"), placeholder="runs/my-faces", elem_id="model-folder")
                folder_btn = gr.Button(i18n("model.load_folder"), size="sm")
            with gr.Column(min_width=240):
                repo = gr.Textbox(label=i18n("model.hub_id"), placeholder="user/model-name")
                download_btn = gr.Button(i18n("model.download"), size="sm")
        note = gr.Markdown("", elem_id="model-note")
        with gr.Row():
            with gr.Column(min_width=300):
                summary = gr.Markdown(table, label=i18n("model.summary"), elem_id="model-summary")
            with gr.Column(min_width=300):
                samples_image = gr.Image(samples, label=i18n("model.samples"), interactive=False,
                                         buttons=["fullscreen"], elem_classes="ddpm-picture", elem_id="model-samples")
        with gr.Accordion(i18n("model.card_accordion"), open=False):
            gr.Markdown(i18n("model.card_note"), elem_id="model-card-note")  # the card is not translated
            card_md = gr.Markdown(card, label=i18n("model.card"))
    return ModelTab(pick, rescan_btn, folder, folder_btn, repo, download_btn, note, summary, samples_image, card_md)


def model_events(h: ModelHandlers, tab: ModelTab, user: gr.State, header: gr.Markdown, updated: list,
                 refresh_forward: dict, refresh_frame: dict, teaching: list) -> None:
    """A model switch (pick, download, load) updates ``updated`` (the page ``header``, Forward's t, then Generate's
    and Denoise's sampler controls: see :meth:`ModelHandlers.select_model`), redraws the Forward view
    (``refresh_forward``) and the frame Frames shows (``refresh_frame``: its label says the run is another model's)
    and sets the ranges of the ``teaching`` sliders (:meth:`ModelHandlers.ranges`). A pick says at once what is
    happening, and its timer runs on the summary until the model is ready."""
    outputs = [tab.summary, tab.card, tab.samples, *updated, tab.pick]
    refresh = dict(refresh_forward, api_visibility="private")
    frame = dict(refresh_frame, api_visibility="private")
    ranges = dict(fn=h.ranges, inputs=user, outputs=teaching, api_visibility="private", queue=False)
    now = dict(fn=h.model_now, inputs=user, outputs=[header, tab.note], api_visibility="private", queue=False,
               show_progress="hidden")
    tab.pick.input(h.switching, [tab.pick, user], [header, tab.note], api_visibility="private", queue=False,
                   show_progress="hidden")
    tab.pick.input(h.select_model, [tab.pick, user], outputs, api_name="select_model", show_progress="full",
                   show_progress_on=[tab.summary]).then(**now).then(**refresh).then(**frame).then(**ranges)
    tab.download.click(h.download_model, [tab.repo, user], outputs, api_name="download_model",
                       show_progress="minimal", show_progress_on=tab.download).success(**refresh).then(
        **frame).then(**ranges)
    tab.load_folder.click(h.load_folder, [tab.folder, user], outputs, api_name="load_folder",
                          show_progress="minimal", show_progress_on=tab.load_folder).success(**refresh).then(
        **frame).then(**ranges)
    tab.rescan.click(h.rescan, user, [tab.pick, tab.note], api_name="rescan_models", show_progress="hidden")
