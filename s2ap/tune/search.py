"""Runs a :class:`~s2ap.tune.spec.SearchSpec` with Ray Tune, start to end.

The pieces: :class:`~s2ap.tune.searcher.CellSearcher` proposes trials (every grid cell its
samples, a seeded TPE study inside each cell), :class:`~s2ap.tune.scheduler.CellScheduler`
stops weak ones (ASHA per cell), :func:`~s2ap.tune.trainable.tune_trial` runs each (inside
its Tune actor with one worker, as a Ray Train job with more), and the callbacks (:mod:`s2ap.tune.callbacks`) keep the result tables current
and show a live view. :func:`run_search` joins or starts Ray (:mod:`s2ap.tune.cluster`),
builds the tuner, fits it, and writes the final tables.

Ray is imported here at module level: only the CLI, benchmarks and tests import this module.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune import Callback
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

import s2ap.tune.results as tables
from s2ap import storage
from s2ap.errors import ConfigError
from s2ap.results import column_name, describe_accuracy
from s2ap.stats import Interval
from s2ap.tune import extend
from s2ap.tune.callbacks import LiveView, ResultsWriter, fmt, live_view_to
from s2ap.tune.cluster import WORKER_ENV, connect
from s2ap.tune.extend import Extension
from s2ap.tune.preflight import check_search
from s2ap.tune.resources import TRAINABLE_CPUS
from s2ap.tune.scheduler import CellScheduler
from s2ap.tune.searcher import CellSearcher
from s2ap.tune.spec import AshaSpec, HalvingSpec, SearchSpec, spec_hash
from s2ap.tune.trainable import failure_reason, storage_args, tune_trial

log = logging.getLogger(__name__)

SPEC_FILE = extend.SPEC_FILE


@dataclass
class SearchOutcome:
    """Where the results are and what came out of them."""

    search_dir: str  # a local folder or a storage URI
    trials_path: str
    epochs_path: str
    trials: list[dict[str, Any]]
    best: dict[int, Mapping[str, Any]]
    wall_s: float


def build_tuner(
    spec: SearchSpec, search_dir: str, conc: int | None, resume: bool, ext: Extension | None = None
) -> tune.Tuner:
    """The Tune run of a search: restored (``resume``), the new trials of an extension
    (``ext``, :mod:`s2ap.tune.extend`), else a fresh one."""
    res = spec.resources
    inline = res.workers == 1  # the pipeline runs inside the trainable: it takes the worker's share
    wants = res.per_worker() if inline else {"CPU": TRAINABLE_CPUS}
    trainable = tune.with_resources(tune.with_parameters(tune_trial, spec=spec, search_dir=search_dir), wants)
    if resume:
        # Searcher, scheduler and callbacks come back from the saved tuner; finished trials
        # stay finished, unfinished ones resume from their Train checkpoints.
        where = storage_args(search_dir)
        return tune.Tuner.restore(
            where["storage_path"],
            trainable,
            resume_unfinished=True,
            resume_errored=False,
            storage_filesystem=where.get("storage_filesystem"),
        )
    s = spec.scheduler
    scheduler: TrialScheduler
    if isinstance(s, AshaSpec | HalvingSpec):
        # No rung at the last epoch: stopping a trial whose training is done saves nothing
        # but its final evaluation.
        max_t = spec.max_search_epochs() - 1
        halving = isinstance(s, HalvingSpec)
        scheduler = CellScheduler(
            s.metric,
            str(s.mode),
            max_t,
            spec.grace_period(),
            s.reduction_factor,
            s.per_cell,
            probe_after=spec.probe_after(),
            halving=halving,
            sizes=ext.new_trials if ext is not None else {c.id: c.samples for c in spec.cells()},
        )
        if ext is not None:
            # The new trials are judged against the earlier ones: seeded before the Tuner
            # pickles the scheduler, so --resume restores it seeded and seeds nothing again.
            for record in ext.earlier:
                scheduler.seed(record.trial_id, record.config, ext.reports.get(record.trial_id, []))
            log.info("%s judges the new trials against %d earlier trials", s.type, len(ext.earlier))
        if halving:
            # Paused trials count as live in Tune's concurrency limit: waiting for their
            # bracket, they would keep its last trials from ever starting. Resources bound
            # how many run at once.
            conc = None
    else:
        scheduler = FIFOScheduler()
    if ext is not None:
        searcher = extend.continued_searcher(ext)
    else:
        searcher = CellSearcher(
            spec.cells(), s.metric, str(s.mode), spec.seed, spec.name, spec.optuna_storage
        )
    earlier = ext.earlier if ext is not None else []
    callbacks: list[Callback] = [ResultsWriter(spec, search_dir, earlier), LiveView(spec)]
    return tune.Tuner(
        trainable,
        param_space={},
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=ext.total if ext is not None else spec.num_trials(),
            max_concurrent_trials=conc,
            # One worker: the next trial reuses the actor (no start, no imports); a stopped
            # trial's thread ends inside its blocked tune.report. DDP: the actor must die, its
            # Train run (controller and workers) would otherwise train on in a reused actor.
            reuse_actors=inline,
            trial_name_creator=lambda t: f"trial_{t.trial_id}",
            trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=storage.name(search_dir),
            **storage_args(storage.parent(search_dir)),
            # Tune retries a trial whose actor (or DDP controller) died, from its last
            # checkpoint; Train also retries a DDP trial's worker faults.
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
            verbose=0,
        ),
    )


def prepare_dir(spec: SearchSpec, search_dir: str, resume: bool) -> None:
    """Refuse to mix two searches in one folder; remember the spec for ``--resume``."""
    saved = storage.join(search_dir, SPEC_FILE)
    shown = storage.redact(search_dir)
    exists = storage.exists(storage.join(search_dir, "tuner.pkl"))
    if resume:
        if not exists:
            raise ConfigError("--resume", f"no search to resume in {shown}")
        if not any(n.startswith("experiment_state-") for n in storage.list_dir(search_dir)):
            raise ConfigError(
                "--resume",
                f"{shown} holds no saved Tune state yet: remove it and start the search again",
            )
        note = storage.read_json(saved) if storage.exists(saved) else {}
        if note and spec_hash(spec) not in (note.get("hash"), note.get("given")):
            raise ConfigError("--resume", f"the spec differs from the one that started {shown}")
        return
    if exists:
        raise ConfigError(
            "--out",
            f"{shown} already holds a search: pass --resume to continue it, --extend N to add to it, "
            "or pick another --out",
        )
    storage.write_text(saved, extend.spec_note(spec))


def run_search(
    spec: SearchSpec,
    *,
    address: str | None = None,
    resume: bool = False,
    extend_by: int | None = None,
    out: str | Path | None = None,
    quiet: bool = False,
    verbose: bool = False,
    preflight: bool | None = None,
) -> SearchOutcome:
    """Run (or resume) a whole search and write its tables. Uses a Ray that is already
    initialised, else joins ``address`` / ``RAY_ADDRESS``, else starts an embedded one.
    The live view goes to stdout unless ``quiet``. ``preflight`` (default: when no cluster
    address is given, so the data sets are on this machine) opens every data set and builds
    every model of the spec before Ray starts (:mod:`s2ap.tune.preflight`). ``extend_by``
    (N >= 0) extends the finished search in the folder: N more samples per grid cell, plus what
    the spec adds; only the new trials run (:mod:`s2ap.tune.extend`)."""
    start = time.time()
    search_dir = storage.check(out, "--out") if out is not None else spec.search_dir
    address = address or os.environ.get("RAY_ADDRESS") or None
    # Before Ray starts: an unknown scheme, an unreachable store, a missing bucket is one line.
    if out is not None:
        storage.probe(search_dir, "--out")
    else:
        storage.probe(spec.storage, "storage")
    if spec.pretrain_cache is not None:
        storage.probe(spec.pretrain_cache, "pretrain_cache")
    if preflight if preflight is not None else address is None:
        check_search(spec)  # a missing data set or an unbuildable model: one line, no trial
    ext = None
    if extend_by is not None:
        given = spec
        ext = extend.prepare(spec, search_dir, extend_by)  # refused before anything is written
        spec = ext.spec
        extend.start(ext, given, search_dir)
    else:
        prepare_dir(spec, search_dir, resume)
        if resume:
            spec = extend.resumed_spec(spec, search_dir)
    os.environ.update(WORKER_ENV)
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # Tune's own tables off: the live view replaces them
    # Snapshot Tune's state often: a killed driver then loses at most a few seconds.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    # Keeping 2 checkpoints per trial forces a snapshot as they rotate: intended, not a warning.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    started, conc = connect(spec, address, verbose)
    try:
        log.info(
            "search %s: %d trials, %d at a time, results in %s",
            spec.name,
            spec.num_trials(),
            conc,
            storage.redact(search_dir),
        )
        with live_view_to(None if quiet else sys.stdout):
            grid = build_tuner(spec, search_dir, conc, resume, ext).fit()
        records = [
            tables.TrialRecord(
                trial_id=str(r.metrics.get("trial_id") or Path(r.path).name.removeprefix("trial_")),
                config=dict(r.config or {}),
                state="ERROR" if r.error is not None else "TERMINATED",
                last_result=dict(r.metrics or {}),
                error=failure_reason(r.error),
            )
            for r in grid
        ]
        earlier = extend.earlier_records(search_dir) if ext is None else ext.earlier
        trials_path, epochs_path, rows = tables.write_tables(spec, [*earlier, *records], search_dir)
    finally:
        if started:
            ray.shutdown()
    return SearchOutcome(
        search_dir, trials_path, epochs_path, rows, tables.best_per_cell(rows), time.time() - start
    )


def summary_lines(spec: SearchSpec, outcome: SearchOutcome) -> list[str]:
    """What the CLI prints at the end: where the tables are, the selection rule, the best
    trial per cell with its test figures (each with its 95% interval and points, the
    clean / PGD / robust figures on one set of test points), and whether the best cells'
    robust intervals overlap."""
    rows = outcome.trials
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in tables.STATUSES}
    lines = [
        f"{len(rows)} trials in {outcome.wall_s:.0f}s: {counts['ok']} ok, {counts['stopped']} stopped early, "
        f"{counts['error']} errored",
        *saved_lines(spec, rows),
        f"trials: {outcome.trials_path}",
        f"epochs: {outcome.epochs_path}",
        f"selection: {tables.SELECTION_RULE}",
        "best per grid cell (test accuracies with 95% Wilson intervals, n = test points):",
    ]
    searched = list(spec.search)
    shown: list[tuple[str, Interval]] = []
    for cell in spec.cells():
        row = outcome.best.get(cell.id)
        head = f"  [{cell.id}] {cell.key}"
        if row is None:
            lines.append(f"{head}: no finished trial")
            continue
        params = ", ".join(f"{k}={fmt(row.get(column_name(k)))}" for k in searched if k in cell.space)
        tried = sum(1 for r in rows if r["status"] == "ok" and int(r["grid_cell"]) == cell.id)
        robust = "AutoAttack" if row.get("robust_attack") == "autoattack" else "PGD"
        figures = [("clean", "clean_acc"), ("PGD", "pgd_acc")]
        figures += [("AutoAttack", "aa_acc")] if robust == "AutoAttack" else []
        test = ", ".join(describe_accuracy(row, k, label) for label, k in figures)
        lines.append(
            f"{head}: {params or 'no searched values'} (best of {tried} finished) -> "
            f"{describe_accuracy(row, 'final_val_pgd_acc', 'val PGD')}; test {test} [trial {row['trial_id']}]"
        )
        if row.get("robust_acc_lo") is not None and row.get("robust_acc_hi") is not None:
            shown.append(
                (f"[{cell.id}]", Interval(row["robust_acc"], row["robust_acc_lo"], row["robust_acc_hi"]))
            )
    lines += overlap_lines(shown)
    return lines


def saved_lines(spec: SearchSpec, rows: list[dict[str, Any]]) -> list[str]:
    """What the scheduler saved, in trial-epochs after pretraining: each stopped trial's epochs
    it never ran (as many as its cell's finished trials ran, else the spec's longest trial),
    less what the probes cost (each trial's probe seconds over its own mean epoch seconds)."""
    if spec.scheduler.type == "fifo" or not rows or any(r.get("search_epochs_run") is None for r in rows):
        return []
    full: dict[int, int] = {}
    for r in rows:
        if r["status"] == "ok":
            full[int(r["grid_cell"])] = max(full.get(int(r["grid_cell"]), 0), int(r["search_epochs_run"]))
    ran = sum(int(r["search_epochs_run"]) for r in rows)
    stopped = [r for r in rows if r["status"] == "stopped"]
    saved = sum(
        max(0, full.get(int(r["grid_cell"]), spec.max_search_epochs()) - int(r["search_epochs_run"]))
        for r in stopped
    )
    total = max(ran + saved, 1)
    rungs = "probe" if spec.probe_after() else "epoch"
    head = f"{spec.scheduler.type} ({rungs} rungs) stopped {len(stopped)} of {len(rows)} trials: "
    probes = sum(
        float(r["probe_time_s"]) / float(r["mean_epoch_time_s"])
        for r in rows
        if r.get("probe_time_s") is not None and r.get("mean_epoch_time_s")
    )
    if not probes:
        return [f"{head}{saved} of {ran + saved} trial-epochs saved ({saved / total:.0%})"]
    net = saved - probes
    return [
        f"{head}{saved} of {ran + saved} trial-epochs saved ({saved / total:.0%}); the probes took "
        f"{probes:.1f} trial-epochs of training time, so {net:.1f} ({net / total:.0%}) saved net"
    ]


def failure_lines(spec: SearchSpec, outcome: SearchOutcome) -> tuple[int, list[str]]:
    """The search's exit status and its last lines: 0 when every grid cell has a finished
    trial (a warning line still counts the failed ones), else 1 with an ``error:`` line; both
    name the first failed trial's own error."""
    rows = outcome.trials
    failed = sorted((r for r in rows if r["status"] == "error"), key=lambda r: str(r["trial_id"]))
    first = f"; first error (trial {failed[0]['trial_id']}): {failed[0]['error']}" if failed else ""
    finished = {int(r["grid_cell"]) for r in rows if r["status"] == "ok"}
    empty = [c.id for c in spec.cells() if c.id not in finished]
    total = spec.num_trials()
    if not finished:
        return 1, [f"error: no trial finished: {len(failed)} of {total} trials failed{first}"]
    if empty:
        cells = ", ".join(str(c) for c in empty)
        return 1, [
            f"error: {len(empty)} of {len(spec.cells())} grid cells have no finished trial (cells {cells}): "
            f"{len(failed)} of {total} trials failed{first}"
        ]
    if failed:
        return 0, [f"warning: {len(failed)} of {total} trials failed{first}"]
    return 0, []


def overlap_lines(best: list[tuple[str, Interval]], shown: int = 6) -> list[str]:
    """One line saying whether the best cells' robust intervals overlap (then the test set
    cannot tell them apart, whatever their point estimates say); at most ``shown`` pairs named."""
    if len(best) < 2:
        return []
    pairs = [f"{a} and {b}" for i, (a, x) in enumerate(best) for b, y in best[i + 1 :] if x.overlaps(y)]
    if not pairs:
        return ["robust intervals of the best cells do not overlap"]
    total = len(best) * (len(best) - 1) // 2
    named = ", ".join(pairs[:shown]) + (", ..." if len(pairs) > shown else "")
    return [
        f"robust intervals overlap for {len(pairs)} of {total} cell pairs ({named}): "
        "those cells are not resolved on this test set"
    ]
