"""How the app writes a number for people: one style in status lines, equations and picture labels alike."""

from __future__ import annotations

import math

SUPERSCRIPTS = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
SMALL, LARGE = 1e-3, 1e5  # below SMALL and from LARGE up: scientific notation


def number(v: float, digits: int = 4, latex: bool = False) -> str:
    """``v`` with ``digits`` significant digits, in scientific notation below 10⁻³ and from 10⁵ up: ᾱ_t near T is
    4.036×10⁻⁵, not 0.0000 (``latex``: 4.036\\times10^{-5}, for inside $…$). A value just off 1 gets the fewest
    decimals that tell it from 1 (0.99997 and 1.00005, not 1 nor 0.9999699)."""
    if v == 0 or not math.isfinite(v):
        return f"{v:g}"
    if SMALL <= abs(v) < LARGE:
        text = f"{v:.{digits}g}"
        if "e" not in text:
            decimals = digits
            while abs(float(text)) == 1 and abs(v) != 1 and decimals < 15:
                text, decimals = f"{v:.{decimals}f}".rstrip("0").rstrip("."), decimals + 1
            return text
    mantissa, exponent = f"{v:.{digits - 1}e}".split("e")
    if latex:
        return f"{mantissa}\\times10^{{{int(exponent)}}}"
    return f"{mantissa}×10{str(int(exponent)).translate(SUPERSCRIPTS)}"
