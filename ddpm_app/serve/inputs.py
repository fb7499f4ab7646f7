"""What a user sends, checked: one function per kind of value, each taking whatever JSON a client sent and
returning a clean value or raising :class:`InputError`, whose message names the field and the allowed range.

The general checks (:func:`whole_number`, :func:`real_number`, :func:`choice`, :func:`flag`) come from
:mod:`ddpm_app.checks` with ``InputError`` as their error; this module adds the app's own kinds: seeds, numbers
of images, frame indices and Hub model ids.
"""

from __future__ import annotations

import functools
import random
from typing import Sequence

from ddpm_app.checks import InvalidValue, shown
from ddpm_app.checks import choice as _choice
from ddpm_app.checks import flag as _flag
from ddpm_app.checks import real_number as _real_number
from ddpm_app.checks import whole_number as _whole_number
from ddpm_app.io.model_folder import HUB_ID_MAX_LENGTH, HUB_REPO_ID

MAX_BATCH = 4
MAX_SEED = 2**32 - 1


class InputError(InvalidValue):
    """A value a user chose is out of range, of the wrong type or missing; the message says what is allowed."""


def whole_number(value: object, name: str, low: int, high: int) -> int:
    """An int in low…high (a frame index, a timestep, a number of steps)."""
    return _whole_number(value, name, low, high, InputError)


def real_number(value: object, name: str, low: float, high: float) -> float:
    """A finite float in low…high."""
    return _real_number(value, name, low, high, InputError)


def choice(value: object, name: str, choices: Sequence[str]) -> str:
    """One of ``choices``."""
    return _choice(value, name, choices, InputError)


def flag(value: object, name: str) -> bool:
    """True or false (a checkbox)."""
    return _flag(value, name, InputError)


def text(value: object, name: str, most: int) -> str:
    """A string of at most ``most`` characters (a text box; null is empty text); numbers, lists and objects are
    refused."""
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > most:
        raise InputError(f"{name} must be text of at most {most:,} characters, got {shown(value)}")
    return value


def batch_size(value: object) -> int:
    """How many images one run makes: 1…MAX_BATCH."""
    return whole_number(value, "number of images", 1, MAX_BATCH)


def random_seed() -> int:
    """A fresh seed from the OS, never from (or into) a global generator."""
    return random.SystemRandom().randrange(2**31)


def requested_seed(value: object) -> int | None:
    """The seed asked for, or None for "draw one": blank, null or −1. Anything else must be a whole number in
    0…2³²−1; a fraction is refused rather than rounded."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        seed = _whole_number(value, "seed", -1, MAX_SEED, InputError)
    except InputError:
        raise InputError(f"seed must be a whole number in 0…{MAX_SEED}, or −1 / blank for a random one; "
                         f"got {shown(value)}") from None
    return None if seed == -1 else seed


def resolve_seed(value: object) -> int:
    """The seed to use: the one asked for, or a random one for blank / −1."""
    seed = requested_seed(value)
    return random_seed() if seed is None else seed


@functools.lru_cache(maxsize=1)
def _hub_validator():
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id
    return validate_repo_id, HFValidationError


def hub_model_id(value: object) -> str:
    """A Hub repo id "user/model-name": letters, digits, '-', '_' and '.', at most 96 characters, checked here
    (with huggingface_hub's own rules) before anything touches the network or the disk."""
    text = value.strip() if isinstance(value, str) else None
    valid = text is not None and len(text) <= HUB_ID_MAX_LENGTH and HUB_REPO_ID.fullmatch(text) is not None
    if valid:
        validate, refused = _hub_validator()
        try:
            validate(text)  # no '..' or '--', no name ending in '.' or '-', …
        except refused:
            valid = False
    if not valid:
        raise InputError(f"Hub model id must look like 'user/model-name' (letters, digits, '-', '_' and '.'; at "
                         f"most {HUB_ID_MAX_LENGTH} characters), got {shown(value)}")
    return text
