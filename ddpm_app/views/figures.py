"""Figures for slides: each teaching view's latest result as one labelled PNG, every image at least 512 pixels
(enlarged nearest-neighbour, so pixels stay sharp), labels in DejaVu Sans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddpm_app.checks import InvalidValue
from ddpm_app.numbers import number
from ddpm_app.pictures import labelled_strip
from ddpm_app.serve.served import ServedModel
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
    lesson = user.lesson
    if view == "step":
        run = user.run
        if run is None or not run.frames:
            raise InvalidValue("nothing to export yet: run Generate (or Denoise) first")
        frame = run.frames[min(user.frame_index, len(run.frames) - 1)]
        parts = frame_breakdown(run, frame)
        if parts is None:
            raise InvalidValue("this run kept no step terms; run it again")
        return terms_strip(parts, frame.x_prev, SLIDE_SIZE, title=f"{run.title}: {equation_text(parts)}")
    if view == "forward":
        fwd = user.forward
        if fwd.x0 is None:
            raise InvalidValue("nothing to export yet: noise a photo in the Forward tab first")
        ts = served.strip_timesteps(6)
        return labelled_strip(served.q_sample(fwd.x0, ts, fwd.eps), [f"x_{t}" for t in ts], SLIDE_SIZE,
                              title="x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε, the same ε at every t")
    if view == "training":
        s = lesson.step
        if s is None:
            raise InvalidValue("nothing to export yet: pick a photo in the Training tab first")
        scale = heat_scale(s.squared_error)
        return labelled_strip([s.x0, s.eps / 2, s.x_t, s.pred_eps / 2, _rgb_tensor(error_heatmap(s.squared_error, scale))],
                              ["x₀", "ε (×½)", f"x_{s.t}", "ε̂ = ε_θ(x_t, t) (×½)", f"(ε − ε̂)², 0 … {number(scale)}"],
                              SLIDE_SIZE, title=f"t = {s.t}: loss ‖ε − ε̂‖²/D = {number(s.loss)}, "
                                                f"‖ε − ε̂‖² = {s.loss_sum:.1f}")
    if view == "likelihood":
        if lesson.likelihood is None:
            raise InvalidValue("nothing to export yet: compute the bits/dim of a photo in the Likelihood tab first")
        return terms_plot(lesson.likelihood, served.heldout, served.timesteps, dpi=220)
    if view == "compare":
        if user.pinned is None or user.run is None or not user.run.frames:
            raise InvalidValue("nothing to compare yet: pin a run, then run another")
        t = lesson.compare_t
        return compare_picture(user.pinned, user.run, t, SLIDE_SIZE, title=f"A (pinned) and B (latest) at t = {t}")[0]
    if view == "interpolation":
        if lesson.interpolation is None:
            raise InvalidValue("nothing to export yet: run an interpolation first")
        n = len(lesson.interpolation)
        return labelled_strip(list(lesson.interpolation), [f"w = {i / max(n - 1, 1):.2f}" for i in range(n)],
                              SLIDE_SIZE, title=lesson.interpolation_title)
    raise InvalidValue(f"no figure for view {view!r}; choose one of {', '.join(VIEWS)}")


def save_figure(picture: np.ndarray, path: str | Path) -> Path:
    Image.fromarray(picture).save(path)
    return Path(path)
