"""Numbers as JSON brings them: its integers have any number of digits."""

from __future__ import annotations

import math


def finite_number(v: object) -> bool:
    """Whether v is a JSON number (an int or a float, not a boolean) that a
    float holds and that is finite: math.isfinite of an int past 1.8e308
    raises OverflowError, and float() of one too."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False
