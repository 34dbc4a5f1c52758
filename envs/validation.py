"""Keyword checks that fail with one line naming the bad value and what is allowed."""

from __future__ import annotations

import numbers
from typing import TypeVar

T = TypeVar("T")


def check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """Return ``value`` as an int if it is a whole number in ``[low, high]``, else raise ValueError."""
    allowed = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}={value!r} is invalid: must be {allowed}")
    number = int(value)
    if number < low or (high is not None and number > high):
        raise ValueError(f"{name}={value!r} is invalid: must be {allowed}")
    return number


def check_fraction(name: str, value: object, low: float, high: float) -> float:
    """Return ``value`` as a float if it is a real number in ``[low, high]``, else raise ValueError."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not real or not low <= float(value) <= high:  # type: ignore[arg-type]  # a Real here; NaN fails the range
        raise ValueError(f"{name}={value!r} is invalid: must be a number from {low} to {high}")
    return float(value)  # type: ignore[arg-type]


def check_choice(name: str, value: object, allowed: tuple[T, ...]) -> T:
    """Return ``value`` if it is one of ``allowed`` (same type, equal), else raise ValueError listing them."""
    for option in allowed:
        if type(value) is type(option) and value == option:
            return option
    raise ValueError(f"{name}={value!r} is invalid: allowed are {', '.join(repr(a) for a in allowed)}")
