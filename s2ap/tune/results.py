"""A search's tables, ``trials.parquet``, ``epochs.parquet`` and ``predictions.parquet``,
with explicit schemas.

``trials.parquet``: one row per finished trial: its identity (trial id, grid cell), status
(``ok``, ``error`` or ``stopped`` when ASHA ended it early), every experiment config value
as its own snake_case column (``prune.sparsity`` -> ``prune_sparsity``,
:func:`s2ap.results.column_name`; null where the setting does not apply), the final metrics of
:data:`s2ap.results.RUN_SCHEMA`, ``selected`` (its cell's best trial by
:mod:`s2ap.selection`), and where and how often its workers ran.

``epochs.parquet``: one row per trial per epoch that counted. Rows come from the trial's
latest checkpoint (its ``state.pt``'s rows), never from the stream of reports: after a
worker fault Train may restart a trial from an older checkpoint, so the stream can hold an
epoch twice, while the checkpoint holds each epoch once, from the run that counted.

``predictions.parquet``: one row per headline test point per finished trial (its
``predictions.parquet``, with the trial id and grid cell): the per-point outcomes the
report pairs by seed and test point.

This module reads files only; it never imports Ray, so the tables can be rebuilt offline.
"""

from __future__ import annotations

import functools
import json
import logging
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from s2ap import results, selection, storage
from s2ap.config import ExperimentConfig
from s2ap.experiment import applies, identity
from s2ap.results import EPOCHS_FILE, FINAL_FILE, TRIALS_FILE
from s2ap.tune.cells import cell_of
from s2ap.tune.clock import search_epoch
from s2ap.tune.layout import (
    checkpoint_roots,
    latest_checkpoint,
    read_divergence,
    read_meta,
    read_times,
    read_workers,
    trial_store,
)
from s2ap.tune.spec import SearchSpec

log = logging.getLogger(__name__)

STATUSES = ("ok", "error", "stopped")

# --------------------------------------------------------------------------- schemas


def _arrow_type(tp: Any) -> pa.DataType:
    """The Arrow type of a config field: numbers stay numbers, lists stay lists."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        kinds = {str(_arrow_type(a)) for a in inner}
        return _arrow_type(inner[0]) if len(kinds) == 1 else pa.string()
    if origin is Literal:
        if all(isinstance(a, bool) for a in args):
            return pa.bool_()
        if all(isinstance(a, int) and not isinstance(a, bool) for a in args):
            return pa.int64()
        return pa.string()
    if origin is tuple:
        return pa.list_(_arrow_type(args[0]))
    if tp is bool:
        return pa.bool_()
    if tp is int:
        return pa.int64()
    if tp is float:
        return pa.float64()
    return pa.string()


def config_paths(cls: type = ExperimentConfig, prefix: str = "") -> list[tuple[str, pa.DataType]]:
    """Every leaf of the experiment config: its dotted path and its column's Arrow type."""
    out: list[tuple[str, pa.DataType]] = []
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        name = f"{prefix}{f.name}"
        tp = hints[f.name]
        if is_dataclass(tp):
            out.extend(config_paths(tp, f"{name}."))  # type: ignore[arg-type]
        else:
            out.append((name, _arrow_type(tp)))
    return out


def config_fields() -> list[pa.Field]:
    """One column per leaf of the experiment config, named ``column_name(path)``: ``s2ap_gamma``."""
    return [pa.field(results.column_name(path), dtype) for path, dtype in config_paths()]


@functools.cache
def _config_leaves() -> frozenset[str]:
    return frozenset(path for path, _ in config_paths())


TRIAL_FIELDS = [
    pa.field("trial_id", pa.string(), nullable=False),
    pa.field("search", pa.string(), nullable=False),
    pa.field("grid_cell", pa.int64(), nullable=False),
    pa.field("cell_key", pa.string()),
    pa.field("status", pa.string(), nullable=False),  # ok | error | stopped
    pa.field("selected", pa.bool_()),  # its cell's best trial (s2ap.selection)
    pa.field("stopped_early", pa.bool_(), nullable=False),
    pa.field("error", pa.string()),
    pa.field("epochs_run", pa.int64(), nullable=False),  # epochs that counted, every phase
    pa.field("search_epochs_run", pa.int64(), nullable=False),  # after pretraining (ASHA's clock)
    pa.field("attempts", pa.int64(), nullable=False),  # worker-group starts (1 = no restart)
    pa.field("trial_time_s", pa.float64()),  # wall time in Tune, framework included
    # When the driver started the trial (actor start included) and saw it end; outside_training_s is
    # that wall time minus the summed training time of the epochs that counted.
    pa.field("started_at", pa.timestamp("us", tz="UTC")),
    pa.field("ended_at", pa.timestamp("us", tz="UTC")),
    pa.field("outside_training_s", pa.float64()),
    # Its probes' seconds (prune.probe_after; in its wall time, not in time_s; null: none ran) and
    # its mean training seconds per epoch after pretraining: the unit a probe's cost is counted in.
    pa.field("probe_time_s", pa.float64()),
    pa.field("mean_epoch_time_s", pa.float64()),
    pa.field("node_ids", pa.list_(pa.string())),
    pa.field("hostnames", pa.list_(pa.string())),
    pa.field("pids", pa.list_(pa.int64())),
]


