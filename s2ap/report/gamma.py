"""The gamma sensitivity figure (Fig. 5), drawn so that it cannot mislead.

Per setting two panels side by side:

* **validation** robust accuracy (``final_val_pgd_acc``) against gamma, each gamma's mean over
  seeds with its 95% interval, and the gamma that :func:`~s2ap.report.selection.select_gamma`
  picks marked: the selection reads the validation column only;
* **test** robust accuracy (``robust_acc``) against gamma, the same way, titled as never used
  to select.

The interval of a gamma: a Student t-interval across its seeds (two or more), else the run's
own 95% Wilson interval on its points. Orig. is a horizontal line with its interval as a band.
The y-axis spans every interval shown and at least twice the widest interval, so a difference
smaller than the noise never fills the panel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from s2ap.report.load import PANEL_KEY
from s2ap.report.panels import Key, _pyplot, title
from s2ap.report.selection import SELECTION_COLUMN, select_gamma
from s2ap.results import RUN
from s2ap.stats import t_quantile

if TYPE_CHECKING:
    from matplotlib.axes import Axes

PANELS = (("validation", SELECTION_COLUMN), ("test", RUN.robust_acc))
# What a control arm's method label carries (s2ap.report.load._arm_suffix), as the legend says it.
ARM_NAMES = (
    ("+AWP-prune", "weight perturbation in the search"),
    ("+random-dir", "random direction"),
    ("+plain-ft", "plain finetuning"),
)
TITLES = {"validation": "validation: selects γ", "test": "test: never used to select γ"}


@dataclass(frozen=True)
class Estimate:
    mean: float
    lo: float | None  # 95% interval; None when unknown
    hi: float | None
    seeds: int


def estimate(rows: pd.DataFrame, col: str) -> Estimate | None:
    """Mean of ``col`` over seeds with its 95% interval (t across seeds, or one run's Wilson)."""
    if col not in rows.columns:
        return None
    values = rows.groupby(RUN.seed)[col].mean().dropna()
    if values.empty:
        return None
    m, mean = len(values), float(values.mean())
    if m > 1:
        half = t_quantile(m - 1) * float(values.std(ddof=1)) / math.sqrt(m)
        return Estimate(mean, mean - half, mean + half, m)
    lo, hi = f"{col}_lo", f"{col}_hi"
    if lo in rows.columns and hi in rows.columns and rows[lo].notna().all() and rows[hi].notna().all():
        return Estimate(mean, float(rows[lo].mean()), float(rows[hi].mean()), 1)
    return Estimate(mean, None, None, 1)


@dataclass(frozen=True)
class GammaPanel:
    """One setting's data: per panel the estimates per gamma and Orig.'s, and the mark."""

    key: Key
    points: dict[str, dict[float, Estimate]]
    orig: dict[str, Estimate | None]
    selected: float | None  # the gamma chosen on validation; None: nothing to choose among
    rule: str  # how the marked gamma was chosen

    @property
    def label(self) -> str:
        """The perturbed series' name: S2AP, or the control arm this setting's runs are."""
        return series_label(str(self.key[2]))


def series_label(method: str) -> str:
    """ "S2AP" for the paper's arm; a control arm (its suffix on the method label) by name."""
    names = [name for suffix, name in ARM_NAMES if suffix in method]
    return "S2AP" + (f" ({', '.join(names)})" if names else "")


def gamma_panel(key: Key, rows: pd.DataFrame) -> GammaPanel | None:
    """The figure's data for one setting (None without an S2AP run of positive gamma)."""
    s2ap = rows[rows[RUN.s2ap] & rows[RUN.gamma].notna() & (rows[RUN.gamma] > 0)]
    if s2ap.empty:
        return None
    gammas = sorted(float(g) for g in s2ap[RUN.gamma].unique())
    if len(gammas) == 1:
        selected, rule = gammas[0], "the only γ (fixed in advance)"
    else:
        # select_gamma sees the validation column only: the test columns are dropped first.
        _, selected = select_gamma(s2ap[[RUN.seed, RUN.gamma, *_validation(s2ap)]])
        has_val = SELECTION_COLUMN in s2ap.columns and s2ap[SELECTION_COLUMN].notna().any()
        rule = "selected on validation" if has_val else "smallest γ (no validation values)"
    points = {
        name: {g: e for g in gammas if (e := estimate(s2ap[s2ap[RUN.gamma] == g], col)) is not None}
        for name, col in PANELS
    }
    orig = rows[~rows[RUN.s2ap]]
    return GammaPanel(key, points, {name: estimate(orig, col) for name, col in PANELS}, selected, rule)


def _validation(rows: pd.DataFrame) -> list[str]:
    return [c for c in rows.columns if c == SELECTION_COLUMN]


def y_limits(estimates: list[Estimate]) -> tuple[float, float]:
    """Every interval's ends in view, and a span of at least twice the widest interval (and at
    least one point), centred on the data: a gap below the noise never fills the panel."""
    lows = [e.lo if e.lo is not None else e.mean for e in estimates]
    highs = [e.hi if e.hi is not None else e.mean for e in estimates]
    widest = max((e.hi - e.lo for e in estimates if e.lo is not None and e.hi is not None), default=0.0)
    lo, hi = min(lows), max(highs)
    span = max(hi - lo, 2 * widest, 1.0) * 1.15
    centre = (lo + hi) / 2
    return centre - span / 2, centre + span / 2


def _draw(ax: Axes, panel: GammaPanel, name: str) -> None:
    points, orig = panel.points[name], panel.orig[name]
    shown = list(points.values()) + ([orig] if orig is not None else [])
    if points:
        gs = np.array(sorted(points))
        est = [points[g] for g in gs]
        mean = np.array([e.mean for e in est])
        err = np.array(
            [
                [e.mean - e.lo if e.lo is not None else 0.0 for e in est],
                [e.hi - e.mean if e.hi is not None else 0.0 for e in est],
            ]
        )
        seeds = "/".join(str(s) for s in sorted({e.seeds for e in est}))
        label = f"{panel.label}, 95% interval ({seeds} seeds)"
        ax.errorbar(gs, mean, yerr=err, marker="o", capsize=3, label=label)
    if orig is not None:
        ax.axhline(orig.mean, color="grey", ls="--", label="Orig.")
        if orig.lo is not None and orig.hi is not None:
            ax.axhspan(orig.lo, orig.hi, color="grey", alpha=0.15)
    if panel.selected is not None:
        ax.axvline(panel.selected, color="tab:red", lw=1, label=f"γ={panel.selected:g}: {panel.rule}")
    if shown:
        ax.set_ylim(*y_limits(shown))
    ax.set_xscale("log")
    ax.set_xlabel("γ")
    ax.set_ylabel(f"{name} robust accuracy (%)")
    ax.set_title(f"{title(panel.key)}\n{TITLES[name]}", fontsize=8)
    ax.legend(fontsize=7)


def plot_gamma(df: pd.DataFrame, path: Path) -> str | None:
    """Robust accuracy against gamma per setting: validation (selects) and test (never
    selects) side by side, 95% intervals, the selected gamma marked."""
    if RUN.gamma not in df.columns:
        return "the table has no gamma column"
    panels = [
        p
        for key, rows in df.dropna(subset=[RUN.robust_acc]).groupby(PANEL_KEY, sort=True)
        if (p := gamma_panel(tuple(key), rows)) is not None
    ]
    if not panels:
        return "no S2AP run with a positive gamma and a robust accuracy"
    plt = _pyplot()
    fig, axes = plt.subplots(len(panels), 2, figsize=(9.0, 3.4 * len(panels)), squeeze=False)
    for row, panel in zip(axes, panels, strict=True):
        for ax, (name, _) in zip(row, PANELS, strict=True):
            _draw(ax, panel, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
