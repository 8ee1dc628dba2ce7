"""Extending a finished search: more samples per grid cell, or new grid values.

``python -m s2ap.tune SPEC --extend N`` (N more samples per grid cell; 0 with a spec that adds
grid values or ``num_samples``) keeps everything the finished search did and runs only what
is new, in the same search folder:

- the finished trials stay: their records go to ``earlier_trials.json`` (grid cells renumbered
  by their values when the grid grew), and every table write holds them beside the new ones,
  each once;
- each cell's Optuna study goes on from the searcher state Tune saved (``searcher-state-*.pkl``):
  new samples continue the seeded TPE studies, they do not restart them;
- the pretraining cache is the spec's, shared as always.

Only the spec's growing parts may differ from the stored ``spec.json``: ``num_samples`` and
grid values (the same axes). The base config, the searched distributions, the scheduler (its
metric included), the seed and the name are fixed (:func:`extended_spec`). The new trials are
their own Tune run in the folder (so ``--resume`` continues an interrupted extension).

The new trials are judged against everything the search already knows: before the run, each
cell's scheduler is seeded with the earlier trials of that cell (:meth:`CellScheduler.seed
<s2ap.tune.scheduler.CellScheduler.seed>`), their epochs read back from the folder's
``epochs.parquet`` (:func:`earlier_reports`) and replayed as the reports they were:

- ASHA: the value at a rung is the scheduler's metric at the first ``search_epoch`` at or past
  the rung (on probe rungs, ``probe_val_pgd_acc`` at the ``r``-th probe); a trial stopped early
  has values at the rungs it reached. A new trial reaching a rung stops when its value is below
  ASHA's cutoff there (the ``1 - 1/reduction_factor`` quantile) over the earlier trials' values
  and those of the new trials that reached it before: as if the earlier trials had run first
  in the same search.
- halving: the new trials are a bracket of their own, but at each rung they are ranked among
  the earlier trials that reached it; a new trial goes on when it is among the best
  ``ceil(k / reduction_factor)`` of all ``k`` values at the rung (earlier first on a tie), else
  it stops. Earlier trials are never stopped or waited for (:mod:`s2ap.tune.halving`).

The seeded scheduler is part of the Tune run's saved state from its start, so ``--resume`` of
an interrupted extension gets it back as it was, and seeds nothing again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from s2ap import storage
from s2ap.errors import ConfigError
from s2ap.results import EPOCHS_FILE
from s2ap.tune.cells import CELL_KEY, Cell, cell_of
from s2ap.tune.results import TrialRecord
from s2ap.tune.scheduler import PROBE, TIME_ATTR
from s2ap.tune.searcher import CellSearcher
from s2ap.tune.spec import SearchSpec, load_spec, spec_hash, spec_to_dict

log = logging.getLogger(__name__)

EARLIER = "earlier_trials.json"
SPEC_FILE = "spec.json"
SEARCHER_STATE = "searcher-state-"
# What an extension may not change, in the order they are checked.
FIXED = ("name", "base", "search", "scheduler", "seed")
KEPT = "an extension keeps name, base, search, scheduler and seed; only num_samples and grid values may grow"


def plain(spec: SearchSpec) -> dict[str, Any]:
    """The spec as ``spec.json`` stores it (JSON types: tuples are lists)."""
    return json.loads(json.dumps(spec_to_dict(spec), default=str))


def spec_note(spec: SearchSpec, given: SearchSpec | None = None) -> str:
    """``spec.json``: the spec the folder's search runs (and, for an extension, the hash of the
    spec file it was started with, which ``--resume`` also accepts)."""
    note: dict[str, Any] = {"hash": spec_hash(spec), "spec": spec_to_dict(spec)}
    if given is not None:
        note["given"] = spec_hash(given)
    return json.dumps(note, indent=1, default=str)


def first_difference(old: Any, new: Any, path: str) -> str | None:
    """The dotted path of the first place two JSON values differ (None when equal)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in list(old) + [k for k in new if k not in old]:
            if key not in old or key not in new:
                return f"{path}.{key}"
            found = first_difference(old[key], new[key], f"{path}.{key}")
            if found is not None:
                return found
        return None
    return None if old == new else path


