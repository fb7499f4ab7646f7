"""How long a view's work will take, so that anything slow says so: what is left at the rate measured so far, and,
before any of it is done, at the rate the same network went at here before."""

from __future__ import annotations

import threading

from ddpm_app.text import ENGLISH, text


def about(seconds: float, language: str = ENGLISH) -> str:
    """A duration as a person reads it, in ``language``: "≈ 40 s", "≈ 3 min"."""
    if seconds < 90:
        return text("pace.seconds", language, n=max(1, round(seconds)))
    return text("pace.minutes", language, n=round(seconds / 60))


def time_left(done: int, total: int, elapsed: float, language: str = ENGLISH) -> str:
    """"≈ 40 s left" for ``total − done`` more units at the rate of the ``done`` ones so far (``elapsed`` seconds), or
    "" before any is done and once all are."""
    if done <= 0 or done >= total:
        return ""
    return text("pace.left", language, about=about(elapsed / done * (total - done), language))


class Pace:
    """Seconds per network input of the teaching views' fp32 calls (the loss curve, the bound), per model, as
    measured here last: the estimate a view gives before its own first call has finished. Shared by all users."""

    def __init__(self):
        self._seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def record(self, model: str, inputs: int, seconds: float) -> None:
        """``inputs`` network inputs of ``model`` took ``seconds``."""
        if inputs > 0:
            with self._lock:
                self._seconds[model] = seconds / inputs

    def estimate(self, model: str, inputs: int, fallback: float | None = None) -> float | None:
        """Seconds ``inputs`` more inputs should take: at the last measured rate, else at ``fallback`` seconds per
        input (say, a step's time at batch 1, measured when the model loaded), else None."""
        with self._lock:
            rate = self._seconds.get(model, fallback)
        return None if rate is None else rate * inputs
