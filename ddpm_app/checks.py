"""Values that people and API clients send, checked: any JSON value in (a string, null, NaN, ±Infinity, a huge
number, a nested list…), a number, a choice or a flag out, or an :class:`InvalidValue` whose message names the
field and what it allows. Messages quote at most a short prefix of what was sent (:func:`shown`).

Each check takes the error class to raise, so a module can raise its own kind (``SettingsError`` for sampler
settings, ``InputError`` in the app); all of them are :class:`InvalidValue`.
"""

from __future__ import annotations

import math
from typing import Sequence

SHOWN_CHARACTERS = 40  # how much of a bad value a message repeats


class InvalidValue(ValueError):
    """A value is missing, of the wrong type or out of range; the message names the field and the allowed values."""


class ConfigError(InvalidValue):
    """A field of a model or schedule config (as config.json holds it) is of the wrong type or out of range; the
    message names the field and what it allows."""


def shown(value: object, limit: int = SHOWN_CHARACTERS) -> str:
    """``repr(value)`` cut to ``limit`` characters (with "…"), for quoting a value in a message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _number(value: object) -> float:
    """``value`` as a float, NaN for anything that is not a JSON number: bools are not numbers, and neither are
    strings, "7" or "NaN" alike (the widgets send numbers, and the API describes these fields as numbers)."""
    if isinstance(value, (bool, str)):
        return math.nan
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return math.nan


def whole_number(value: object, name: str, low: int, high: int, error: type[InvalidValue] = InvalidValue) -> int:
    """``value`` as an int in low…high, or ``error`` naming ``name`` and the range."""
    number = _number(value)
    if not number.is_integer() or not low <= number <= high:
        raise error(f"{name} must be a whole number in {low}…{high}, got {shown(value)}")
    return int(number)


def real_number(value: object, name: str, low: float, high: float, error: type[InvalidValue] = InvalidValue) -> float:
    """``value`` as a finite float in low…high, or ``error`` naming ``name`` and the range."""
    number = _number(value)
    if not low <= number <= high:  # also false for NaN
        raise error(f"{name} must be a number in {low:g}…{high:g}, got {shown(value)}")
    return number


def choice(value: object, name: str, choices: Sequence[str], error: type[InvalidValue] = InvalidValue) -> str:
    """``value`` if it is one of ``choices`` (strings), else ``error`` listing them."""
    if not isinstance(value, str) or value not in choices:
        raise error(f"{name} must be one of {', '.join(choices)}, got {shown(value)}")
    return value


def flag(value: object, name: str, error: type[InvalidValue] = InvalidValue) -> bool:
    """``value`` if it is true or false, else ``error``."""
    if not isinstance(value, bool):
        raise error(f"{name} must be true or false, got {shown(value)}")
    return value


def exact_int(value: object, name: str, low: int, high: int, error: type[InvalidValue] = ConfigError) -> int:
    """``value`` if it is an int (not a bool, a float or a string) in low…high, else ``error``: a stored config is
    taken as written, never rounded or parsed."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise error(f"{name} must be a whole number in {low}…{high}, got {shown(value)}")
    return value


def exact_real(value: object, name: str, low: float, high: float, error: type[InvalidValue] = ConfigError) -> float:
    """``value`` if it is an int or a float (not a bool or a string) in low…high, else ``error``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:  # NaN: not in range
        raise error(f"{name} must be a number in {low:g}…{high:g}, got {shown(value)}")
    return float(value)


def exact_ints(value: object, name: str, low: int, high: int, length: tuple[int, int],
               error: type[InvalidValue] = ConfigError) -> tuple[int, ...]:
    """``value`` as a tuple if it is a list (or tuple) of ``length[0]``…``length[1]`` ints in low…high, else ``error``."""
    if not isinstance(value, (list, tuple)) or not length[0] <= len(value) <= length[1]:
        raise error(f"{name} must be a list of {length[0]}…{length[1]} whole numbers in {low}…{high}, "
                    f"got {shown(value)}")
    return tuple(exact_int(v, f"{name}[{i}]", low, high, error) for i, v in enumerate(value))
