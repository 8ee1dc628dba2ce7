"""Orig. vs S2AP in one setting, runs paired by seed: what the comparison tables and the Δ
figure show.

Each side is summarised over its seeds (mean ± sample std; a single seed shows its binomial
95% interval instead, since it has no spread). The difference Δ = S2AP − Orig. is taken per
seed, over the seeds both sides ran, and carries a 95% Student t-interval across seeds
(:func:`s2ap.stats.paired`); "not resolved" when that interval contains 0. The interval is
over seeds on the same test points: it measures seed-to-seed variation, not the sampling
error of the test set itself (each side's Wilson interval shows that).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from s2ap.results import RUN
from s2ap.stats import ONE_SEED, Paired, mean_std, paired, verdict

DASH = "–"


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


@dataclass(frozen=True)
class Comparison:
    orig: Side | None
    s2ap: Side | None
    delta: Paired | None  # robust accuracy, S2AP − Orig., over the seeds both ran
    seeds: tuple[int, ...] = ()  # those seeds, in the order of delta.diffs


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
    interval = None
    lo, hi = f"{robust_col}_lo", f"{robust_col}_hi"
    if len(robust) == 1 and lo in rows and hi in rows and rows[lo].notna().all() and rows[hi].notna().all():
        interval = (float(rows[lo].mean()), float(rows[hi].mean()))
    pre = None
    if s2ap and RUN.best_mask_before_s2ap in rows.columns and rows[RUN.best_mask_before_s2ap].notna().any():
        known = rows[RUN.best_mask_before_s2ap].dropna()
        pre = (int(known.astype(bool).sum()), len(rows))
    return Side(len(robust), c_mean, c_std, r_mean, r_std, interval, pre)


def compare(orig: pd.DataFrame, s2ap: pd.DataFrame, clean_col: str | None, robust_col: str) -> Comparison:
    """Both sides of one setting and their paired robust-accuracy difference."""
    a, b = (
        per_seed(orig, robust_col) if not orig.empty else {},
        per_seed(s2ap, robust_col) if not s2ap.empty else {},
    )
    common = sorted(set(a) & set(b))
    delta = paired([a[s] for s in common], [b[s] for s in common]) if common else None
    sides = side(orig, clean_col, robust_col, False), side(s2ap, clean_col, robust_col, True)
    return Comparison(*sides, delta, tuple(common))


def _pm(mean: float, std: float | None) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def format_side(s: Side | None, show_clean: bool) -> str:
    """``clean ± std / robust ± std (k seeds)``; one seed: ``clean / robust [lo, hi] (1 seed)``."""
    if s is None:
        return DASH
    robust = _pm(s.robust, s.robust_std)
    if s.robust_interval is not None:
        robust += f" [{s.robust_interval[0]:.2f}, {s.robust_interval[1]:.2f}]"
    text = f"{_pm(s.clean, s.clean_std)} / {robust}" if show_clean and s.clean is not None else robust
    text += f" ({s.seeds} seed{'s' if s.seeds != 1 else ''})"
    if s.pre_s2ap is not None:
        text += f" ({s.pre_s2ap[0]}/{s.pre_s2ap[1]} pre-S2AP masks)"
    return text


def format_delta(c: Comparison) -> str:
    """``+4.00 [+1.52, +6.48] (3 seeds)``, with "not resolved" when the interval holds 0."""
    d = c.delta
    if d is None:
        return DASH if c.orig is None or c.s2ap is None else "no common seeds"
    if d.interval is None:
        return f"{d.mean:+.2f} ({ONE_SEED})"
    text = f"{d.mean:+.2f} [{d.interval.lo:+.2f}, {d.interval.hi:+.2f}] ({d.seeds} seeds)"
    said = verdict(d)
    return text + (f" {said}" if said != "higher" and said != "lower" else "")
