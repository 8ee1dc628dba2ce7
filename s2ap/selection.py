"""The one rule that picks a "best" trial or setting, shared by the search summary, the
report and the service.

Best = the highest final *validation* PGD accuracy, ties broken by validation clean
accuracy, and on a full tie the first in the order given (trial-id order for trials). A test
accuracy never decides, not even a tie. A missing, NaN or infinite validation figure is not a
result: it ranks below every real one, so a trial whose validation diverged can be "best"
only where no trial has a number.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

METRIC = "final_val_pgd_acc"
TIE_METRIC = "final_val_clean_acc"
RULE = (
    "best trial per cell = highest final validation PGD accuracy (ties: validation clean; "
    "a missing or NaN value ranks last); test accuracies are never used to select"
)

K = TypeVar("K")


def rank_value(value: Any) -> float:
    """A number to rank by: the value itself, or -inf for None, NaN, infinities and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        try:
            value = float(value)  # numpy scalars
        except (TypeError, ValueError):
            return -math.inf
    return float(value) if math.isfinite(value) else -math.inf


def selection_key(row: Mapping[str, Any]) -> tuple[float, float]:
    """What "best" means for a trial: validation PGD accuracy, then validation clean accuracy."""
    return rank_value(row.get(METRIC)), rank_value(row.get(TIE_METRIC))


def best_row(rows: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The best of ``rows`` by :func:`selection_key`; the first on a full tie; None if empty."""
    best: Mapping[str, Any] | None = None
    for row in rows:
        if best is None or selection_key(row) > selection_key(best):
            best = row
    return best


def best_per_cell(trials: Sequence[Mapping[str, Any]]) -> dict[int, Mapping[str, Any]]:
    """Each grid cell's best finished (``status == "ok"``) trial, ties to the lower trial id."""
    ordered = sorted((r for r in trials if r.get("status") == "ok"), key=lambda r: str(r.get("trial_id")))
    cells: dict[int, list[Mapping[str, Any]]] = {}
    for row in ordered:
        cells.setdefault(int(row["grid_cell"]), []).append(row)
    return {cell: row for cell, rows in cells.items() if (row := best_row(rows)) is not None}


def best_label(scores: Iterable[tuple[K, Any]]) -> K | None:
    """The label with the highest score (a mean validation accuracy per gamma, say), the first
    on a tie, missing or NaN scores last; None when there are no labels."""
    best: tuple[K, float] | None = None
    for label, score in scores:
        value = rank_value(score)
        if best is None or value > best[1]:
            best = (label, value)
    return None if best is None else best[0]
