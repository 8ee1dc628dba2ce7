"""Orig. vs S2AP in one setting, runs paired by seed: what the comparison tables and the Δ
figure show.

Each side is summarised over its seeds (mean ± sample std; a single seed shows its binomial
95% interval instead, since it has no spread) with its test-point count. The difference
Δ = S2AP − Orig. is taken over the seeds both sides ran. With both sides' per-point outcomes
(``predictions.parquet``, a run row's :data:`POINTS`) it is paired by seed and test point and
its 95% interval counts both the seeds and the test points (:func:`s2ap.stats.paired_points`;
one seed: the paired interval over points with McNemar's test). Without them it falls back to
the per-seed values and a Student t-interval across seeds (:func:`s2ap.stats.paired`), which
leaves the test points' own noise out and says so. "not resolved" when the interval contains 0.
Two sides measured with different attacks, PGD step counts or test points get no Δ at all:
"not comparable" and why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from s2ap.results import RUN
from s2ap.stats import ONE_SEED, Paired, PointPaired, mean_std, paired, paired_points, verdict

DASH = "–"
# A run row's robust outcome per headline test point, {index: 1.0 | 0.0} (s2ap.report.load).
POINTS = "robust_points"


@dataclass(frozen=True)
class Side:
    """One side of a comparison over its seeds (accuracies in %)."""

    seeds: int
    clean: float | None
    clean_std: float | None  # None with a single seed
    robust: float
    robust_std: float | None
    robust_interval: tuple[float, float] | None  # a single seed's binomial 95% interval
    pre_s2ap: tuple[int, int] | None = None  # (runs whose mask predates S2AP, runs known)
    clean_interval: tuple[float, float] | None = None  # a single seed's, for the clean side
    points: tuple[int, ...] = ()  # the test-point counts its runs were measured on


@dataclass(frozen=True)
class Comparison:
    orig: Side | None
    s2ap: Side | None
    delta: Paired | PointPaired | None  # robust accuracy, S2AP − Orig., over the seeds both ran
    seeds: tuple[int, ...] = ()  # those seeds, in the order of delta.diffs
    not_comparable: str | None = None  # why there is no Δ although both sides ran


def per_seed(rows: pd.DataFrame, col: str) -> dict[int, float]:
    """``col`` per seed (the mean when a seed ran more than once)."""
    return {int(k): float(v) for k, v in rows.groupby(RUN.seed)[col].mean().items()}


def side(rows: pd.DataFrame, clean_col: str | None, robust_col: str, s2ap: bool) -> Side | None:
    if rows.empty:
        return None
    robust = per_seed(rows, robust_col)
    r_mean, r_std = mean_std(list(robust.values()))
    c_mean = c_std = None
    if clean_col:
        c_mean, c_std = mean_std(list(per_seed(rows, clean_col).values()))
    interval = _single_interval(rows, robust_col) if len(robust) == 1 else None
    clean_interval = _single_interval(rows, clean_col) if clean_col and len(robust) == 1 else None
    points = tuple(sorted({int(n) for n in rows.get(f"{robust_col}_n", pd.Series()).dropna()}))
    pre = None
    if s2ap and RUN.best_mask_before_s2ap in rows.columns and rows[RUN.best_mask_before_s2ap].notna().any():
        known = rows[RUN.best_mask_before_s2ap].dropna()
        pre = (int(known.astype(bool).sum()), len(rows))
    return Side(len(robust), c_mean, c_std, r_mean, r_std, interval, pre, clean_interval, points)


def _single_interval(rows: pd.DataFrame, col: str) -> tuple[float, float] | None:
    lo, hi = f"{col}_lo", f"{col}_hi"
    if lo in rows and hi in rows and rows[lo].notna().all() and rows[hi].notna().all():
        return float(rows[lo].mean()), float(rows[hi].mean())
    return None


def _values(rows: pd.DataFrame, col: str) -> set[object]:
    return set(rows[col].dropna()) if col in rows.columns else set()


def incomparable(orig: pd.DataFrame, s2ap: pd.DataFrame, robust_col: str) -> str | None:
    """Why the two sides' ``robust_col`` cannot be subtracted (None when they can): another
    attack, another PGD step count, or other test points."""
    attack_col = RUN.robust_attack if robust_col == RUN.robust_acc else RUN.mask_robust_attack
    attacks = _values(orig, attack_col), _values(s2ap, attack_col)
    if attacks[0] != attacks[1] or len(attacks[0]) > 1:
        return f"attack {'/'.join(sorted(map(str, attacks[0])))} vs {'/'.join(sorted(map(str, attacks[1])))}"
    steps = _values(orig, RUN.pgd_steps), _values(s2ap, RUN.pgd_steps)
    if "pgd" in attacks[0] and (steps[0] != steps[1] or len(steps[0]) > 1):
        return f"PGD steps {'/'.join(map(str, sorted(steps[0])))} vs {'/'.join(map(str, sorted(steps[1])))}"
    n_col = f"{robust_col}_n"
    points = _values(orig, n_col), _values(s2ap, n_col)
    if points[0] != points[1] or len(points[0]) > 1:
        return (
            f"test points {'/'.join(map(str, sorted(points[0])))} vs {'/'.join(map(str, sorted(points[1])))}"
        )
    return None


def _outcomes(rows: pd.DataFrame) -> dict[int, dict[int, float]] | None:
    """Per seed, the mean outcome per test point (in %), or None when a run lacks them."""
    if POINTS not in rows.columns or rows[POINTS].isna().any():
        return None
    out: dict[int, dict[int, float]] = {}
    for seed, grp in rows.groupby(RUN.seed):
        frame = pd.DataFrame(list(grp[POINTS]))
        out[int(seed)] = {int(k): float(v) * 100.0 for k, v in frame.mean().items()}
    return out


def compare(orig: pd.DataFrame, s2ap: pd.DataFrame, clean_col: str | None, robust_col: str) -> Comparison:
    """Both sides of one setting and their paired robust-accuracy difference."""
    sides = side(orig, clean_col, robust_col, False), side(s2ap, clean_col, robust_col, True)
    a, b = (
        per_seed(orig, robust_col) if not orig.empty else {},
        per_seed(s2ap, robust_col) if not s2ap.empty else {},
    )
    common = sorted(set(a) & set(b))
    if not common:
        return Comparison(*sides, None, ())
    reason = incomparable(orig, s2ap, robust_col)
    if reason is not None:
        return Comparison(*sides, None, tuple(common), reason)
    pa_, pb = (_outcomes(part) for part in (orig, s2ap)) if robust_col == RUN.robust_acc else (None, None)
    if pa_ is None or pb is None:
        return Comparison(*sides, paired([a[s] for s in common], [b[s] for s in common]), tuple(common))
    index = sorted(pa_[common[0]])
    if any(sorted(side_[s]) != index for side_ in (pa_, pb) for s in common):
        return Comparison(*sides, None, tuple(common), "other test points")
    outcomes = [np.array([[side_[s][i] for i in index] for s in common]) for side_ in (pa_, pb)]
    return Comparison(*sides, paired_points(outcomes[0], outcomes[1]), tuple(common))


def _pm(mean: float, std: float | None) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def format_side(s: Side | None, show_clean: bool) -> str:
    """``clean ± std / robust ± std (k seeds, n=360)``; one seed: ``clean [lo, hi] / robust
    [lo, hi] (1 seed, n=360)``."""
    if s is None:
        return DASH
    robust = _pm(s.robust, s.robust_std) + _bracket(s.robust_interval)
    if show_clean and s.clean is not None:
        text = f"{_pm(s.clean, s.clean_std)}{_bracket(s.clean_interval)} / {robust}"
    else:
        text = robust
    points = f", n={'/'.join(map(str, s.points))}" if s.points else ""
    text += f" ({s.seeds} seed{'s' if s.seeds != 1 else ''}{points})"
    if s.pre_s2ap is not None:
        text += f" ({s.pre_s2ap[0]}/{s.pre_s2ap[1]} pre-S2AP masks)"
    return text


def _bracket(interval: tuple[float, float] | None) -> str:
    return "" if interval is None else f" [{interval[0]:.2f}, {interval[1]:.2f}]"


def format_delta(c: Comparison) -> str:
    """``+4.00 [+1.52, +6.48] (3 seeds × 360 points)``, "not resolved" when the interval holds
    0, "not comparable: <why>" when the sides were measured differently."""
    d = c.delta
    if c.not_comparable is not None:
        return f"not comparable: {c.not_comparable}"
    if d is None:
        return DASH if c.orig is None or c.s2ap is None else "no common seeds"
    seeds = f"{d.seeds} seed{'s' if d.seeds != 1 else ''}"
    if isinstance(d, PointPaired):
        what = f"{seeds} × {d.points} points" + (
            f", McNemar p={d.mcnemar_p:.2g}" if d.mcnemar_p is not None else ""
        )
    else:
        what = f"{seeds}, across seeds only"
    if d.interval is None:
        why = (
            f"{ONE_SEED}; no per-point outcomes" if isinstance(d, Paired) else f"{what}; no discordant points"
        )
        return f"{d.mean:+.2f} ({why})"
    text = f"{d.mean:+.2f} [{d.interval.lo:+.2f}, {d.interval.hi:+.2f}] ({what})"
    said = verdict(d)
    return text + (f" {said}" if said != "higher" and said != "lower" else "")
