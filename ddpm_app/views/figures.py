"""Figures for slides: each teaching view's latest result as one labelled PNG, every image at least 512 pixels
(enlarged nearest-neighbour, so pixels stay sharp), labels in DejaVu Sans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddpm_app.checks import InvalidValue
from ddpm_app.diffusion.schedule import paper_t
from ddpm_app.numbers import number
from ddpm_app.pictures import labelled_strip
from ddpm_app.serve.served import ServedModel
from ddpm_app.text import text
from ddpm_app.views.compare import compare_picture
from ddpm_app.views.likelihood import terms_plot
from ddpm_app.views.reverse_step import equation_text, frame_breakdown, terms_strip
from ddpm_app.views.state import UserState
from ddpm_app.views.training import error_heatmap, heat_scale

SLIDE_SIZE = 512  # pixels per image, at least
VIEWS = ("step", "forward", "training", "likelihood", "compare", "interpolation")


def _rgb_tensor(picture: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(picture).permute(2, 0, 1).contiguous()  # (3, H, W) uint8


def figure(view: str, user: UserState, served: ServedModel) -> np.ndarray:
    """The slide figure of ``view`` (one of :data:`VIEWS`) from this user's latest result there: (H, W, 3)."""
    lesson, language = user.lesson, user.language
    if view == "step":
        run = user.run
        if run is None or not run.frames:
            raise InvalidValue("figures.none_step")
        frame = run.frames[min(user.frame_index, len(run.frames) - 1)]
        parts = frame_breakdown(run, frame)
        if parts is None:
            raise InvalidValue("figures.no_terms")
        return terms_strip(parts, frame.x_prev, SLIDE_SIZE, title=f"{run.title}: {equation_text(parts)}")
    if view == "forward":
        fwd = user.forward
        if fwd.x0 is None:
            raise InvalidValue("figures.none_forward")
        ts = served.strip_timesteps(6)
        return labelled_strip(served.q_sample(fwd.x0, ts, fwd.eps), [f"x_{paper_t(t)}" for t in ts], SLIDE_SIZE,
                              title=text("figures.forward_title", language))
    if view == "training":
        s = lesson.step
        if s is None:
            raise InvalidValue("figures.none_training")
        scale = heat_scale(s.squared_error)
        t = paper_t(s.t)
        return labelled_strip([s.x0, s.eps / 2, s.x_t, s.pred_eps / 2, _rgb_tensor(error_heatmap(s.squared_error, scale))],
                              ["x₀", text("picture.eps", language), f"x_{t}", "ε̂ = ε_θ(x_t, t) (×½)",
                               text("figures.heat", language, scale=number(scale))],
                              SLIDE_SIZE, title=text("figures.training_title", language, t=t, loss=number(s.loss),
                                                     loss_sum=f"{s.loss_sum:.1f}"))
    if view == "likelihood":
        if lesson.likelihood is None:
            raise InvalidValue("figures.none_likelihood")
        return terms_plot(lesson.likelihood, served.heldout, served.timesteps, dpi=220, language=language,
                          wide=True)
    if view == "compare":
        if user.pinned is None or user.run is None or not user.run.frames:
            raise InvalidValue("figures.none_compare")
        t = lesson.compare_t
        title = text("figures.compare_title", language, t=paper_t(t))
        return compare_picture(user.pinned, user.run, t, SLIDE_SIZE, title, language)[0]
    if view == "interpolation":
        if lesson.interpolation is None:
            raise InvalidValue("figures.none_interpolation")
        n = len(lesson.interpolation)
        return labelled_strip(list(lesson.interpolation), [f"w = {i / max(n - 1, 1):.2f}" for i in range(n)],
                              SLIDE_SIZE, title=lesson.interpolation_title)
    raise InvalidValue("figures.no_such_view", view=repr(view), views=", ".join(VIEWS))


def save_figure(picture: np.ndarray, path: str | Path) -> Path:
    Image.fromarray(picture).save(path)
    return Path(path)
