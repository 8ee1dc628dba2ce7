"""What the web page shows, read from a job's record and its two Parquet tables.

Nothing here recomputes what the project already computes: the best trial per cell is
:func:`s2ap.tune.results.best_per_cell`, the best so far is the one the service's poller
recorded (:func:`service.progress.best_trial`), intervals are the tables' ``X_n`` / ``X_lo`` / ``X_hi``
(per-epoch validation accuracies carry only their ``n``: their interval is
:func:`s2ap.stats.accuracy_interval`, the one the tables use), and the Orig.-vs-S2AP table is
the report's (:func:`s2ap.report.tables.comparisons`, formatted by
:mod:`s2ap.report.compare`). Accuracies are stored as fractions and shown in percent.

Tables are read with pandas once per file version (a small cache keyed by the file's
mtime and size), so a page that refreshes every few seconds re-reads only what changed.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from s2ap import storage
from s2ap.report.selection import RULE as GAMMA_RULE
from s2ap.results import RUN, format_gamma, with_column_names
from s2ap.selection import RULE as SELECTION_RULE
from s2ap.selection import best_per_cell
from s2ap.stats import accuracy_interval
from service.progress import EPOCHS_FILE, TRIALS_FILE, config_keys, file_version
from service.store import JobRecord
from service.ui.compare import CompareTable, compare_table
from service.ui.live import Live, LiveTrial, live_trials, running_count

DASH = "–"
MAX_TRIAL_ROWS = 500  # a page, not the table: trials.parquet holds every trial
_ACCURACIES = ("final_val_clean_acc", "final_val_pgd_acc", "clean_acc", "robust_acc")
# The columns the trials table reads (a search's table has a few hundred).
TRIAL_COLUMNS = (
    "trial_id",
    "grid_cell",
    "cell_key",
    "status",
    "stopped_early",
    "error",
    "search_epochs_run",
    "s2ap",
    "gamma",
    "warmup_epochs",
    "robust_attack",
    *(f"{name}{end}" for name in _ACCURACIES for end in ("", "_n", "_lo", "_hi")),
)
_VAL_EPOCH = ("val_clean_acc", "val_clean_acc_n", "val_pgd_acc", "val_pgd_acc_n")
BEST_RULE = (
    "best so far = the finished trial with the highest final validation PGD accuracy "
    "(ties: validation clean); chosen on validation, never on test"
)
_CACHE_SIZE = 32
_cache: OrderedDict[tuple[str, str], pd.DataFrame] = OrderedDict()
_cache_lock = threading.Lock()


# --------------------------------------------------------------------------- numbers


def _num(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) or math.isinf(number) else number


@dataclass(frozen=True)
class Accuracy:
    """One accuracy (a fraction) with its point count and 95% Wilson interval."""

    value: float | None
    n: int | None = None
    lo: float | None = None
    hi: float | None = None

    @classmethod
    def of(cls, row: Mapping[str, Any], name: str) -> Accuracy:
        n = _num(row.get(f"{name}_n"))
        return cls(
            _num(row.get(name)),
            None if n is None else int(n),
            _num(row.get(f"{name}_lo")),
            _num(row.get(f"{name}_hi")),
        )

    @classmethod
    def measured(cls, value: Any, n: Any) -> Accuracy:
        """A per-epoch accuracy and its point count: the interval from :mod:`s2ap.stats`."""
        v, count = _num(value), _num(n)
        if v is None or not count:
            return cls(v)
        interval = accuracy_interval(v, int(count))
        return cls(v, int(count), interval.lo, interval.hi)

    @property
    def known(self) -> bool:
        return self.value is not None

    def percent(self) -> str:
        return DASH if self.value is None else f"{100 * self.value:.1f}"

    def bounds(self) -> str:
        """``[79.0, 86.7]``: the interval alone (with :attr:`n`, on a line of its own)."""
        if self.lo is None or self.hi is None:
            return "(no interval)"
        return f"[{100 * self.lo:.1f}, {100 * self.hi:.1f}]"

    def text(self) -> str:
        """``83.1 [79.0, 86.7] n=360`` (percent); ``–`` when not measured."""
        if self.value is None:
            return DASH
        if self.lo is None or self.hi is None or not self.n:
            return f"{100 * self.value:.1f} (no point count)"
        return f"{100 * self.value:.1f} [{100 * self.lo:.1f}, {100 * self.hi:.1f}] n={self.n}"


# --------------------------------------------------------------------------- tables


def read_table(path: str) -> pd.DataFrame | None:
    """A result table (a local file or an object in the job's storage) as a DataFrame,
    None when it does not exist (yet)."""
    return read_versioned(path)[0]


def read_versioned(path: str) -> tuple[pd.DataFrame | None, str | None]:
    """:func:`read_table` and the version it read (one probe of the file: a round trip on an
    object store), so callers key their own caches on the data they were given."""
    version = file_version(path)
    if version is None:
        return None, None
    key = (str(path), version)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key], version
    try:
        df = with_column_names(storage.read_table(path)).to_pandas()  # old dotted names mapped
    except FileNotFoundError:
        return None, None
    with _cache_lock:
        _cache[key] = df
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return df, version


def _rows(df: pd.DataFrame | None) -> list[dict[str, Any]]:
    if df is None or df.empty:
        return []
    return [{k: (None if _missing(v) else v) for k, v in r.items()} for r in df.to_dict("records")]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# --------------------------------------------------------------------------- jobs list


@dataclass(frozen=True)
class Best:
    trial_id: str
    config: dict[str, str]  # its grid and searched values, formatted
    val_pgd: Accuracy  # what it was chosen on
    robust: Accuracy  # its test robust accuracy, reported only
    attack: str | None


def best_so_far(job: JobRecord) -> Best | None:
    """The job's best trial (the service's own choice) with the intervals of its numbers."""
    if not job.best:
        return None
    trial_id = str(job.best.get("trial_id"))
    table = read_table(storage.join(job.results_dir, TRIALS_FILE))
    found = _rows(table[table["trial_id"].astype(str) == trial_id]) if table is not None else []
    row: Mapping[str, Any] = found[0] if found else {}
    if not row:  # the table went away: what the record kept, without intervals
        row = {"final_val_pgd_acc": job.best.get("value"), "robust_acc": job.best.get("robust_acc")}
    return Best(
        trial_id,
        {key: _fmt(value) for key, value in (job.best.get("config") or {}).items()},
        Accuracy.of(row, "final_val_pgd_acc"),
        Accuracy.of(row, "robust_acc"),
        row.get("robust_attack"),
    )


def when(ts: float | None) -> str:
    if ts is None:
        return DASH
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class JobRow:
    job: JobRecord
    best: Best | None
    submitted: str
    done: int
    total: int
    running: int = 0  # trials started and not yet in trials.parquet (0 once the job ended)


def job_row(job: JobRecord, live: Live | None = None) -> JobRow:
    done = int(job.trials.get("done", 0))
    if job.finished:
        running = 0
    elif live is not None:
        running = live.running
    else:
        running = running_count(job.results_dir, done)
    return JobRow(job, best_so_far(job), when(job.submitted_at), done, job.trials_total, running)


# --------------------------------------------------------------------------- one job


@dataclass(frozen=True)
class TrialRow:
    trial_id: str
    cell: str
    gamma: str
    warmup: str
    status: str
    stopped_early: bool
    epochs: str
    val_clean: Accuracy
    val_pgd: Accuracy
    clean: Accuracy
    robust: Accuracy
    attack: str
    best_in_cell: bool
    error: str | None
    sort_cell: int = 0  # its grid cell, for merging running and finished rows in order


def _fmt(value: Any) -> str:
    if value is None:
        return DASH
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _gamma(value: Any) -> str:
    number = _num(value)
    return DASH if number is None else format_gamma(number)


def cell_label(row: Mapping[str, Any]) -> str:
    cell = row.get("grid_cell")
    key = row.get("cell_key")
    key = key if isinstance(key, str) else None  # null in a table read with pandas: NaN
    prefix = DASH if cell is None else f"[{int(cell)}]"
    return f"{prefix} {key}" if key else prefix


def trial_rows(
    trials: pd.DataFrame | None, epochs: pd.DataFrame | None, limit: int = MAX_TRIAL_ROWS
) -> list[TrialRow]:
    """One row per finished trial, in grid-cell then trial order; stopped trials show the
    last validation accuracies they reached (per epoch, so with the epoch's point count).
    Past ``limit`` rows, each cell's best trial and the first others (the tables hold all)."""
    shown = trials[[c for c in TRIAL_COLUMNS if c in trials.columns]] if trials is not None else None
    rows = sorted(_rows(shown), key=lambda r: (r.get("grid_cell") or 0, str(r.get("trial_id"))))
    best = {str(r.get("trial_id")) for r in best_per_cell(rows).values()}
    if len(rows) > limit:
        others = [str(r.get("trial_id")) for r in rows if str(r.get("trial_id")) not in best]
        keep = best | set(others[: max(0, limit - len(best))])
        rows = [r for r in rows if str(r.get("trial_id")) in keep]
    last = _last_epochs(epochs)
    out = []
    for r in rows:
        tid = str(r.get("trial_id"))
        s2ap_on = r.get("s2ap")
        val_clean, val_pgd = Accuracy.of(r, "final_val_clean_acc"), Accuracy.of(r, "final_val_pgd_acc")
        if not val_pgd.known and tid in last:  # stopped or failed: its last measured epoch
            e = last[tid]
            val_clean = Accuracy.measured(e.get("val_clean_acc"), e.get("val_clean_acc_n"))
            val_pgd = Accuracy.measured(e.get("val_pgd_acc"), e.get("val_pgd_acc_n"))
        out.append(
            TrialRow(
                trial_id=tid,
                cell=cell_label(r),
                gamma="S2AP off" if s2ap_on is False else _gamma(r.get(RUN.gamma)),
                warmup="–" if s2ap_on is False else _fmt(r.get(RUN.warmup_epochs)),
                status=str(r.get("status") or DASH),
                stopped_early=bool(r.get("stopped_early")),
                epochs=_fmt(r.get("search_epochs_run")),
                val_clean=val_clean,
                val_pgd=val_pgd,
                clean=Accuracy.of(r, "clean_acc"),
                robust=Accuracy.of(r, "robust_acc"),
                attack=str(r.get("robust_attack") or ""),
                best_in_cell=tid in best,
                error=r.get("error"),
                sort_cell=int(r.get("grid_cell") or 0),
            )
        )
    return out


def _s2ap_setting(params: Mapping[str, Any], base: Mapping[str, Any], name: str) -> Any:
    """A trial's S2AP setting: its sampled value (Tune's params), else the spec's base."""
    key = f"s2ap.{name}"
    return params[key] if key in params else (base.get("s2ap") or {}).get(name)


def running_rows(live: Live, base: Mapping[str, Any], cell_keys: Mapping[int, str]) -> list[TrialRow]:
    """One row per running trial: its epochs so far and its latest validation figures
    (each epoch's accuracy with its point count, so with its interval)."""
    rows = []
    for t in sorted(live.trials, key=lambda t: (t.grid_cell or 0, t.trial_id)):
        rows.append(_running_row(t, base, cell_keys))
    return rows


def _running_row(t: LiveTrial, base: Mapping[str, Any], cell_keys: Mapping[int, str]) -> TrialRow:
    last = _last_epochs(t.epochs).get(t.trial_id, {})
    enabled = _s2ap_setting(t.params, base, "enabled")
    cell = t.grid_cell
    label = {"grid_cell": cell, "cell_key": cell_keys.get(cell) if cell is not None else None}
    known = bool(t.params)  # without Tune's note the sampled values are not known yet
    return TrialRow(
        trial_id=t.trial_id,
        cell=cell_label(label) if known else DASH,
        gamma=DASH
        if not known
        else "S2AP off"
        if enabled is False
        else _gamma(_s2ap_setting(t.params, base, "gamma")),
        warmup=DASH
        if not known or enabled is False
        else _fmt(_s2ap_setting(t.params, base, "warmup_epochs")),
        status="running",
        stopped_early=False,
        epochs=str(t.search_epochs),
        val_clean=Accuracy.measured(last.get("val_clean_acc"), last.get("val_clean_acc_n")),
        val_pgd=Accuracy.measured(last.get("val_pgd_acc"), last.get("val_pgd_acc_n")),
        clean=Accuracy(None),
        robust=Accuracy(None),
        attack="",
        best_in_cell=False,
        error=None,
        sort_cell=cell if cell is not None else 1 << 30,
    )


def _last_epochs(epochs: pd.DataFrame | None) -> dict[str, dict[str, Any]]:
    """Each trial's last epoch that measured validation PGD accuracy."""
    if epochs is None or epochs.empty or "val_pgd_acc" not in epochs:
        return {}
    wanted = [c for c in ("trial_id", "global_epoch", *_VAL_EPOCH) if c in epochs.columns]
    measured = epochs.loc[epochs["val_pgd_acc"].notna(), wanted].sort_values(["trial_id", "global_epoch"])
    return {str(k): r for k, r in zip(measured["trial_id"], _rows(measured), strict=True)}


@dataclass
class JobView:
    job: JobRecord
    row: JobRow
    trials: list[TrialRow]
    compare: CompareTable
    keys: list[str]
    trials_total: int  # rows of trials.parquet (the table shows at most MAX_TRIAL_ROWS)
    has_trials: bool
    has_epochs: bool
    selection_rule: str = SELECTION_RULE
    gamma_rule: str = GAMMA_RULE
    best_rule: str = BEST_RULE


@dataclass(frozen=True)
class Tables:
    """A job's two result tables as read once for a page, the trials running now (read from
    their own files, only while the job runs), and the versions read."""

    trials: pd.DataFrame | None
    epochs: pd.DataFrame | None
    key: tuple[str, str | None, str | None, str]  # (results location, trials, epochs, live versions)
    live: Live = field(default_factory=Live)


def tables(job: JobRecord) -> Tables:
    folder = job.results_dir  # a local folder or a storage URI (S2AP_STORAGE)
    trials, trials_version = read_versioned(storage.join(folder, TRIALS_FILE))
    epochs, epochs_version = read_versioned(storage.join(folder, EPOCHS_FILE))
    live = Live()
    if not job.finished:
        done = [] if trials is None else trials["trial_id"].astype(str).tolist()
        live = live_trials(folder, done)
    return Tables(trials, epochs, (folder, trials_version, epochs_version, live.key), live)


def cell_keys(trials: pd.DataFrame | None) -> dict[int, str]:
    """Grid cell -> its key, as the finished trials name them."""
    if trials is None or trials.empty or "cell_key" not in trials:
        return {}
    known = trials.dropna(subset=["grid_cell", "cell_key"])
    return {int(c): str(k) for c, k in zip(known["grid_cell"], known["cell_key"], strict=True)}


def job_view(job: JobRecord, read: Tables) -> JobView:
    trials, epochs = read.trials, read.epochs
    rows = trial_rows(trials, epochs)
    running = running_rows(read.live, job.spec.get("base") or {}, cell_keys(trials))
    return JobView(
        job=job,
        row=job_row(job, read.live),
        trials=sorted(rows + running, key=lambda r: r.sort_cell),  # stable: each part keeps its order
        compare=compare_table(job.results_dir),
        keys=config_keys(job.spec),
        trials_total=0 if trials is None else len(trials),
        has_trials=trials is not None,
        has_epochs=epochs is not None,
    )
