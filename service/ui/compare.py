"""The job page's Orig.-vs-S2AP table: the report's Table 1, computed the report's way.

The job's results are read as ``python -m s2ap.report`` reads them
(:func:`s2ap.report.load.load_runs`: ``trials.parquet`` with each trial's per-point test
outcomes from ``predictions.parquet``), so Δ robust is paired by seed *and* test point
(:func:`s2ap.stats.paired_points`) whenever both sides have their points, falls back to
the across-seeds interval only where they do not (and says so), and is "not comparable"
when the sides were measured with another attack, PGD step count or other test points
(:mod:`s2ap.report.compare`). Read once per version of the two files.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from s2ap import storage
from s2ap.report.compare import format_delta, format_side
from s2ap.report.controls import HEADER as CONTROLS_HEADER
from s2ap.report.controls import NOTES as CONTROLS_NOTES
from s2ap.report.controls import SettingControls, all_controls
from s2ap.report.load import ReportError, load_runs, prepare
from s2ap.report.tables import comparisons, sparsity_label
from s2ap.results import PREDICTIONS_FILE, RUN, TRIALS_FILE, gamma_choice

_CACHE_SIZE = 16
_cache: OrderedDict[tuple[str, str | None, str | None], CompareTable] = OrderedDict()
_lock = threading.Lock()


@dataclass(frozen=True)
class Comparison:
    model: str
    dataset: str
    sparsity: str
    method: str
    orig: str
    s2ap: str
    delta: str


@dataclass
class CompareTable:
    rows: list[Comparison] = field(default_factory=list)
    absent: str | None = None  # why there is no table
    # The report's controls section, where the job holds control arms (finetune.awp,
    # s2ap.direction, s2ap.perturb): each arm against Orig., the main effects, the cost.
    controls: list[SettingControls] = field(default_factory=list)
    controls_header: tuple[str, ...] = tuple(CONTROLS_HEADER)
    controls_notes: str = CONTROLS_NOTES


def compare_table(results_dir: str) -> CompareTable:
    """The comparison of the job's finished trials (Table 1's cells), per-point paired."""
    trials = storage.join(results_dir, TRIALS_FILE)
    key = (
        str(results_dir),
        storage.version(trials),
        storage.version(storage.join(results_dir, PREDICTIONS_FILE)),
    )
    if key[1] is None:
        return CompareTable(absent="no trial has finished yet")
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    table = _build(results_dir)
    with _lock:
        _cache[key] = table
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return table


def _build(results_dir: str) -> CompareTable:
    try:
        runs, epochs = load_runs([results_dir])
        df = prepare(runs, epochs)
    except (ReportError, KeyError, FileNotFoundError) as exc:
        return CompareTable(absent=str(exc).strip("'\""))
    usable = df[df[RUN.clean_acc].notna() & df[RUN.robust_acc].notna()]
    if usable.empty:
        return CompareTable(absent="no finished trial has both clean and robust test accuracy")
    table = CompareTable(controls=all_controls(usable, epochs))
    found = comparisons(usable, RUN.clean_acc, RUN.robust_acc)
    for (model, dataset, sparsity, method), (c, gamma, tried) in sorted(
        found.items(), key=lambda kv: tuple(map(str, kv[0]))
    ):
        s2ap = format_side(c.s2ap, True)
        if gamma is not None and c.s2ap is not None:
            s2ap += gamma_choice(gamma, tried)
        table.rows.append(
            Comparison(
                str(model),
                str(dataset),
                sparsity_label(sparsity),
                str(method),
                format_side(c.orig, True),
                s2ap,
                format_delta(c),
            )
        )
    return table