def extended_spec(stored: Mapping[str, Any], spec: SearchSpec, more: int, shown: str) -> SearchSpec:
    """The spec an extension runs: ``spec`` with ``num_samples`` the larger of its own and the
    finished search's, plus ``more``. Raises :class:`ConfigError` naming the first field that
    an extension may not change, or a grid value the finished search ran that is gone."""
    if more < 0:
        raise ConfigError("--extend", f"expected a number of samples >= 0, got {more}")
    old, new = stored.get("spec") or {}, plain(spec)
    for key in FIXED:
        where = first_difference(old.get(key), new.get(key), key)
        if where is not None:
            raise ConfigError(where, f"differs from the finished search in {shown}: {KEPT}")
    old_grid, new_grid = old.get("grid") or {}, new.get("grid") or {}
    if list(old_grid) != list(new_grid):
        raise ConfigError(
            "grid",
            f"the finished search in {shown} has the axes {list(old_grid)}, this spec {list(new_grid)}: "
            "an extension can add values to an axis, not add, drop or reorder axes",
        )
    for key, values in old_grid.items():
        gone = [v for v in values if v not in new_grid[key]]
        if gone:
            raise ConfigError(
                f"grid.{key}", f"the finished search in {shown} ran {gone}: an extension can only add values"
            )
    ran = int(old.get("num_samples", 1))
    if spec.num_samples < ran and more == 0:
        raise ConfigError(
            "num_samples",
            f"the finished search in {shown} ran {ran} per grid cell, this spec {spec.num_samples}: "
            "pass --extend N for N more, or raise num_samples",
        )
    return dataclasses.replace(spec, num_samples=max(ran, spec.num_samples) + more)


# --------------------------------------------------------------------------- earlier trials


def record_to_json(record: TrialRecord) -> dict[str, Any]:
    return dataclasses.asdict(record)


def record_from_json(data: Mapping[str, Any]) -> TrialRecord:
    return TrialRecord(
        trial_id=str(data["trial_id"]),
        config=dict(data["config"]),
        state=str(data["state"]),
        last_result=dict(data.get("last_result") or {}),
        error=data.get("error"),
    )


def earlier_records(search_dir: str) -> list[TrialRecord]:
    """The trials of the search's earlier runs (none before its first extension)."""
    where = storage.join(search_dir, EARLIER)
    if not storage.is_file(where):
        return []
    return [record_from_json(r) for r in storage.read_json(where)]


def renumbered(records: Sequence[TrialRecord], old: Sequence[Cell], new: Sequence[Cell]) -> list[TrialRecord]:
    """The records with their grid cell ids of the ``new`` cells (matched by grid values)."""
    ids = {c.key: c.id for c in new}
    moved = {c.id: ids[c.key] for c in old}
    return [dataclasses.replace(r, config={**r.config, CELL_KEY: moved[cell_of(r.config)]}) for r in records]


def earlier_reports(
    search_dir: str, records: Sequence[TrialRecord], metric: str
) -> dict[str, list[dict[str, Any]]]:
    """Each earlier trial's epochs as it reported them to the scheduler, in order: its rows of
    the folder's ``epochs.parquet`` (phase, epoch, ``search_epoch``, ``metric`` and the probe).
    Only the trials of ``records`` count, found by trial id (their rows' ``grid_cell`` may be an
    old id: the cell is the record's). A search without the table seeds nothing (a warning)."""
    where = storage.join(search_dir, EPOCHS_FILE)
    if not records:
        return {}
    if not storage.is_file(where):
        log.warning(
            "%s holds no %s: the new trials are judged among themselves",
            storage.redact(search_dir),
            EPOCHS_FILE,
        )
        return {}
    wanted = dict.fromkeys(["trial_id", "global_epoch", "phase", "epoch", TIME_ATTR, metric, PROBE])
    present = set(storage.read_schema(where).names)
    rows = storage.read_table(where, columns=[c for c in wanted if c in present]).to_pylist()
    ids = {r.trial_id for r in records}
    out: dict[str, list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda r: (str(r["trial_id"]), int(r.get("global_epoch") or 0))):
        if row["trial_id"] in ids:
            out.setdefault(str(row["trial_id"]), []).append(row)
    return out


def searcher_state(search_dir: str, shown: str) -> dict[str, Any]:
    """The newest searcher state Tune saved in the folder (the :class:`CellSearcher`'s fields)."""
    names = sorted(
        n for n in storage.list_dir(search_dir) if n.startswith(SEARCHER_STATE) and n.endswith(".pkl")
    )
    if not names:
        raise ConfigError("--extend", f"{shown} holds no saved searcher state to continue")
    state = pickle.loads(storage.read_bytes(storage.join(search_dir, names[-1])))
    if not isinstance(state, dict) or "cells" not in state or "issued" not in state:
        raise ConfigError("--extend", f"the searcher state in {shown} is not one of s2ap's")
    return state


@dataclass
class Extension:
    """What an extension runs: the spec, how many new trials each cell gets, the searcher state
    to continue, the records of every trial that ran before and their epochs' reports (what the
    scheduler is seeded with)."""

    spec: SearchSpec
    new_trials: dict[int, int]  # grid cell id -> trials to run now
    state: dict[str, Any]
    earlier: list[TrialRecord]
    reports: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # trial id -> epochs

    @property
    def total(self) -> int:
        return sum(self.new_trials.values())


