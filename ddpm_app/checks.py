"""Values that people, API clients and config files send, checked: any JSON value in (a string, null, NaN, ±Infinity,
a huge number, a nested list…), a clean value out, or an :class:`InvalidValue` whose message names the field and
what it allows. Messages quote at most a short prefix of what was sent (:func:`shown`).

A user's bad value and a config file's are the same kind of error, with one class. The checks of what users send
(:func:`whole_number`, :func:`real_number`, :func:`choice`, :func:`flag`, :func:`text`, seeds) take widget and API
values as they come; those of stored configs (:func:`exact_int`, …) take a value only as written, never rounded or
parsed. The app turns an :class:`InvalidValue` into the message a user sees in one place
(:func:`ddpm_app.ui.widgets.user_errors`).
"""

from __future__ import annotations

import math
import random
from typing import Sequence

from ddpm_app.text import CatalogueError

SHOWN_CHARACTERS = 40  # how much of a bad value a message repeats
MAX_SEED = 2**32 - 1


class InvalidValue(CatalogueError, ValueError):
    """A value is missing, of the wrong type or out of range; the message (a catalogue key and its values) names the
    field and the allowed values."""


# The name config readers (model folders, model and schedule configs) raise it under: the same class.
ConfigError = InvalidValue


def shown(value: object, limit: int = SHOWN_CHARACTERS) -> str:
    """``repr(value)`` cut to ``limit`` characters (with "…"), for quoting a value in a message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


# ---------------------------------------------------------------------------------------------------------------
# What users send


def _number(value: object) -> float:
    """``value`` as a float, NaN for anything that is not a JSON number: bools are not numbers, and neither are
    strings, "7" or "NaN" alike (the widgets send numbers, and the API describes these fields as numbers)."""
    if isinstance(value, (bool, str)):
        return math.nan
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return math.nan


def whole_number(value: object, name: str, low: int, high: int) -> int:
    """``value`` as an int in low…high (a frame index, a timestep, a number of steps), or an error naming ``name``
    and the range."""
    number = _number(value)
    if not number.is_integer() or not low <= number <= high:
        raise InvalidValue("error.whole_number", name=name, low=low, high=high, got=shown(value))
    return int(number)


def real_number(value: object, name: str, low: float, high: float) -> float:
    """``value`` as a finite float in low…high, or an error naming ``name`` and the range."""
    number = _number(value)
    if not low <= number <= high:  # also false for NaN
        raise InvalidValue("error.real_number", name=name, low=low, high=high, got=shown(value))
    return number


def choice(value: object, name: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices`` (strings), else an error listing them."""
    if not isinstance(value, str) or value not in choices:
        raise InvalidValue("error.choice", name=name, choices=", ".join(choices), got=shown(value))
    return value


def flag(value: object, name: str) -> bool:
    """``value`` if it is true or false (a checkbox)."""
    if not isinstance(value, bool):
        raise InvalidValue("error.flag", name=name, got=shown(value))
    return value


def text(value: object, name: str, most: int) -> str:
    """A string of at most ``most`` characters (a text box; null is empty text); numbers, lists and objects are
    refused."""
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > most:
        raise InvalidValue("error.text", name=name, most=most, got=shown(value))
    return value


def random_seed() -> int:
    """A fresh seed from the OS, never from (or into) a global generator."""
    return random.SystemRandom().randrange(2**31)


def requested_seed(value: object) -> int | None:
    """The seed asked for, or None for "draw one": blank, null or −1. Anything else must be a whole number in
    0…2³²−1; a fraction is refused rather than rounded."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        seed = whole_number(value, "seed", -1, MAX_SEED)
    except InvalidValue:
        raise InvalidValue("error.seed", most=MAX_SEED, got=shown(value)) from None
    return None if seed == -1 else seed


def resolve_seed(value: object) -> int:
    """The seed to use: the one asked for, or a random one for blank / −1."""
    seed = requested_seed(value)
    return random_seed() if seed is None else seed


# ---------------------------------------------------------------------------------------------------------------
# What config files hold: taken as written


def exact_int(value: object, name: str, low: int, high: int) -> int:
    """``value`` if it is an int (not a bool, a float or a string) in low…high, else an error: a stored config is
    taken as written, never rounded or parsed."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidValue("error.whole_number", name=name, low=low, high=high, got=shown(value))
    return value


def exact_real(value: object, name: str, low: float, high: float) -> float:
    """``value`` if it is an int or a float (not a bool or a string) in low…high, else an error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:  # NaN: not in range
        raise InvalidValue("error.real_number", name=name, low=low, high=high, got=shown(value))
    return float(value)


def exact_ints(value: object, name: str, low: int, high: int, length: tuple[int, int]) -> tuple[int, ...]:
    """``value`` as a tuple if it is a list (or tuple) of ``length[0]``…``length[1]`` ints in low…high, else an
    error."""
    if not isinstance(value, (list, tuple)) or not length[0] <= len(value) <= length[1]:
        raise InvalidValue("error.whole_numbers", name=name, least=length[0], most=length[1], low=low, high=high,
                           got=shown(value))
    return tuple(exact_int(v, f"{name}[{i}]", low, high) for i, v in enumerate(value))
