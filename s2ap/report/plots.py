"""The paper's figures, Orig. vs S2AP per setting, each skipped with a reason without data.

``hamming_diff.png`` (Fig. 1b/4b), ``lambda_max.png`` (Fig. 1c/2), ``gamma.png`` (Fig. 5),
``loss_diff.png`` (Fig. 3), and ``delta.png``: the per-seed paired difference in robust
accuracy with its 95% interval, Table 1's Δ. Each plot is what it collects per setting and how it draws one
panel; :func:`~s2ap.report.panels.draw_panels` does the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from s2ap.report.compare import Comparison, compare
from s2ap.report.gamma import plot_gamma
from s2ap.report.panels import draw_panels, per_setting
from s2ap.results import RUN
from s2ap.stats import verdict

if TYPE_CHECKING:
    from matplotlib.axes import Axes

Curve = tuple[np.ndarray, np.ndarray]  # mean and std per epoch
SIDES = (("Orig.", False), ("S2AP", True))  # legend label and the s2ap flag of its runs


def _mean_curve(lists: Iterable[list[float]]) -> Curve | None:
    """Element-wise mean and std over seeds; runs of different length are NaN-padded."""
    lists = [v for v in lists if v]
    if not lists:
        return None
    length = max(len(v) for v in lists)
    arr = np.full((len(lists), length), np.nan)
    for i, v in enumerate(lists):
        arr[i, : len(v)] = v
    count = np.sum(~np.isnan(arr), axis=0)
    mean = np.nanmean(arr, axis=0)
    std = np.where(count > 1, np.nanstd(arr, axis=0, ddof=0), 0.0)
    return mean, std


# --------------------------------------------------------------------------- Fig. 1b


def _hamming_diff(rows: pd.DataFrame) -> np.ndarray | None:
    orig = _mean_curve(rows.loc[~rows[RUN.s2ap], RUN.hamming])
    s2ap = _mean_curve(rows.loc[rows[RUN.s2ap], RUN.hamming])
    if orig is None or s2ap is None:
        return None
    length = min(len(orig[0]), len(s2ap[0]))
    return orig[0][:length] - s2ap[0][:length]


def _draw_diff(ax: Axes, diff: np.ndarray) -> None:
    epochs = np.arange(len(diff))
    ax.plot(epochs, diff, color="black", lw=1)
    ax.fill_between(epochs, 0, diff, where=diff >= 0, color="tab:green", alpha=0.45, interpolate=True)
    ax.fill_between(epochs, 0, diff, where=diff < 0, color="tab:red", alpha=0.45, interpolate=True)
    ax.axhline(0, color="grey", lw=0.8)


def plot_hamming_diff(df: pd.DataFrame, path: Path) -> str | None:
    """h_orig - h_s2ap per pruning epoch (Fig. 1b): green where S2AP is more stable."""
    return draw_panels(
        path,
        per_setting(df, _hamming_diff),
        _draw_diff,
        xlabel="pruning epoch",
        ylabel="h_orig − h_S2AP",
        absent="no setting has per-epoch hamming distances for both Orig. and S2AP runs",
        legend=False,
    )


# --------------------------------------------------------------------------- Fig. 1c / 2


def _curves(column: str) -> Callable[[pd.DataFrame], dict[str, Curve | None] | None]:
    """A setting's mean curve of ``column`` per side; None when neither side has one."""

    def collect(rows: pd.DataFrame) -> dict[str, Curve | None] | None:
        curves = {label: _mean_curve(rows.loc[rows[RUN.s2ap] == flag, column]) for label, flag in SIDES}
        return curves if any(c is not None for c in curves.values()) else None

    return collect


def _draw_bands(ax: Axes, curves: dict[str, Curve | None]) -> None:
    for (label, curve), color in zip(curves.items(), ("tab:blue", "tab:orange"), strict=True):
        if curve is None:
            continue
        mean, std = curve
        epochs = np.arange(len(mean))
        ax.plot(epochs, mean, label=label, color=color)
        ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2)


