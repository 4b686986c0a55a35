"""Percentiles, one definition for the rig, the fleet, the demo and the benchmarks."""

from __future__ import annotations

import math
from collections.abc import Iterable


def percentile(values: Iterable[float], p: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least ``p`` % of the
    values at or below it (p in 0..100). None for no values."""
    v = sorted(values)
    if not v:
        return None
    if not 0 <= p <= 100:
        raise ValueError(f"percentile: p must be in 0..100, got {p}")
    return v[max(0, math.ceil(p / 100 * len(v)) - 1)]


def percentiles(values: Iterable[float], ndigits: int = 1) -> dict[str, float]:
    """p50, p90, p99, max and n of ``values`` (rounded); {} for no values."""
    v = sorted(values)
    if not v:
        return {}
    out: dict[str, float] = {}
    for p in (50, 90, 99):
        x = percentile(v, p)
        assert x is not None
        out[f"p{p}"] = round(x, ndigits)
    out["max"] = round(v[-1], ndigits)
    out["n"] = len(v)
    return out
