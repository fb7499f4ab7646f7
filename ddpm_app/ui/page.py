"""The Gradio app: watch q(x_t|x₀) noise a photo, and watch the reverse chain p_θ turn noise into images.

:func:`build` makes the Blocks from a :class:`~ddpm_app.serve.library.ModelLibrary`: it lays out one tab per module
of this package (each module holds its tab's layout and its handlers) and connects the events that cross tabs.
:class:`Handlers` holds every tab's handlers over their shared state, plain functions (or generators) of widget
values and the user's :class:`~ddpm_app.views.state.UserState`, so the tests call them directly. The math lives in the
library: the tabs only turn widget values into calls and results into pictures and text.
"""

from __future__ import annotations

import gradio as gr
from gradio.i18n import I18nData

from ddpm_app.checks import choice
from ddpm_app.diffusion.schedule import table_index
from ddpm_app.serve.library import ModelLibrary
from ddpm_app.serve.runs import DEFAULT_PREVIEW_INTERVAL, DEFAULT_TRAJECTORY_BYTES
from ddpm_app.serve.served import ServedModel
from ddpm_app.serve.server import JOBS, limit_waiting
from ddpm_app.text import ENGLISH, LANGUAGES, catalogue, text
from ddpm_app.ui import widgets
from ddpm_app.ui.compare import CompareHandlers, compare_tab
from ddpm_app.ui.denoise import DenoiseHandlers, denoise_tab
from ddpm_app.ui.figures import FigureHandlers, figure_row
from ddpm_app.ui.forward import ForwardHandlers, forward_events, forward_numbers, forward_tab, schedule_plot
from ddpm_app.ui.frames import FramesHandlers, frames_tab
from ddpm_app.ui.generate import GenerateHandlers, generate_events, generate_tab
from ddpm_app.ui.i18n import DETECT_JS, REMEMBER_JS, SWITCH_JS, i18n, language_switch, written
from ddpm_app.ui.interpolate import InterpolateHandlers, interpolate_tab
from ddpm_app.ui.kit import DEFAULT_SETTINGS, FIRST_BATCH, first_settings, starting_t
from ddpm_app.ui.lab import LabHandlers, lab_tab
from ddpm_app.ui.likelihood import LikelihoodHandlers, likelihood_tab
from ddpm_app.ui.model import ModelHandlers, model_card, model_events, model_header, model_tab
from ddpm_app.ui.training import TrainingHandlers, training_tab
from ddpm_app.ui.widgets import user_errors
from ddpm_app.views.state import Users, UserState

QUEUE_SIZE = 16  # sampling jobs waiting at most; more get "queue full"
VIEW_QUEUE_SIZE = 32  # quick views (a frame, a training step, an export) waiting at most, counted apart from jobs

CSS = """
/* small model outputs: scale up to the component, keep the pixels sharp */
.pixelated .image-container > button, .pixelated .image-frame { width: 100%; height: 100%; }
.pixelated .image-frame img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
/* a picture's label sits above it, and its buttons beside the label, instead of both floating over the picture
   (on a phone a floating label covers small images and runs under the buttons); a photo upload's (ddpm-photo)
   buttons are there already */
.ddpm-picture > label[data-testid="block-label"], .ddpm-photo > label[data-testid="block-label"] {
  position: static !important; width: fit-content; max-width: calc(100% - 72px); margin-bottom: 6px; }
.ddpm-picture, .ddpm-photo { display: flex !important; flex-flow: column nowrap !important; }
.ddpm-picture .image-container, .ddpm-photo .image-container { flex: 1 1 auto; min-height: 0; overflow: visible; }
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
# Gradio drops @media rules from `css`, so the phone-width rules go into the page head. The tabs wrap onto a second
# line rather than hide behind an overflow menu (gr.Tabs(overflow_behavior="wrap")); narrower buttons keep it to two.
HEAD = """<style>
@media (max-width: 480px) {
  .tabs .tab-container button { padding-left: 6px !important; padding-right: 6px !important; }
  /* displayed equations a sixth smaller than KaTeX's 1.21em: the DDPM step's symbolic form then fits a phone
     (wider ones still scroll sideways in their box) */
  .katex-display > .katex { font-size: 1em !important; }
}
</style>"""
THEME = gr.themes.Soft(font=["system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"],
                       font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"])

INTRO = text("app.intro")


class Handlers(GenerateHandlers, FramesHandlers, ForwardHandlers, DenoiseHandlers, TrainingHandlers,
               LikelihoodHandlers, CompareHandlers, InterpolateHandlers, FigureHandlers, ModelHandlers):
    """Every tab's event handlers (but the 2-D lab's, :class:`~ddpm_app.ui.lab.LabHandlers`), over the state they
    share (:class:`~ddpm_app.ui.kit.TabHandlers`): each tab's module defines its own."""

    def set_language(self, language: str, t: float, user: UserState) -> tuple:
        """The switch (or, on load, the browser) sets the user's language: what handlers write from now on is in
        it, and what they wrote before that the page always shows is written again: (header, Forward's numbers
        and schedule plot at the slider's ``t``, the model card's table and text)."""
        with user_errors(user.language):
            user.language = choice(language, "language", list(LANGUAGES))
            served = self.served(user)
            t = served.t_index(t)
        return self.worker.run(language_views, served, t, user.forward.eps_seed, user.language)