def plot_lambda_max(df: pd.DataFrame, path: Path) -> str | None:
    """Score-space lambda_max per pruning epoch, Orig. vs S2AP (Fig. 1c / Fig. 2)."""
    return draw_panels(
        path,
        per_setting(df, _curves(RUN.lambda_max)),
        _draw_bands,
        xlabel="pruning epoch",
        ylabel="λ_max",
        absent="no run has per-epoch lambda_max values",
    )


# --------------------------------------------------------------------------- Fig. 5: s2ap.report.gamma


# --------------------------------------------------------------------------- Fig. 3


def _loss_diffs(rows: pd.DataFrame) -> dict[str, dict[float, list[float]]] | None:
    """Per side, the loss differences measured at each rho over the setting's runs."""
    sides = {}
    for label, flag in SIDES:
        values: dict[float, list[float]] = {}
        side = rows[rows[RUN.s2ap] == flag]
        for rhos, diffs in zip(side[RUN.loss_diff_rho], side[RUN.loss_diff], strict=True):
            for rho, d in zip(rhos, diffs, strict=False):
                values.setdefault(round(rho, 12), []).append(d)
        if values:
            sides[label] = values
    return sides or None


def _draw_loss_diffs(ax: Axes, sides: dict[str, dict[float, list[float]]]) -> None:
    for label, values in sides.items():
        rhos = sorted(values)
        mean = [float(np.mean(values[r])) for r in rhos]
        std = [float(np.std(values[r], ddof=1)) if len(values[r]) > 1 else 0.0 for r in rhos]
        ax.errorbar(rhos, mean, yerr=std, marker="o", capsize=3, label=label)


def plot_loss_diff(df: pd.DataFrame, path: Path) -> str | None:
    """Score-space loss difference vs rho, Orig. vs S2AP (Fig. 3)."""
    return draw_panels(
        path,
        per_setting(df, _loss_diffs),
        _draw_loss_diffs,
        xlabel="ρ",
        ylabel="L(s+ν) − L(s)",
        absent="no run has loss-difference measurements",
    )


# --------------------------------------------------------------------------- paired Δ


def _deltas(rows: pd.DataFrame) -> Comparison | None:
    """The setting's per-seed robust-accuracy differences S2AP − Orig. (Table 1's Δ)."""
    measured = rows.dropna(subset=[RUN.robust_acc])
    c = compare(measured[~measured[RUN.s2ap]], measured[measured[RUN.s2ap]], None, RUN.robust_acc)
    return c if c.delta is not None else None


def _draw_deltas(ax: Axes, c: Comparison) -> None:
    d = c.delta
    assert d is not None
    x = np.arange(len(d.diffs))
    ax.axhline(0, color="grey", lw=0.8)
    if d.interval is not None:
        ax.axhspan(d.interval.lo, d.interval.hi, color="tab:blue", alpha=0.2, label="95% interval")
    ax.axhline(d.mean, color="tab:blue", lw=1.2, label=f"mean {d.mean:+.2f} ({verdict(d)})")
    ax.scatter(x, d.diffs, color="black", zorder=3, label="one seed")
    ax.set_xticks(x)
    ax.set_xticklabels([str(s) for s in c.seeds])
    shown = [0.0, *d.diffs, *((d.interval.lo, d.interval.hi) if d.interval else ())]
    span = (max(shown) - min(shown)) or 1.0
    ax.set_ylim(min(shown) - 0.1 * span, max(shown) + 0.6 * span)  # room for the legend above


def plot_delta(df: pd.DataFrame, path: Path) -> str | None:
    """Per-seed paired Δ robust accuracy (S2AP − Orig.) with its mean and 95% interval."""
    return draw_panels(
        path,
        per_setting(df, _deltas),
        _draw_deltas,
        xlabel="paired seed",
        ylabel="Δ robust acc. (S2AP − Orig., %)",
        absent="no setting has Orig. and S2AP runs of a common seed",
    )


PLOTS = {
    "hamming_diff.png": plot_hamming_diff,
    "lambda_max.png": plot_lambda_max,
    "gamma.png": plot_gamma,
    "loss_diff.png": plot_loss_diff,
    "delta.png": plot_delta,
}
