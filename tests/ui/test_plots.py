"""Log axes of the app's plots: plain decimals, never two labels alike, never crowded."""

from __future__ import annotations

import pytest

from ddpm_app.views.plots import log_y, new_figure, pixels


@pytest.mark.parametrize("low, high", [(0.0089, 0.012), (0.02, 0.5), (0.02, 0.031), (0.3, 1.0), (1e-4, 3.0)])
def test_log_axis_labels_are_plain_distinct_and_few(low: float, high: float):
    fig = new_figure(4, 3)
    ax = fig.subplots()
    ax.plot([0, 1], [high, low])
    log_y(ax)
    pixels(fig)  # draws, which places the ticks
    shown = [(tick.get_loc(), tick.label1.get_text()) for tick in ax.yaxis.get_major_ticks() + ax.yaxis.get_minor_ticks()
             if tick.label1.get_visible() and tick.label1.get_text() and low <= tick.get_loc() <= high]
    labels = [text for _, text in shown]
    assert labels, "no tick labelled"
    assert len(set(labels)) == len(labels), labels
    assert all(float(text) == pytest.approx(loc, rel=0.01) for loc, text in shown), shown
    assert not any("10^" in text or "times" in text or "e-" in text for text in labels), labels
    assert len(labels) <= 8, labels
