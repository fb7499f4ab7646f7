"""Figures for slides, in a row under the tabs: the latest result of a view as one labelled PNG."""

from __future__ import annotations

import gradio as gr

from ddpm_app.checks import choice
from ddpm_app.text import text
from ddpm_app.ui import widgets
from ddpm_app.ui.i18n import choices as i18n_choices
from ddpm_app.ui.i18n import i18n
from ddpm_app.ui.kit import TabHandlers, help_markdown
from ddpm_app.ui.widgets import user_errors
from ddpm_app.views.figures import VIEWS, figure, save_figure
from ddpm_app.views.state import UserState

FIGURE_HELP = text("figures.help")


class FigureHandlers(TabHandlers):
    def export_figure(self, view: str, user: UserState) -> str:
        """The latest result of ``view`` as a slide figure (PNG, ≥ 512 px per image); returns its path."""
        with user_errors(user.language):
            view = choice(view, "view", VIEWS)
            picture_ = self.worker.run(figure, view, user, self.served(user))
        return str(self.figures.write(f"ddpm_{view}.png", lambda path: save_figure(picture_, path)))


# the slide figure of each tab that has one (the runs' tabs: the step's terms, as Frames shows them)
FIGURE_OF_TAB = {"generate": "step", "frames": "step", "denoise": "step", "forward": "forward",
                 "training": "training", "likelihood": "likelihood", "compare": "compare",
                 "interpolate": "interpolation"}


def figure_row(h: FigureHandlers, user: gr.State, tabs: gr.Tabs) -> None:
    """One row under the ``tabs``: pick a view, get its slide figure. The view offered is that of the tab opened
    last that has one (Generate's, the first tab's, at first)."""
    with gr.Accordion(i18n("figures.accordion"), open=False):
        help_markdown("figures.help")
        with gr.Row():
            view = widgets.Dropdown(i18n_choices([(f"figures.{v}", v) for v in VIEWS]), value="step",
                                    label=i18n("figures.view"), min_width=200, elem_id="figure-view")
            btn = gr.Button(i18n("figures.export"), size="sm", min_width=100)
        out = gr.File(label=i18n("figures.figure"), interactive=False, elem_id="figure-file")
    btn.click(h.export_figure, [view, user], out, api_name="export_figure")
    for tab in tabs.children:
        if tab.id in FIGURE_OF_TAB:
            tab.select(_offers(FIGURE_OF_TAB[tab.id]), None, view, api_visibility="private", queue=False,
                       show_progress="hidden")


def _offers(view: str):
    """The event that makes ``view`` the figure offered."""
    def offer() -> str:
        return view
    offer.__name__ = f"offer_{view}_figure"
    return offer
