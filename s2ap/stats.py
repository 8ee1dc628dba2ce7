"""The statistics behind every reported number: binomial intervals for an accuracy on n points,
and paired intervals for a difference across seeds and test points. Python, numpy and scipy's t
and binomial distributions; no torch.

* :func:`wilson` - the 95% Wilson score interval of k correct out of n (Wilson, 1927). Unlike
  the normal approximation it stays inside [0, 1] and is not zero-width at 0/n or n/n.
* :func:`paired` - runs paired by seed, the per-seed differences d_i = b_i - a_i, their mean
  and a 95% Student t-interval with m - 1 degrees of freedom. With few seeds the t-interval is
  the honest choice: a percentile bootstrap of 5 pairs has only 126 distinct resamples and its
  interval is too narrow (it behaves like a z-interval with the ddof=0 spread). One seed has no
  spread and no interval.
* :func:`paired_points` - runs paired by seed *and* test point: the outcomes d_si = b_si - a_si
  of m seeds on the same n points. Its interval counts both sources of noise: which seeds ran
  and which test points were drawn. Two-way random effects (seed, point, their interaction):
  Var(mean) = s2_seed/m + s2_point/n + s2_resid/(m n), estimated by the ANOVA mean squares as
  (MS_seed + max(MS_point - MS_resid, 0)) / (m n) - the between-seed variance of the per-seed
  means plus the point component, which the seeds share and so cannot average away - with
  Satterthwaite's degrees of freedom (close to m - 1 when seeds dominate, as the t-interval
  across seeds; large when test points dominate, as a z-interval). A two-level bootstrap was
  not used: with 3-5 seeds it undercovers for the reason given above. One seed: the paired
  interval over test points and McNemar's exact test of the discordant points.
* :func:`verdict` - "not resolved" when the interval contains 0, so a difference is only ever
  called a gain or a loss when the interval says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest
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


@dataclass(frozen=True)
class PointPaired:
    """``b - a`` paired by seed and test point (see :func:`paired_points`); ``diffs`` are the
    per-seed means, so it reads like :class:`Paired`."""

    diffs: tuple[float, ...]
    mean: float
    std: float | None  # sample std of the per-seed means; None for one seed
    interval: Interval | None  # 95%, counting seeds and test points; None without discordant points
    points: int  # test points both sides share
    df: float  # Satterthwaite degrees of freedom of the interval
    mcnemar_p: float | None = None  # one seed: McNemar's exact two-sided p

    @property
    def seeds(self) -> int:
        return len(self.diffs)


def paired_points(
    a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], level: float = LEVEL
) -> PointPaired:
    """Mean of ``b - a`` over seeds and test points, with an interval over both.

    ``a[s][i]`` / ``b[s][i]``: outcome (1 correct, 0 not; a mean when a seed ran twice) of
    seed ``s`` on test point ``i``, the same points in the same order for every seed and side.
    """
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if d.ndim != 2 or d.size == 0 or np.asarray(a).shape != np.asarray(b).shape:
        raise ValueError(
            f"need seeds x points outcomes of the same shape, got {np.shape(a)} and {np.shape(b)}"
        )
    m, n = d.shape
    mean = float(d.mean())
    seed_means, point_means = d.mean(axis=1), d.mean(axis=0)
    std = float(seed_means.std(ddof=1)) if m > 1 else None
    # Mean squares with their degrees of freedom; a component estimated below the residual is
    # taken as 0 (a variance is never negative), so the estimate is at least MS_resid / (m n).
    ms_seed = n * float(((seed_means - mean) ** 2).sum()) / (m - 1) if m > 1 else 0.0
    ms_point = m * float(((point_means - mean) ** 2).sum()) / (n - 1) if n > 1 else 0.0
    resid = d - seed_means[:, None] - point_means[None, :] + mean
    df_resid = (m - 1) * (n - 1)
    ms_resid = float((resid**2).sum()) / df_resid if df_resid else 0.0
    seed_on, point_on = ms_seed > ms_resid, ms_point > ms_resid
    # The variance (times m n) as a sum of mean squares: coefficient, mean square, its df.
    terms = [(1.0 - seed_on - point_on, ms_resid, df_resid), (1.0, ms_seed, m - 1), (1.0, ms_point, n - 1)]
    terms = [t for t, on in zip(terms, (True, seed_on, point_on), strict=True) if on and t[2] > 0]
    variance = sum(c * ms for c, ms, _ in terms) / (m * n)
    denom = sum((c * ms) ** 2 / k for c, ms, k in terms)
    df = (variance * m * n) ** 2 / denom if denom > 0 else float("inf")
    p_value = None
    if m == 1:
        gained, lost = int((d[0] > 0).sum()), int((d[0] < 0).sum())
        p_value = float(binomtest(gained, gained + lost).pvalue) if gained + lost else 1.0
    interval = None
    if variance > 0:
        half = (Z95 if math.isinf(df) else t_quantile(max(df, 1.0), level)) * math.sqrt(variance)
        interval = Interval(mean, mean - half, mean + half)
    elif m > 1 or np.any(d):  # no spread at all: the one estimate, exactly
        interval = Interval(mean, mean, mean)
    return PointPaired(tuple(float(x) for x in seed_means), mean, std, interval, n, df, p_value)


def verdict(result: Paired | PointPaired) -> str:
    """What the interval allows one to say about the difference."""
    if result.interval is None:
        return ONE_SEED if isinstance(result, Paired) else NOT_RESOLVED
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
    "PointPaired",
    "accuracy_interval",
    "describe",
    "mean_std",
    "paired",
    "paired_points",
    "t_quantile",
    "verdict",
    "wilson",
]