def trials_schema() -> pa.Schema:
    taken = {f.name for f in TRIAL_FIELDS}
    run = [f for f in results.RUN_SCHEMA if f.name not in taken]
    taken |= {f.name for f in run}
    cfg = [f for f in config_fields() if f.name not in taken]
    return pa.schema(TRIAL_FIELDS + run + cfg)


def epochs_schema() -> pa.Schema:
    head = [
        pa.field("trial_id", pa.string(), nullable=False),
        pa.field("search", pa.string(), nullable=False),
        pa.field("grid_cell", pa.int64(), nullable=False),
        pa.field("global_epoch", pa.int64(), nullable=False),  # 1-based over every phase
        pa.field("search_epoch", pa.int64(), nullable=False),  # 0 in pretraining
    ]
    taken = {f.name for f in head}
    return pa.schema(head + [f for f in results.EPOCH_SCHEMA if f.name not in taken])


def predictions_schema() -> pa.Schema:
    """``predictions.parquet`` beside ``trials.parquet``: each finished trial's test points
    (:data:`s2ap.results.PREDICTION_SCHEMA`) under its trial id and grid cell."""
    return pa.schema(TRIAL_FIELDS[:3] + list(results.PREDICTION_SCHEMA))


# --------------------------------------------------------------------------- records


@dataclass
class TrialRecord:
    """What the driver knows about one trial, independent of Ray's classes."""

    trial_id: str
    config: Mapping[str, Any]  # the Tune config: {"cell": id, dotted overrides...}
    state: str  # ok-able terminal state from Tune: "TERMINATED" or "ERROR"
    last_result: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None


def _read_rows(where: str) -> list[dict[str, Any]]:
    if not storage.is_file(where):
        return []
    return storage.read_table(where).to_pylist()


