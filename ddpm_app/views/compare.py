"""Runs side by side: a pinned run and the latest one, shown at the same timestep t."""

from __future__ import annotations

import numpy as np

from ddpm_app.image import from_uint8, grid
from ddpm_app.pictures import labelled_strip
from ddpm_app.serve.runs import Frame, Trajectory


def frame_at(run: Trajectory, t: int) -> Frame:
    """The stored frame at timestep ``t``, or the nearest before it in the run (the chain's state when it had got
    down to ``t``); the first frame if the run started below ``t``."""
    reached = [f for f in run.frames if f.t >= t]
    return reached[-1] if reached else run.frames[0]


def compare_picture(pinned: Trajectory, latest: Trajectory, t: int, min_size: int = 128,
                    title: str | None = None) -> tuple[np.ndarray, str]:
    """x_t and x̂₀ of both runs at ``t``, side by side (A = pinned, B = latest), and a Markdown caption."""
    a, b = frame_at(pinned, t), frame_at(latest, t)
    tiles = [grid(from_uint8(x)) for x in (a.x_t, a.pred_x0, b.x_t, b.pred_x0)]
    labels = [f"A: x_{a.t}", "A: x̂₀", f"B: x_{b.t}", "B: x̂₀"]
    caption = (f"**A** (pinned): {pinned.title} — at t = {a.t}, step {a.index + 1}/{pinned.num_steps}.  \n"
               f"**B** (latest): {latest.title} — at t = {b.t}, step {b.index + 1}/{latest.num_steps}.")
    if pinned.seed != latest.seed:
        caption += f"  \nThe seeds differ ({pinned.seed} and {latest.seed}): use the same seed to compare samplers."
    elif (noisy(pinned) or noisy(latest)) and pinned.settings != latest.settings:
        caption += ("  \nSame seed, so the same starting noise x_T, yet different images: DDPM (and DDIM with η > 0) "
                    "draws fresh noise z at every step, and the two chains draw it differently (or one adds none), "
                    "so they part ways from the first step on.")
    return labelled_strip(tiles, labels, min_size=min_size, title=title), caption


def noisy(run: Trajectory) -> bool:
    """Whether the run's chain adds fresh noise z at its steps (DDPM, or DDIM with η > 0)."""
    return run.settings is not None and (run.settings.sampler == "ddpm" or run.settings.eta > 0)
