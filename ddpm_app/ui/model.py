"""The Model tab: pick a model folder from the weights folders, load a nested one or download one from the Hub,
and see its summary and model card. A switch is one user's: every tab's ranges and defaults follow their model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from gradio import processing_utils

from ddpm_app.checks import InvalidValue
from ddpm_app.image import MAX_FILE_BYTES
from ddpm_app.io.model_folder import ModelFolderError, SamplingDefaults
from ddpm_app.numbers import number
from ddpm_app.runtime.inference import Runtime
from ddpm_app.serve.inputs import choice
from ddpm_app.serve.served import ServedModel
from ddpm_app.ui import widgets
from ddpm_app.ui.kit import DEFAULT_SETTINGS, FIRST_BATCH, TabHandlers
from ddpm_app.ui.widgets import user_error, user_errors
from ddpm_app.views.state import UserState

MODEL_HELP = """Each model is a folder with `config.json` (architecture, schedule, image size) and
`model.safetensors`. Pick one from the weights folder (**Rescan** after adding one there), load a model folder
nested inside it, or download one in this format from the Hugging Face Hub."""


class ModelHandlers(TabHandlers):
    def select_model(self, name: str, user: UserState) -> tuple:
        """Switch this user's model: (summary, card, samples, header, t-slider, DDIM-steps updates of Generate and
        Denoise, Generate's image count, clip-x̂₀ updates of Generate and Denoise, DDIM-η updates of Generate and
        Denoise, dropdown update)."""
        with user_errors():
            served = self.library.get(choice(name, "model", self.library.names))
        return self._switch(user, served, f"Loaded **{served.name}**.")

    def switching(self, name: str, user: UserState) -> tuple[str, str]:
        """What the page says at once while this user's model switches to ``name``: (header, note). Loading a
        model that is not in memory takes seconds (its weights read, its network prepared and timed for this
        machine); the current model stays until the new one is ready (:meth:`model_now` then says which it is)."""
        if not isinstance(name, str) or name not in self.library.names:
            return gr.skip(), gr.skip()  # the switch itself says why
        now = f"Model: **{user.model or self.library.default}**"
        if self.library.in_memory(name):
            return f"{now} → switching to **{name}**…", f"Switching to **{name}**…"
        return (f"{now} → loading **{name}**…",
                f"Loading **{name}**: reading its weights, preparing its network for this machine and timing a step "
                "(seconds; the current model stays until it is ready)…")

    def model_now(self, user: UserState) -> tuple[str, str]:
        """After a switch, whether it worked or not: (header of this user's model, note cleared)."""
        return model_header(self.served(user)), ""

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

    def ranges(self, user: UserState) -> tuple:
        """The teaching tabs' slider updates for this user's model: (training t, compare t, interpolation DDIM
        steps, its η: the model's own DDIM η)."""
        served = self.served(user)
        T = served.timesteps
        return (gr.update(maximum=T - 1, value=min(T // 4, T - 1)), gr.update(maximum=T - 1, value=T - 1),
                gr.update(maximum=T, value=min(25, T)), gr.update(value=served.config.sampling.ddim_eta))

    def _switch(self, user: UserState, served: ServedModel, status: str) -> tuple:
        """Every output of a model switch, built first: only then is ``user`` on ``served``, so an output that
        cannot be made leaves the user on their model, with a message."""
        try:
            outputs = self.worker.run(self._model_outputs, served, status)
        except OSError as e:
            raise user_error(f"{served.name}: its model card could not be read ({e}) — the current model stays "
                             "loaded.") from None
        user.model = served.name
        return outputs

    def _model_outputs(self, served: ServedModel, status: str) -> tuple:
        """(On the worker: the model card's table and the first run's settings measure the model.)"""
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


def model_header(served: ServedModel) -> str:
    c = served.config
    return (f"Model: **{served.name}** — {c.image_size}×{c.image_size}, {c.channels} channel"
            f"{'s' if c.channels > 1 else ''}, {c.schedule.kind} schedule, T = {c.schedule.timesteps}, "
            f"device {served.device.type}")


def model_card(served: ServedModel) -> tuple[str, str, str | None]:
    """(summary: a table in plain words, then how the network runs here in detail, folded; model card text) in
    Markdown, and the path of the card's sample grid if there is one."""
    s = served.summary()
    rows = [("dataset", s.dataset or "not recorded"), ("architecture", s.arch),
            ("parameters", f"{s.parameters / 1e6:.1f} M"),
            ("image size", f"{s.image_size}×{s.image_size}, {s.channels} channel(s)"),
            ("schedule", f"{s.schedule.kind}, T = {s.schedule.timesteps}"),
            ("speed here", "not measured (compiled on first use)" if s.ms_per_step is None
             else f"{s.ms_per_step:.1f} ms per step at batch 1, measured on this machine when the model was loaded"),
            ("runs on", runs_on(served))]
    first = served.first_run(FIRST_BATCH, DEFAULT_SETTINGS.steps)
    rows += [("first settings", first.note)] if first.note else []
    rows += training_rows(s.training)
    table = "| property | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    card = s.card[:3000] + ("…" if len(s.card) > 3000 else "")
    return table + "\n\n" + how_it_runs(served, s.source), card or "This model has no README.md card.", \
        served_picture(s.samples)


PLACES = {"cpu": "this computer's processor (CPU)", "cuda": "this computer's graphics card (GPU)"}


def fast_path(runtime: Runtime) -> bool:
    """Whether the network runs faster than plain PyTorch in float32: another engine (OpenVINO), lower precision
    (bf16, fp16) or a compiled step."""
    return runtime.engine.startswith("OpenVINO") or runtime.precision != "fp32" or runtime.compiled


def runs_on(served: ServedModel) -> str:
    """Where the network runs, in plain words: "this computer's processor (CPU), fast path on"."""
    where = PLACES.get(served.device.type, served.device.type)
    return f"{where}, fast path {'on' if fast_path(served.runtime) else 'off'}"


def how_it_runs(served: ServedModel, source: str) -> str:
    """The details behind :func:`runs_on` and where the model was read from, folded until asked for."""
    r = served.runtime
    lines = [f"- **device**: {r.device}", f"- **engine**: {r.engine or 'PyTorch'}",
             f"- **arithmetic**: {r.precision}" + (", the step compiled" if r.compiled else ""),
             f"- **why**: {r.reason}",
             f"- **fast path**: {'on' if fast_path(r) else 'off'} (on: another engine than plain PyTorch, "
             "precision lower than float32, or a compiled step)",
             f"- **read from**: `{source}`"]
    return "<details><summary>How it runs here, in detail</summary>\n\n" + "\n".join(lines) + "\n\n</details>"


def training_rows(training: dict) -> list[tuple[str, str]]:
    """The model's training record as table rows: one total of training steps (a run continued from an earlier
    one records its own steps and those before it), the time in minutes, numbers with thousands separators."""
    steps, before = training.get("steps"), training.get("steps_before_this_run")
    rows = []
    if isinstance(steps, int) and not isinstance(steps, bool):
        rows.append(("training steps", f"{steps + before:,} in all ({before:,} in earlier runs, then {steps:,})"
                     if isinstance(before, int) and before > 0 else f"{steps:,}"))
    for key, value in training.items():
        if key in ("dataset", "steps", "steps_before_this_run") or not isinstance(value, (str, int, float, bool)):
            continue
        if key == "train_seconds" and isinstance(value, (int, float)):
            rows.append(("training time", f"{value / 60:,.0f} min" if value >= 120 else f"{value:,.0f} s"))
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
    with gr.Tab("Model", id="model"):
        gr.Markdown(MODEL_HELP)
        with gr.Row():
            with gr.Column(min_width=240):
                pick = widgets.Dropdown(names, value=first, label="Models in the weights folder")
                rescan_btn = gr.Button("Rescan the weights folder", size="sm")
            with gr.Column(min_width=240):
                folder = gr.Textbox(label="Model folder inside the weights folder", placeholder="runs/my-faces",
                                    elem_id="model-folder")
                folder_btn = gr.Button("Load folder", size="sm")
            with gr.Column(min_width=240):
                repo = gr.Textbox(label="Hub model id", placeholder="user/model-name")
                download_btn = gr.Button("Download from the Hub", size="sm")
        note = gr.Markdown("", elem_id="model-note")
        with gr.Row():
            with gr.Column(min_width=300):
                summary = gr.Markdown(table, label="model summary", elem_id="model-summary")
            with gr.Column(min_width=300):
                samples_image = gr.Image(samples, label="samples from the model card", interactive=False,
                                         buttons=["fullscreen"], elem_classes="ddpm-picture", elem_id="model-samples")
        with gr.Accordion("Model card (README.md)", open=False):
            card_md = gr.Markdown(card, label="model card")
    return ModelTab(pick, rescan_btn, folder, folder_btn, repo, download_btn, note, summary, samples_image, card_md)


def model_events(h: ModelHandlers, tab: ModelTab, user: gr.State, header: gr.Markdown, updated: list,
                 refresh_forward: dict, teaching: list) -> None:
    """A model switch (pick, download, load) updates ``updated`` (the page ``header``, Forward's t, then Generate's
    and Denoise's sampler controls: see :meth:`ModelHandlers.select_model`), redraws the Forward view
    (``refresh_forward``) and sets the ranges of the ``teaching`` sliders (:meth:`ModelHandlers.ranges`). A pick says
    at once what is happening, and its timer runs on the summary until the model is ready."""
    outputs = [tab.summary, tab.card, tab.samples, *updated, tab.pick]
    refresh = dict(refresh_forward, api_visibility="private")
    ranges = dict(fn=h.ranges, inputs=user, outputs=teaching, api_visibility="private", queue=False)
    now = dict(fn=h.model_now, inputs=user, outputs=[header, tab.note], api_visibility="private", queue=False,
               show_progress="hidden")
    tab.pick.input(h.switching, [tab.pick, user], [header, tab.note], api_visibility="private", queue=False,
                   show_progress="hidden")
    tab.pick.input(h.select_model, [tab.pick, user], outputs, api_name="select_model", show_progress="full",
                   show_progress_on=[tab.summary]).then(**now).then(**refresh).then(**ranges)
    tab.download.click(h.download_model, [tab.repo, user], outputs, api_name="download_model",
                       show_progress="minimal", show_progress_on=tab.download).success(**refresh).then(**ranges)
    tab.load_folder.click(h.load_folder, [tab.folder, user], outputs, api_name="load_folder",
                          show_progress="minimal", show_progress_on=tab.load_folder).success(**refresh).then(**ranges)
    tab.rescan.click(h.rescan, user, [tab.pick, tab.note], api_name="rescan_models", show_progress="hidden")