def plan(grown: SearchSpec, state: Mapping[str, Any], shown: str) -> Extension:
    """Count the new trials per cell of the extended spec against the finished search's
    searcher state; the earlier records are filled in by the caller."""
    old_cells: list[Cell] = list(state["cells"])
    issued: list[int] = list(state["issued"])
    if any(issued[c.id] < c.samples for c in old_cells):
        raise ConfigError(
            "--extend", f"the search in {shown} has not finished: continue it with --resume first"
        )
    done = {c.key: issued[c.id] for c in old_cells}
    new_trials = {c.id: max(0, c.samples - done.get(c.key, 0)) for c in grown.cells()}
    if not any(new_trials.values()):
        raise ConfigError(
            "--extend",
            f"nothing to add to the search in {shown}: pass --extend N for N more samples per grid cell, "
            "or add grid values or raise num_samples in the spec",
        )
    return Extension(grown, new_trials, dict(state), [])


# --------------------------------------------------------------------------- with Ray


def experiment_records(search_dir: str, shown: str) -> list[TrialRecord]:
    """Every trial of the folder's latest Tune run, as records; refused when one is unfinished."""
    from ray.tune import ExperimentAnalysis
    from ray.tune.experiment import Trial

    from s2ap.tune.callbacks import trial_records
    from s2ap.tune.trainable import storage_args

    where = storage_args(search_dir)
    trials = ExperimentAnalysis(
        where["storage_path"], storage_filesystem=where.get("storage_filesystem")
    ).trials
    if any(t.status not in (Trial.TERMINATED, Trial.ERROR) for t in trials):
        raise ConfigError(
            "--extend", f"the search in {shown} has not finished: continue it with --resume first"
        )
    return trial_records(trials)


def prepare(spec: SearchSpec, search_dir: str, more: int) -> Extension:
    """Check an extension of the finished search in ``search_dir`` and gather what it keeps.
    Writes nothing (:func:`start` does, once the whole check passed)."""
    shown = storage.redact(search_dir)
    saved = storage.join(search_dir, SPEC_FILE)
    if not storage.exists(storage.join(search_dir, "tuner.pkl")) or not storage.is_file(saved):
        raise ConfigError("--extend", f"no finished search to extend in {shown}")
    grown = extended_spec(storage.read_json(saved), spec, more, shown)
    state = searcher_state(search_dir, shown)
    ext = plan(grown, state, shown)
    kept = {r.trial_id: r for r in earlier_records(search_dir)}
    kept.update((r.trial_id, r) for r in experiment_records(search_dir, shown))
    ext.earlier = renumbered(
        sorted(kept.values(), key=lambda r: r.trial_id), state["cells"], ext.spec.cells()
    )
    if ext.spec.scheduler.type != "fifo":
        ext.reports = earlier_reports(search_dir, ext.earlier, ext.spec.scheduler.metric)
    return ext


def start(ext: Extension, given: SearchSpec, search_dir: str) -> None:
    """Note the earlier trials and the spec the folder's search now runs."""
    records = [record_to_json(r) for r in ext.earlier]
    storage.write_text(storage.join(search_dir, EARLIER), json.dumps(records, default=str))
    storage.write_text(storage.join(search_dir, SPEC_FILE), spec_note(ext.spec, given))


def continued_searcher(ext: Extension) -> CellSearcher:
    """A searcher over the extended spec's cells that goes on with the finished search's studies:
    each kept cell's study (and how many trials it issued) under the cell's new id; a new cell
    whose default study name an old cell had gets a name of its own (one Optuna storage may
    hold them all)."""
    spec, state = ext.spec, ext.state
    s = spec.scheduler
    searcher = CellSearcher(spec.cells(), s.metric, str(s.mode), spec.seed, spec.name, spec.optuna_storage)
    ids = {c.key: c.id for c in spec.cells()}
    names: dict[int, str] = dict(state.get("names") or {})
    taken = set()
    for cell in state["cells"]:
        new_id = ids[cell.key]
        searcher.issued[new_id] = state["issued"][cell.id]
        searcher.names[new_id] = names.get(cell.id, f"{state['study_name']}-cell{cell.id}")
        taken.add(searcher.names[new_id])
        if cell.id in state["studies"]:
            searcher.studies[new_id] = state["studies"][cell.id]
    for cell in spec.cells():
        if cell.id not in searcher.names and f"{spec.name}-cell{cell.id}" in taken:
            searcher.names[cell.id] = f"{spec.name}-cell{cell.id}-{len(state['cells'])}"
    return searcher


def resumed_spec(spec: SearchSpec, search_dir: str) -> SearchSpec:
    """The spec ``--resume`` continues: an extended search's own, stored spec when ``spec`` is
    the file it was extended from (``given`` in ``spec.json``), else ``spec``."""
    saved = storage.join(search_dir, SPEC_FILE)
    note = storage.read_json(saved) if storage.is_file(saved) else {}
    if note.get("given") != spec_hash(spec) or note.get("hash") == spec_hash(spec):
        return spec
    return load_spec(note["spec"], nodes=None)
