"""The Compare tab: two runs side by side, scrubbed by t with one slider. A is a pinned run, B the run Frames shows
now (run it from the same seed with another sampler, or clipping on against off)."""

from __future__ import annotations

import time
from typing import Iterator

import gradio as gr

from ddpm_app.diffusion.schedule import paper_t
from ddpm_app.text import text
from ddpm_app.ui import widgets
from ddpm_app.ui.i18n import i18n
from ddpm_app.ui.kit import TabHandlers, help_markdown, output_image
from ddpm_app.ui.widgets import user_error, user_errors
from ddpm_app.views.compare import compare_picture
from ddpm_app.views.state import UserState

COMPARE_HELP = text("compare.help")


class CompareHandlers(TabHandlers):
    def pin(self, user: UserState) -> tuple:
        """Pin the run Frames shows: (caption, compare picture, t-slider update)."""
        if user.run is None or not user.run.frames:
            raise user_error(text("compare.nothing_to_pin", user.language))
        user.pinned = user.run
        first = paper_t(user.pinned.frames[0].t)
        return (text("compare.pinned", user.language, title=user.pinned.title),
                *self.compare(first, user)[:1], gr.update(value=first))

    def compare(self, t: float, user: UserState) -> tuple:
        """Both runs at the paper's ``t`` (1…T, as the slider): (picture, caption)."""
        with user_errors(user.language):
            t = self.served(user).t_index(t)
        if user.pinned is None:
            return None, text("compare.nothing_pinned", user.language)
        latest = user.run
        if latest is None or not latest.frames:
            return None, text("compare.run_another", user.language)
        user.lesson.compare_t = t
        return self.worker.run(compare_picture, user.pinned, latest, t, language=user.language)

    def play(self, user: UserState, positions: int = 30, delay: float = 0.15) -> Iterator[tuple]:
        """Both runs from x_T down to x₀: (t, picture, caption) at ``positions`` evenly spaced timesteps, the paper's
        t from the higher start down to 1."""
        if user.pinned is None or user.run is None or not user.run.frames:
            raise user_error(text("compare.pin_first", user.language))
        top = paper_t(max(user.pinned.frames[0].t, user.run.frames[0].t))
        for i in range(positions):
            t = 1 + round((top - 1) * (1 - i / (positions - 1)))
            yield (t, *self.compare(t, user))
            time.sleep(delay)


def compare_tab(h: CompareHandlers, user: gr.State, T: int) -> gr.Slider:
    """The Compare tab with its events; returns its t slider (a model switch sets its range). Call inside
    ``gr.Tabs()``."""
    with gr.Tab(i18n("tab.compare"), id="compare", elem_id="compare-tab"):
        help_markdown("compare.help")
        with gr.Row():
            pin_btn = gr.Button(i18n("compare.pin"), variant="primary", min_width=120)
            play_btn = gr.Button(i18n("compare.play"), min_width=100)
        t = widgets.Slider(1, T, value=T, step=1, label=i18n("compare.t"), elem_id="compare-t")
        caption = gr.Markdown(i18n("compare.nothing_pinned"), label=i18n("compare.runs"), elem_id="compare-caption")
        image = output_image("compare.picture", height=340, pixelated=False, elem_id="compare-image")

    pin_btn.click(h.pin, user, [caption, image, t], api_name="pin", show_progress="hidden")
    t.input(h.compare, [t, user], [image, caption], api_name="compare", show_progress="hidden",
            trigger_mode="always_last", concurrency_limit=4)
    play_btn.click(h.play, user, [t, image, caption], api_visibility="private", show_progress="hidden")
    return t
