"""Runs side by side: a pinned run and the latest one, shown at the same timestep t (a table index here, the paper's
t in what people read)."""

from __future__ import annotations

import numpy as np

from ddpm_app.diffusion.schedule import paper_t
from ddpm_app.image import from_uint8, grid
from ddpm_app.pictures import labelled_strip
from ddpm_app.serve.runs import Frame, Trajectory
from ddpm_app.text import ENGLISH, text


def frame_at(run: Trajectory, t: int) -> Frame:
    """The stored frame at timestep ``t``, or the nearest before it in the run (the chain's state when it had got
    down to ``t``); the first frame if the run started below ``t``."""
    reached = [f for f in run.frames if f.t >= t]
    return reached[-1] if reached else run.frames[0]


def compare_picture(pinned: Trajectory, latest: Trajectory, t: int, min_size: int = 128,
                    title: str | None = None, language: str = ENGLISH) -> tuple[np.ndarray, str]:
    """x_t and x̂₀ of both runs at ``t``, A (pinned) in the top row and B (latest) under it, and a Markdown caption.
    Two by two, the picture is about as tall as wide, so a phone shows it across its width, not as a thin strip."""
    a, b = frame_at(pinned, t), frame_at(latest, t)
    tiles = [grid(from_uint8(x)) for x in (a.x_t, a.pred_x0, b.x_t, b.pred_x0)]
    labels = [label for run, f in (("A", a), ("B", b))
              for label in (text("compare.label_xt", language, run=run, t=paper_t(f.t)),
                            text("compare.label_x0", language, run=run))]
    caption = text("compare.caption", language, title_a=pinned.title, t_a=paper_t(a.t), step_a=a.index + 1,
                   steps_a=pinned.num_steps, title_b=latest.title, t_b=paper_t(b.t), step_b=b.index + 1,
                   steps_b=latest.num_steps)
    if pinned.seed != latest.seed:
        caption += text("compare.seeds_differ", language, a=pinned.seed, b=latest.seed)
    elif (noisy(pinned) or noisy(latest)) and pinned.settings != latest.settings:
        caption += text("compare.same_seed", language)
    return labelled_strip(tiles, labels, min_size=min_size, columns=2, title=title), caption


def noisy(run: Trajectory) -> bool:
    """Whether the run's chain adds fresh noise z at its steps (DDPM, or DDIM with η > 0)."""
    return run.settings is not None and (run.settings.sampler == "ddpm" or run.settings.eta > 0)
