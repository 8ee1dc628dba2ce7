"""The skeleton every figure of the report shares: one panel per setting.

A setting is a (model, dataset, method, sparsity) cell. A figure collects its data per
setting, draws each panel with its own function, and gets the grid, the titles, the axis
labels, the legend and the file from here; with no data at all it is skipped with a reason.
matplotlib is imported on first use, so importing the report stays light.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd

from s2ap.report.load import PANEL_KEY
from s2ap.report.tables import sparsity_label

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

T = TypeVar("T")
Key = tuple[Any, ...]  # a setting: PANEL_KEY's values
Panel = tuple[Key, T]  # a setting and the data its panel draws


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def per_setting(df: pd.DataFrame, collect: Callable[[pd.DataFrame], T | None]) -> list[Panel[T]]:
    """``collect`` over each setting's rows in PANEL_KEY order; settings without data are left out."""
    panels: list[Panel[T]] = []
    for key, rows in df.groupby(PANEL_KEY, sort=True):
        data = collect(rows)
        if data is not None:
            panels.append((key, data))
    return panels


def title(key: Key) -> str:
    model, dataset, method, sparsity = key
    return f"{model} / {dataset} / {method} / {sparsity_label(sparsity)}"


def _grid(n: int) -> tuple[Figure, list[Axes]]:
    """Up to four panels a row; the grid's unused cells hidden."""
    plt = _pyplot()
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def draw_panels(
    path: Path,
    panels: Sequence[Panel[T]],
    draw: Callable[[Axes, T], None],
    *,
    xlabel: str,
    ylabel: str,
    absent: str,
    legend: bool = True,
) -> str | None:
    """Draw one panel per setting into ``path``; the reason ``absent`` when there is none."""
    if not panels:
        return absent
    fig, axes = _grid(len(panels))
    for ax, (key, data) in zip(axes, panels, strict=True):
        draw(ax, data)
        ax.set_title(title(key), fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if legend:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return None
