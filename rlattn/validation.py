"""Argument checks that fail with one line naming the bad value and what is allowed.

Every rlattn module checks its arguments with these two; envs/validation.py holds the same integer
check for the envs (neither package may import the other).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence


def check_int(name: str, value: object, low: int = 1, high: int | None = None, disabled: int | None = None) -> int:
    """``value`` as an int if it is a whole number in ``[low, high]`` (or equals ``disabled``), else ValueError."""
    if disabled is not None and value == disabled and not isinstance(value, bool):
        return disabled
    allowed = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"
    if disabled is not None:
        allowed += f" or {disabled} to disable"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}={value!r} is invalid: must be {allowed}")
    number = int(value)
    if number < low or (high is not None and number > high):
        raise ValueError(f"{name}={value!r} is invalid: must be {allowed}")
    return number


def check_choice(name: str, value: object, allowed: Sequence[str]) -> str:
    """``value`` if it is one of ``allowed``, else a one-line ValueError listing them."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}={value!r} is invalid: allowed are {', '.join(allowed)}")
    return value