def language_views(served: ServedModel, t: int, noise_seed: int | None, language: str) -> tuple:
    """The texts and plot the page always shows of the user's model, in ``language``: (header, Forward's numbers
    and schedule plot at the table index ``t``, the model card's table and text)."""
    table, card, _ = model_card(served, language)
    return (model_header(served, language), forward_numbers(served, t, noise_seed, language),
            schedule_plot(served, t, language), table, card)


def first_views(first: ServedModel) -> tuple:
    """What the page shows of the first model before anyone asks: (header, Forward's numbers and schedule plot at
    t = T/4, the model card's table, text and samples), each text written in every language (the browser shows
    its own)."""
    t = table_index(starting_t(first.timesteps))
    cards = {language: model_card(first, language) for language in LANGUAGES}  # (table, text, samples) each
    return (written(lambda language: model_header(first, language)),
            written(lambda language: forward_numbers(first, t, None, language)), schedule_plot(first, t),
            (written(lambda language: cards[language][0]), written(lambda language: cards[language][1]),
             cards[ENGLISH][2]))


def glossary() -> I18nData:
    """The seed tutorial's terms as a table, the reader's language first and the other beside it: the Chinese
    tutorial's words for the English papers' and code's, and back."""
    def table(language: str) -> str:
        order = [language] + [other for other in LANGUAGES if other != language]
        terms = [key for key in catalogue(ENGLISH) if key.startswith("term.")]
        rows = ["| " + " | ".join(catalogue(tag)[key] for tag in order) + " |" for key in terms]
        return "\n".join(["| " + " | ".join(LANGUAGES[tag] for tag in order) + " |", "|---" * len(order) + "|", *rows])
    return written(table)


def build(library: ModelLibrary, preview_interval: float | None = DEFAULT_PREVIEW_INTERVAL,
          max_trajectory_bytes: int = DEFAULT_TRAJECTORY_BYTES, queue_size: int = QUEUE_SIZE,
          users: Users | None = None) -> gr.Blocks:
    """The app's Blocks, queued; launch it with ``css=CSS, head=HEAD, theme=THEME``. ``users`` decides how long
    each user's results stay in memory (see :class:`~ddpm_app.views.state.Users`)."""
    h = Handlers(library, preview_interval, max_trajectory_bytes, users=users)
    first = library.get()
    T = first.timesteps
    settings = first_settings(first)
    # the first model's pictures and numbers, computed on the device thread like all tensor work: a tensor
    # operation on this thread would start a second OpenMP team, which slows sampling for as long as the server
    # runs (docs/operations.md, "Threads")
    header_text, numbers_text, plot_image, (table, card_text, samples_path) = library.worker.run(first_views, first)

    with widgets.Blocks(title=text("app.title"), analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        user = gr.State(UserState())
        with gr.Row(equal_height=False):  # the switch beside the title; on a phone, under it
            with gr.Column(scale=5, min_width=320):
                gr.Markdown(i18n("app.intro"))
            with gr.Column(scale=0, min_width=220):
                switch = language_switch()
        header = gr.Markdown(header_text, label=i18n("app.model_label"), elem_id="page-header")

        with gr.Tabs(overflow_behavior="wrap") as tabs:  # every tab in view, on a phone too
            generate = generate_tab(T, settings, first.first_run(FIRST_BATCH, DEFAULT_SETTINGS.steps).batch)
            lab_tab(LabHandlers(library.worker), user)  # the 2-D lab: DDPM on points, trained live
            frames = frames_tab(h, user)
            forward = forward_tab(T, numbers_text, plot_image)
            denoise = denoise_tab(h, user, T, settings, frames)
            train_t = training_tab(h, user, T, forward.photo)
            likelihood_tab(h, user, T, forward.photo)
            compare_t = compare_tab(h, user, T)
            interpolation = interpolate_tab(h, user, first)
            model = model_tab(library.names, first.name, table, card_text, samples_path)
        figure_row(h, user, tabs)
        with gr.Accordion(i18n("app.glossary"), open=False):
            gr.Markdown(glossary(), elem_id="glossary")

        generate_events(h, generate, frames, user)
        sdedit = [denoise.start, denoise.note]
        forward_events(h, forward, user, sdedit)
        updated = [header, forward.t, generate.steps, denoise.steps, generate.batch, generate.clip, denoise.clip,
                   generate.eta, denoise.eta]
        model_events(h, model, user, header, updated, forward.noise_event(h, user, sdedit), frames.show_frame,
                     [train_t, compare_t, *interpolation])
        demo.load(None, None, switch, js=DETECT_JS)
        switch.change(None, switch, None, js=SWITCH_JS)
        switch.input(None, switch, None, js=REMEMBER_JS)
        switch.change(h.set_language, [switch, forward.t, user],
                      [header, forward.outputs[3], forward.outputs[5], model.summary, model.card],
                      api_visibility="private", show_progress="hidden")
        demo.unload(h.leave)
    demo.queue(max_size=None, default_concurrency_limit=2)
    limit_waiting(demo, JOBS, queue_size, VIEW_QUEUE_SIZE)  # views are never refused because jobs fill the queue
    return demo
