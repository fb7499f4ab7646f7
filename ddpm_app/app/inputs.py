"""What a user types in, checked: seeds, counts and the error that names the allowed range."""

from __future__ import annotations

import random

MAX_BATCH = 4
MAX_SEED = 2**32 - 1


class InputError(ValueError):
    """A value a user chose is out of range or missing; the message says what is allowed."""


def random_seed() -> int:
    """A fresh seed from the OS, never from (or into) a global generator."""
    return random.SystemRandom().randrange(2**31)


def resolve_seed(seed: float | int | str | None) -> int:
    """The seed to use: blank or −1 draws a random one; otherwise an integer in 0…2³²−1."""
    if seed is None or (isinstance(seed, str) and not seed.strip()):
        return random_seed()
    try:
        value = float(seed)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"seed must be a whole number in 0…{MAX_SEED}, or −1 / blank for a random one; "
                         f"got {seed!r}") from None
    if value == -1:
        return random_seed()
    if not value.is_integer() or not 0 <= value <= MAX_SEED:
        raise InputError(f"seed must be a whole number in 0…{MAX_SEED}, or −1 / blank for a random one; got {seed}")
    return int(value)