def _flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Config values by dotted path. Only config sections are opened: a value that is a
    mapping itself (``model.kwargs``) stays one column, stored as JSON."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and name not in _config_leaves():
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def config_columns(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config's columns of a trials row: ``s2ap_gamma`` and the rest, each null where the
    setting does not apply (:func:`s2ap.experiment.applies`: no gamma on an S2AP-off row)."""
    return {
        results.column_name(path): value if applies(cfg, path) else None
        for path, value in _flatten(cfg.to_dict()).items()
    }


def _cast(value: Any, dtype: pa.DataType) -> Any:
    """Fit a value to its column (string columns hold JSON for anything that is not text)."""
    if value is None:
        return None
    if pa.types.is_string(dtype) and not isinstance(value, str):
        return json.dumps(value)
    if pa.types.is_floating(dtype) and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def trial_rows(
    spec: SearchSpec, record: TrialRecord, search_dir: str, cell_keys: Mapping[int, str]
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The trials row, the epoch rows and the prediction rows of one finished trial."""
    store = trial_store(search_dir, record.trial_id)
    found = latest_checkpoint(*checkpoint_roots(search_dir, record.trial_id))
    reported = record.last_result.get("checkpoint_path")  # a path inside the storage filesystem
    if record.state == "TERMINATED" and not record.last_result.get("final") and reported:
        # Stopped by the scheduler: the state it was judged on, whatever ran after it.
        where = storage.from_fs_path(search_dir, str(reported))
        meta_there = read_meta(where)
        if meta_there is not None:
            found = (where, meta_there)
    folder, meta = found if found is not None else (None, {})
    final_row = _read_rows(storage.join(folder, FINAL_FILE))[0] if folder and meta.get("final") else {}
    epochs = _read_rows(storage.join(folder, EPOCHS_FILE)) if folder else []
    points = _read_rows(storage.join(folder, results.PREDICTIONS_FILE)) if final_row else []
    reason = read_divergence(store)
    if reason is not None or record.state == "ERROR":
        status, error = "error", reason or record.error or "trial failed"
    elif meta.get("final"):
        status, error = "ok", None
    else:
        status, error = "stopped", None
    cell = cell_of(record.config)
    cfg = spec.trial_config(record.config)
    workers = read_workers(store)
    times = read_times(store)
    wall = times["ended"] - times["started"] if {"started", "ended"} <= set(times) else None
    row: dict[str, Any] = {
        **config_columns(cfg),
        **identity(cfg),
        **final_row,
        "trial_id": record.trial_id,
        "search": spec.name,
        "grid_cell": cell,
        "cell_key": cell_keys.get(cell),
        "status": status,
        "stopped_early": status == "stopped",
        "error": error,
        "epochs_run": len(epochs),
        "search_epochs_run": sum(1 for e in epochs if e.get("phase") != "pretrain"),
        "attempts": sum(1 for w in workers if w.get("rank") == 0),
        "trial_time_s": wall if wall is not None else record.last_result.get("time_total_s"),
        "started_at": _stamp(times.get("started")),
        "ended_at": _stamp(times.get("ended")),
        "outside_training_s": None
        if wall is None
        else wall - sum(float(e.get("time_s") or 0.0) for e in epochs),
        **probe_costs(epochs),
        "node_ids": sorted({str(w["node_id"]) for w in workers if w.get("node_id")}),
        "hostnames": sorted({str(w["hostname"]) for w in workers if w.get("hostname")}),
        "pids": [int(w["pid"]) for w in workers if w.get("pid") is not None],
    }
    row.setdefault("code_version", results.code_version())
    row["status"], row["error"] = status, error
    epoch_rows = []
    for i, e in enumerate(epochs):
        epoch_rows.append(
            {
                **e,
                "trial_id": record.trial_id,
                "search": spec.name,
                "grid_cell": cell,
                "global_epoch": i + 1,
                "search_epoch": search_epoch(cfg, str(e["phase"]), int(e["epoch"])),
            }
        )
    head = {"trial_id": record.trial_id, "search": spec.name, "grid_cell": cell}
    return row, epoch_rows, [{**p, **head} for p in points]


def probe_costs(epochs: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """A trial's probe seconds (None without a probe) and mean epoch training seconds after
    pretraining (None without such an epoch)."""
    probes = [float(e["probe_time_s"]) for e in epochs if e.get("probe_time_s") is not None]
    times = [float(e.get("time_s") or 0.0) for e in epochs if e.get("phase") != "pretrain"]
    return {
        "probe_time_s": sum(probes) if probes else None,
        "mean_epoch_time_s": sum(times) / len(times) if times else None,
    }


def _stamp(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=UTC)


def to_table(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    columns = {f.name: [_cast(r.get(f.name), f.type) for r in rows] for f in schema}
    return pa.Table.from_pydict(columns, schema=schema)


def write_tables(
    spec: SearchSpec, records: Iterable[TrialRecord], search_dir: str | Path
) -> tuple[str, str, list[dict[str, Any]]]:
    """Rebuild and atomically replace both tables from every finished trial."""
    cell_keys = {c.id: c.key for c in spec.cells()}
    trials, epochs, points = [], [], []
    for record in sorted(records, key=lambda r: r.trial_id):
        try:
            row, rows, predicted = trial_rows(spec, record, str(search_dir), cell_keys)
        except Exception:  # one unreadable trial must not hide the others
            log.exception("could not collect trial %s", record.trial_id)
            continue
        trials.append(row)
        epochs.extend(rows)
        points.extend(predicted)
    chosen = {id(row) for row in selection.best_per_cell(trials).values()}
    for row in trials:
        row["selected"] = id(row) in chosen
    p_table = to_table(points, predictions_schema())
    storage.write_table(p_table, storage.join(search_dir, results.PREDICTIONS_FILE))
    t_path = storage.write_table(to_table(trials, trials_schema()), storage.join(search_dir, TRIALS_FILE))
    e_path = storage.write_table(to_table(epochs, epochs_schema()), storage.join(search_dir, EPOCHS_FILE))
    return t_path, e_path, trials


# The one selection rule (s2ap.selection), re-exported where the search's tables are read.
selection_key = selection.selection_key
best_per_cell = selection.best_per_cell
SELECTION_RULE = selection.RULE
