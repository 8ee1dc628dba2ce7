"""The statistics behind every reported number: binomial intervals for an accuracy on n points,
and paired intervals for a difference across seeds. Pure Python plus scipy's t quantile; no torch.

* :func:`wilson` - the 95% Wilson score interval of k correct out of n (Wilson, 1927). Unlike
  the normal approximation it stays inside [0, 1] and is not zero-width at 0/n or n/n.
* :func:`paired` - runs paired by seed, the per-seed differences d_i = b_i - a_i, their mean
  and a 95% Student t-interval with m - 1 degrees of freedom. With few seeds the t-interval is
  the honest choice: a percentile bootstrap of 5 pairs has only 126 distinct resamples and its
  interval is too narrow (it behaves like a z-interval with the ddof=0 spread). One seed has no
  spread and no interval.
* :func:`verdict` - "not resolved" when the interval contains 0, so a difference is only ever
  called a gain or a loss when the interval says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import t as student_t

LEVEL = 0.95
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
NOT_RESOLVED = "not resolved"
ONE_SEED = "one seed: no spread"


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95% interval."""

    value: float
    lo: float
    hi: float

    def contains(self, x: float) -> bool:
        return self.lo <= x <= self.hi

    def overlaps(self, other: Interval) -> bool:
        return self.lo <= other.hi and other.lo <= self.hi


def wilson(k: int, n: int, z: float = Z95) -> Interval:
    """The Wilson score interval of ``k`` successes in ``n`` trials (95% by default)."""
    if n <= 0:
        raise ValueError(f"need at least one point, got n={n}")
    if not 0 <= k <= n:
        raise ValueError(f"k must be in 0..{n}, got {k}")
    p = k / n
    z2 = z * z
    centre = (k + z2 / 2) / (n + z2)
    half = z / (n + z2) * math.sqrt(k * (n - k) / n + z2 / 4)
    # Exact ends at 0/n and n/n (the formula gives them up to rounding).
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return Interval(p, lo, hi)


def accuracy_interval(accuracy: float, n: int) -> Interval:
    """:func:`wilson` for an accuracy given as a fraction of ``n`` points."""
    return wilson(round(accuracy * n), n)


@dataclass(frozen=True)
class Paired:
    """Per-seed differences ``b - a`` of runs paired by seed."""

    diffs: tuple[float, ...]
    mean: float
    std: float | None  # sample std (ddof=1); None for one seed
    interval: Interval | None  # 95% t-interval of the mean; None for one seed

    @property
    def seeds(self) -> int:
        return len(self.diffs)


def t_quantile(df: int, level: float = LEVEL) -> float:
    """Student t's two-sided ``level`` quantile with ``df`` degrees of freedom."""
    return float(student_t.ppf(0.5 + level / 2, df))


def paired(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Paired:
    """Mean of ``b_i - a_i`` over pairs with its t-interval (``a`` and ``b`` in seed order)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need the same positive number of runs on each side, got {len(a)} and {len(b)}")
    diffs = tuple(float(y) - float(x) for x, y in zip(a, b, strict=True))
    m = len(diffs)
    mean = sum(diffs) / m
    if m == 1:
        return Paired(diffs, mean, None, None)
    std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (m - 1))
    half = t_quantile(m - 1, level) * std / math.sqrt(m)
    return Paired(diffs, mean, std, Interval(mean, mean - half, mean + half))


def verdict(result: Paired) -> str:
    """What the interval allows one to say about the difference."""
    if result.interval is None:
        return ONE_SEED
    if result.interval.contains(0.0):
        return NOT_RESOLVED
    return "higher" if result.mean > 0 else "lower"


def describe(label: str, value: float | None, lo: float | None, hi: float | None, n: int | None) -> str:
    """One accuracy as the CLIs print it: ``AutoAttack 0.81 [0.57, 0.93] n=16``."""
    if value is None or value != value:  # None or NaN: not measured
        return f"{label} not measured"
    if lo is None or hi is None or not n:
        return f"{label} {value:.2f} (no point count)"
    return f"{label} {value:.2f} [{lo:.2f}, {hi:.2f}] n={n}"


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample std (ddof=1; None for a single value)."""
    if not values:
        raise ValueError("no values")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


__all__ = [
    "LEVEL",
    "NOT_RESOLVED",
    "ONE_SEED",
    "Interval",
    "Paired",
    "accuracy_interval",
    "describe",
    "mean_std",
    "paired",
    "t_quantile",
    "verdict",
    "wilson",
]
