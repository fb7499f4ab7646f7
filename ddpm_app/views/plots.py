"""Plots as pixels for the browser: a matplotlib figure drawn once, and a marker at x painted on a copy of it.

Drawing a figure costs a tenth of a second or more; moving a slider should not. :class:`MarkedPlot` keeps the
drawn pixels and, for each axes, where x lands, so :meth:`MarkedPlot.at` only paints a vertical line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter

from ddpm_app.fonts import set_plot_fonts

MARK_COLOUR = (220, 20, 60)


class PlainLogFormatter(LogFormatter):
    """Matplotlib's choice of which log-axis ticks to label (fewer as the range widens, so labels never crowd),
    written as plain decimals: 0.03, not 3×10⁻², which learners read faster."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:.3g}" if super().__call__(x, pos) else ""


def log_y(ax: Axes) -> None:
    """A logarithmic y axis whose ticks are labelled as plain decimals."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.yaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def new_figure(width: float = 8, height: float = 3, dpi: int = 100) -> Figure:
    """A figure whose text is DejaVu Sans (Greek letters and subscripts included; Chinese in a CJK font)."""
    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    fig.set_facecolor("white")
    return fig


def pixels(fig: Figure) -> np.ndarray:
    """The figure drawn: (H, W, 3) uint8, Chinese in its texts included (:func:`~ddpm_app.fonts.set_plot_fonts`)."""
    set_plot_fonts(fig)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


@dataclass(frozen=True)
class MarkedPlot:
    """A drawn figure and, per marked axes, x pixel = x0 + dx·x over rows top…bottom."""

    image: np.ndarray  # (H, W, 3) uint8
    marks: tuple[tuple[float, float, int, int], ...]

    @classmethod
    def draw(cls, fig: Figure, axes: list[Axes]) -> MarkedPlot:
        """Draw ``fig``; a marker will go across each of ``axes`` (linear x axes)."""
        image = pixels(fig)
        height = image.shape[0]
        marks = []
        for ax in axes:
            lo, hi = ax.get_xlim()
            (x_lo, _), (x_hi, _) = ax.transData.transform([(lo, ax.get_ylim()[0]), (hi, ax.get_ylim()[0])])
            box = ax.get_window_extent()  # pixels from the bottom left
            marks.append((x_lo - lo * (x_hi - x_lo) / (hi - lo), (x_hi - x_lo) / (hi - lo),
                          int(height - box.y1) + 1, int(height - box.y0) - 1))
        return cls(image, tuple(marks))

    def at(self, x: float | None) -> np.ndarray:
        """A copy with a vertical line at data x on every marked axes (none for None)."""
        img = self.image.copy()
        if x is None:
            return img
        for x0, dx, top, bottom in self.marks:
            col = round(x0 + dx * x)
            img[top:bottom, max(col - 1, 0):col + 1] = MARK_COLOUR
        return img
