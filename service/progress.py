"""How far a search has come, read from its ``trials.parquet``.

The search rewrites ``trials.parquet`` atomically whenever a trial ends (one row per
finished trial, with a ``status`` column), so the file is both the progress counter and
the leaderboard. Only a few columns are read, and only when the file changed: the poller
keeps the file's version next to the numbers it derived from it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s2ap import selection, storage
from s2ap.results import EPOCHS_FILE, PREDICTIONS_FILE, TRIALS_FILE, column_name

TABLES = {"trials": TRIALS_FILE, "epochs": EPOCHS_FILE, "predictions": PREDICTIONS_FILE}
# What "best so far" ranks by: the search's own rule (s2ap.selection), on validation data
# (test accuracies are reported, never used to choose).
BEST_METRIC = selection.METRIC
TIE_METRIC = selection.TIE_METRIC
_REPORTED = ("robust_acc", "clean_acc")
# Each reported figure's points and interval, and which attack robust_acc is.
_WITH = tuple(f"{c}{end}" for c in (BEST_METRIC, *_REPORTED) for end in ("_n", "_lo", "_hi")) + (
    "robust_attack",
)


@dataclass(frozen=True)
class Progress:
    version: str  # "<mtime_ns>:<size>" of trials.parquet
    trials: dict[str, int]  # done, ok, stopped, errored
    best: dict[str, Any] | None


def file_version(path: str | Path) -> str | None:
    return storage.version(path)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) or math.isinf(value) else float(value)


def _plain(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_progress(
    results_dir: str | Path, config_keys: Iterable[str], known: str | None = None
) -> Progress | None:
    """Counts and best trial, or None when there is no table yet or it did not change
    since ``known`` (a version this function returned before)."""
    path = storage.join(results_dir, TRIALS_FILE)  # a local folder or a storage URI
    version = file_version(path)
    if version is None or version == known:
        return None
    names = set(storage.read_schema(path).names)
    # A spec key (dotted) names its column (column_name); a table written before the columns
    # were snake_case holds the dotted name itself.
    columns = {
        k: next((c for c in (column_name(k), k) if c in names), None) for k in dict.fromkeys(config_keys)
    }
    keys = [k for k, c in columns.items() if c is not None]
    wanted = [c for c in ("trial_id", "status", BEST_METRIC, TIE_METRIC, *_REPORTED, *_WITH) if c in names]
    table = storage.read_table(path, columns=wanted + [columns[k] for k in keys])
    rows = [{**r, **{k: r[columns[k]] for k in keys}} for r in table.to_pylist()]
    counts = {"done": len(rows), "ok": 0, "stopped": 0, "errored": 0}
    for row in rows:
        status = row.get("status")
        if status == "ok":
            counts["ok"] += 1
        elif status == "stopped":
            counts["stopped"] += 1
        elif status == "error":
            counts["errored"] += 1
    return Progress(version=version, trials=counts, best=best_trial(rows, keys))


def best_trial(rows: Iterable[Mapping[str, Any]], keys: Iterable[str]) -> dict[str, Any] | None:
    """The finished trial :mod:`s2ap.selection` ranks first (highest validation PGD accuracy,
    ties: validation clean, NaN last). A test accuracy never decides, not even a tie."""
    best = selection.best_row(row for row in rows if row.get("status") == "ok")
    if best is None:
        return None
    return {
        "trial_id": str(best.get("trial_id")),
        "metric": BEST_METRIC,
        "value": _number(best.get(BEST_METRIC)),
        "robust_acc": _number(best.get("robust_acc")),
        "clean_acc": _number(best.get("clean_acc")),
        **_intervals(best),
        "config": {k: _plain(best.get(k)) for k in keys},
    }


def _intervals(row: Mapping[str, Any]) -> dict[str, Any]:
    """``value`` / ``robust_acc`` / ``clean_acc`` each with ``_n`` (points) and ``_lo`` / ``_hi``
    (95% Wilson interval, from the row), and which attack ``robust_acc`` is."""
    out: dict[str, Any] = {"robust_attack": row.get("robust_attack")}
    for name, column in (("value", BEST_METRIC), ("robust_acc", "robust_acc"), ("clean_acc", "clean_acc")):
        n = _number(row.get(f"{column}_n"))
        out[f"{name}_n"] = None if n is None else int(n)
        out[f"{name}_lo"], out[f"{name}_hi"] = (
            _number(row.get(f"{column}_lo")),
            _number(row.get(f"{column}_hi")),
        )
    return out


def config_keys(spec: Mapping[str, Any]) -> list[str]:
    """The config values that tell trials apart: grid axes, then searched parameters."""
    return [*dict(spec.get("grid") or {}), *dict(spec.get("search") or {})]
