"""Percentiles and summaries of latency samples (milliseconds)."""

from __future__ import annotations

from collections.abc import Sequence

PERCENTILES = (50, 90, 99)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); `sorted_values` must be sorted."""
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    s = sorted(values)
    out = {f"p{p}": round(percentile(s, p), 4) for p in PERCENTILES}
    out["min"] = round(s[0], 4) if s else float("nan")
    out["max"] = round(s[-1], 4) if s else float("nan")
    out["mean"] = round(sum(s) / len(s), 4) if s else float("nan")
    out["n"] = len(s)
    return out
