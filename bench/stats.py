"""
Small statistics helpers (no numpy on purpose: the bench needs only the
standard library and Twisted).
"""

from __future__ import annotations

import statistics
from typing import Iterable, Sequence


def percentile(values: Sequence[float], pct: float, presorted: bool = False) -> float | None:
    """
    The C{pct}-th percentile by linear interpolation (None when empty).
    """
    if not values:
        return None
    data = values if presorted else sorted(values)
    if len(data) == 1:
        return float(data[0])
    rank = (len(data) - 1) * pct / 100.0
    low = int(rank)
    high = min(low + 1, len(data) - 1)
    return float(data[low] + (data[high] - data[low]) * (rank - low))


def median(values: Iterable[float | None]) -> float | None:
    """
    The median of the known values (None when there are none).
    """
    known = [v for v in values if v is not None]
    return float(statistics.median(known)) if known else None


def diff(a: float | None, b: float | None) -> float | None:
    """
    C{a - b}, or None when either is unknown.
    """
    if a is None or b is None:
        return None
    return a - b


def ratio(a: float | None, b: float | None) -> float | None:
    """
    C{a / b}, or None when unknown or dividing by zero.
    """
    if a is None or b is None or b == 0:
        return None
    return a / b


__all__ = ["diff", "median", "percentile", "ratio"]
