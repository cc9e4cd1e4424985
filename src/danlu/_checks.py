"""Argument checks shared by the tricks: one wording for "name, value, allowed range, fix".

Python's ``bool`` is an ``int`` (``True == 1``), so a flag passed where a count is meant would
otherwise be accepted silently; both checks refuse it.
"""

from __future__ import annotations

import math
from typing import Any


def check_int(name: str, value: Any, low: int, high: int | None = None, fix: str = "") -> int:
    """``value`` if it is an int (not a bool) in ``[low, high]``, else a ValueError naming
    ``name``, the value, the range and ``fix``."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    if not (ok and value >= low and (high is None or value <= high)):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        hint = f"; {fix}" if fix else ""
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}{hint}")
    return value


def check_ignore_index(value: Any) -> int:
    """``value`` if it is an int (any sign, not a bool), else a TypeError at construction
    (``F.cross_entropy`` only refuses a bool at the first loss, deep in a training step)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"ignore_index must be an int (the label left out of the loss, -100 by default), "
            f"got {value!r}"
        )
    return value


def check_texts(name: str, texts: Any) -> None:
    """A TypeError when ``texts`` is one ``str`` where a sequence of texts is meant (iterating
    a str would silently treat each character as a text)."""
    if isinstance(texts, str):
        raise TypeError(f"{name} must be a sequence of str, got one str: wrap it in a list")


def check_number(
    name: str,
    value: Any,
    low: float,
    high: float = math.inf,
    *,
    open_low: bool = False,
    open_high: bool = False,
    fix: str = "",
) -> float:
    """``float(value)`` if it is a real number (not a bool, not NaN) in the interval, else a
    ValueError naming ``name``, the value, the interval and ``fix``. ``high=inf`` with
    ``open_high=False`` admits ``float('inf')``."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)
    if ok:
        ok = (value > low if open_low else value >= low) and (
            value < high if open_high else value <= high
        )
    if not ok:
        interval = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
        hint = f"; {fix}" if fix else ""
        raise ValueError(f"{name} must be in {interval} (a real number), got {value!r}{hint}")
    return float(value)


def check_temperature(temperature: Any, hint: str) -> float:
    """``float(temperature)`` if it is a finite number > 0 (not a bool), else a ValueError
    naming the value and ``hint`` (the usual setting)."""
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not (math.isfinite(temperature) and temperature > 0)
    ):
        raise ValueError(f"temperature must be a finite number > 0 ({hint}), got {temperature!r}")
    return float(temperature)
