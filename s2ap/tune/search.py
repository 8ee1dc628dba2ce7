"""Runs a :class:`~s2ap.tune.spec.SearchSpec` with Ray Tune.

* :class:`CellSearcher` walks the grid cells round-robin and, inside each cell, lets a
  seeded Optuna TPE study (Tune's ``OptunaSearch``) propose the searched values. One study
  per cell, because the best gamma for HYDRA at 99% sparsity says little about the best
  gamma for HARP at 80%.
* :class:`CellScheduler` keeps one ASHA per grid cell (``scheduler.per_cell``), so a 99%
  sparsity trial is only ever compared with other 99% trials, never stopped for losing to
  an 80% one. ASHA's clock is ``search_epoch`` (epochs after pretraining) and its grace
  period ends after S2AP's longest warm-up.
* :class:`ResultsWriter` rewrites ``trials.parquet`` / ``epochs.parquet`` whenever a trial
  ends, and :class:`LiveView` prints a compact live view of the search.

Ray is imported here at module level: only the CLI and tests import this module.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import ray
from ray import tune
from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from s2ap.config import ConfigError
from s2ap.tune import results as tables
from s2ap.tune.spec import (
    TRAINABLE_CPUS,
    Cell,
    Distribution,
    SearchSpec,
    check_resources,
    concurrency,
    embedded_cpus,
    spec_hash,
    spec_to_dict,
)
from s2ap.tune.trainable import CELL_KEY, TrialDiverged, TrialFailed, tune_trial

log = logging.getLogger(__name__)

SPEC_FILE = "spec.json"
# Environment of every Ray process of the search. Train's controller polls its workers at
# this interval; the default 2 s would add up to 2 s to each epoch's report.
WORKER_ENV = {"RAY_TRAIN_V2_ENABLED": "1", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}


# --------------------------------------------------------------------------- searcher


def optuna_distribution(dist: Distribution) -> Any:
    import optuna

    if dist.type == "categorical":
        return optuna.distributions.CategoricalDistribution(list(dist.values))
    if dist.type == "int":
        return optuna.distributions.IntDistribution(
            int(dist.low),
            int(dist.high),
            log=dist.log,
            step=int(dist.step or 1),  # type: ignore[arg-type]
        )
    if dist.type == "loguniform":
        return optuna.distributions.FloatDistribution(float(dist.low), float(dist.high), log=True)  # type: ignore[arg-type]
    return optuna.distributions.FloatDistribution(
        float(dist.low),
        float(dist.high),
        step=None if dist.step is None else float(dist.step),  # type: ignore[arg-type]
    )


class CellSearcher(Searcher):
    """Every grid cell gets its samples; inside a cell a seeded TPE study proposes values."""

    def __init__(
        self,
        cells: Sequence[Cell],
        metric: str,
        mode: str,
        seed: int,
        study_name: str,
        optuna_storage: str | None = None,
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self.cells = list(cells)
        self.seed = seed
        self.study_name = study_name
        self.optuna_storage = optuna_storage
        self.issued = [0] * len(self.cells)
        self.trial_cell: dict[str, int] = {}
        self.studies: dict[int, Any] = {}
        self.next_cell = 0

    def _study(self, cell: Cell) -> Any:
        if cell.id not in self.studies:
            import optuna
            from ray.tune.search.optuna import OptunaSearch

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            # TPE's default of 10 random start-up trials would leave a handful of samples
            # entirely random; start modelling after a third of the budget (at least 2).
            startup = min(10, max(2, cell.samples // 3))
            sampler = optuna.samplers.TPESampler(seed=self.seed * 1009 + cell.id, n_startup_trials=startup)
            storage = optuna.storages.RDBStorage(self.optuna_storage) if self.optuna_storage else None
            self.studies[cell.id] = OptunaSearch(
                space={k: optuna_distribution(d) for k, d in cell.space.items()},
                metric=self._metric,
                mode=self._mode,
                sampler=sampler,
                study_name=f"{self.study_name}-cell{cell.id}",
                storage=storage,
            )
        return self.studies[cell.id]

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # metric, mode and space come from the spec

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        for _ in range(len(self.cells)):
            cell = self.cells[self.next_cell]
            self.next_cell = (self.next_cell + 1) % len(self.cells)
            if self.issued[cell.id] < cell.samples:
                break
        else:
            return Searcher.FINISHED  # type: ignore[return-value]
        params = self._study(cell).suggest(trial_id) if cell.space else {}
        self.issued[cell.id] += 1
        self.trial_cell[trial_id] = cell.id
        return {CELL_KEY: cell.id, **cell.values, **params}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        cell_id = self.trial_cell.get(trial_id)
        if cell_id is None or cell_id not in self.studies:
            return
        # A diverged or failed trial is a failed Optuna trial, not a score of zero.
        self.studies[cell_id].on_trial_complete(trial_id, None if error else result, error=error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


# --------------------------------------------------------------------------- scheduler


class CellScheduler(FIFOScheduler):
    """ASHA per grid cell (or one ASHA for all cells when ``per_cell`` is false)."""

    def __init__(
        self, metric: str, mode: str, max_t: int, grace_period: int, reduction_factor: float, per_cell: bool
    ) -> None:
        super().__init__()
        self._metric = metric
        self.mode = mode
        self.max_t = max_t
        self.grace_period = grace_period
        self.reduction_factor = reduction_factor
        self.per_cell = per_cell
        self.ashas: dict[int, AsyncHyperBandScheduler] = {}
        self.stopped: set[str] = set()

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True

    def _asha(self, trial: Trial) -> AsyncHyperBandScheduler:
        key = int(trial.config.get(CELL_KEY, 0)) if self.per_cell else 0
        if key not in self.ashas:
            self.ashas[key] = AsyncHyperBandScheduler(
                time_attr="search_epoch",
                metric=self._metric,
                mode=self.mode,
                max_t=self.max_t,
                grace_period=self.grace_period,
                reduction_factor=self.reduction_factor,
                # Trials reaching max_t run on to their final evaluation.
                stop_last_trials=False,
            )
        return self.ashas[key]

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self._asha(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        if result.get("final"):
            return TrialScheduler.CONTINUE
        action = self._asha(trial).on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP:
            self.stopped.add(trial.trial_id)
            log.info("ASHA stops trial %s at search epoch %s", trial.trial_id, result.get("search_epoch"))
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        asha = self._asha(trial)
        if trial.trial_id in asha._trial_info:
            asha.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._asha(trial)._trial_info.pop(trial.trial_id, None)

    def debug_string(self) -> str:
        return f"ASHA per {'cell' if self.per_cell else 'search'}: {len(self.stopped)} stopped"


# --------------------------------------------------------------------------- callbacks


def _error_text(trial: Trial) -> str | None:
    try:
        exc = trial.get_pickled_error()
    except Exception:  # noqa: BLE001 - a missing or unreadable error file
        exc = None
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, TrialDiverged | TrialFailed):
            return str(exc)
        exc = getattr(exc, "cause", None) or exc.__cause__
        seen += 1
    try:
        text = trial.get_error()
    except Exception:  # noqa: BLE001
        text = None
    if text is not None:
        lines = [line for line in str(text).splitlines() if line.strip()]
        return lines[-1][:500] if lines else None
    return None


def _records(trials: Sequence[Trial], done: Trial | None = None) -> list[tables.TrialRecord]:
    out = []
    for t in trials:
        state = "TERMINATED" if t is done and t.status == Trial.RUNNING else t.status
        if state not in (Trial.TERMINATED, Trial.ERROR):
            continue
        out.append(
            tables.TrialRecord(
                trial_id=t.trial_id,
                config=dict(t.config),
                state=state,
                last_result=dict(t.last_result or {}),
                error=_error_text(t) if state == Trial.ERROR else None,
            )
        )
    return out


class ResultsWriter(Callback):
    """Keeps both Parquet tables current while the search runs."""

    def __init__(self, spec: SearchSpec, search_dir: Path) -> None:
        self.spec = spec
        self.search_dir = search_dir
        self.trials: list[dict[str, Any]] = []

    def write(self, trials: Sequence[Trial], done: Trial | None = None) -> None:
        try:
            _, _, self.trials = tables.write_tables(self.spec, _records(trials, done), self.search_dir)
        except Exception:  # results must never kill the search; the next write retries
            log.exception("could not write the result tables")

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.write(trials, trial)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.write(trials)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self.write(trials)


def _short_params(config: Mapping[str, Any], cell: Cell | None) -> str:
    keys = [k for k in config if k != CELL_KEY and (cell is None or k not in cell.values)]
    return ", ".join(f"{k}={_fmt(config[k])}" for k in keys)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# Whether LiveView prints. A module setting rather than a LiveView field: on --resume the
# callbacks come back pickled from the first run, but --quiet is this run's choice.
VIEW = {"quiet": False}


@dataclass
class LiveView(Callback):
    """A compact live view: a line per trial event and a status line every ``every`` s."""

    spec: SearchSpec
    every: float = 15.0
    out: TextIO | None = None
    _cells: dict[int, Cell] = field(default_factory=dict)
    _last: float = 0.0
    _start: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self._cells = {c.id: c for c in self.spec.cells()}

    def setup(self, **info: Any) -> None:
        self._start, self._last = time.time(), 0.0  # also after a --resume

    def _print(self, text: Any) -> None:
        """``text`` may be a callable: a view bug must never stop the search."""
        if VIEW["quiet"]:
            return
        try:
            line = text() if callable(text) else text
        except Exception:  # noqa: BLE001
            log.debug("live view could not format a line", exc_info=True)
            return
        stream = self.out or sys.stdout
        print(f"[{_clock(time.time() - self._start)}] {line}", file=stream, flush=True)

    def _cell(self, trial: Trial) -> Cell | None:
        return self._cells.get(int(trial.config.get(CELL_KEY, 0)))

    def _label(self, trial: Trial) -> str:
        cell = self._cell(trial)
        where = f"cell {cell.id}" if cell is not None and self.spec.grid else ""
        params = _short_params(trial.config, cell)
        return f"trial {trial.trial_id} [{', '.join(x for x in (where, params) if x)}]"

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._print(lambda: f"start  {self._label(trial)}")

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._print(lambda: self._ended(trial))

    def _ended(self, trial: Trial) -> str:
        r = trial.last_result or {}
        val = r.get("val_pgd_acc")
        if r.get("final"):
            robust = r.get("final_robust_acc")
            kind = "AA" if r.get("final_aa_acc") is not None else "PGD"
            return (
                f"done   {self._label(trial)}: val PGD {_pct(val)}, test clean {_pct(r.get('final_clean_acc'))}, "
                f"robust {_pct(robust)} ({kind})"
            )
        return (
            f"stop   {self._label(trial)} at search epoch {r.get('search_epoch')} (val PGD {_pct(val)}, ASHA)"
        )

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._print(lambda: f"ERROR  {self._label(trial)}: {_error_text(trial)}")

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        now = time.time()
        if now - self._last < self.every:
            return
        self._last = now
        self._print(lambda: self._status(trials))

    def _status(self, trials: list[Trial]) -> str:
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        running = [t for t in trials if t.status == Trial.RUNNING]
        progress = ", ".join(f"{t.trial_id} {_where(t.last_result or {})}" for t in running[:4])
        best = None
        for t in trials:
            r = t.last_result or {}
            score = r.get("val_pgd_acc")
            if r.get("final") and score is not None and (best is None or score > best[1]):
                best = (t, score)
        return (
            f"{counts.get(Trial.RUNNING, 0)} running, {counts.get(Trial.PENDING, 0)} pending, "
            f"{counts.get(Trial.TERMINATED, 0)} ended, {counts.get(Trial.ERROR, 0)} errored"
            + (f" | {progress}" if progress else "")
            + (f" | best val PGD {best[1]:.4f} ({self._label(best[0])})" if best else "")
        )


def _where(result: Mapping[str, Any]) -> str:
    if "phase" not in result:
        return "starting"
    return f"{result['phase']} {int(result.get('epoch', 0)) + 1} (val PGD {_pct(result.get('val_pgd_acc'))})"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4f}"


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m:02d}:{s:02d}"


# --------------------------------------------------------------------------- running


@dataclass
class SearchOutcome:
    """Where the results are and what came out of them."""

    search_dir: Path
    trials_path: Path
    epochs_path: Path
    trials: list[dict[str, Any]]
    best: dict[int, Mapping[str, Any]]
    wall_s: float


def runtime_env(address: str | None = None) -> dict[str, Any]:
    """The job-level runtime env a search needs; pass it to ``ray.init`` when you start or
    join Ray yourself (tests, notebooks).

    ``address`` becomes ``RAY_ADDRESS`` in every Ray process of the job. Train's
    PlacementGroupCleaner (which frees a trial's worker resources when Tune kills the
    trial, e.g. an ASHA stop) queries the state API without an address; on a machine that
    runs more than one Ray instance that lookup fails, the cleaner dies, the stopped trial's
    placement group is never released, and the next trials wait for CPUs forever.
    """
    env = dict(WORKER_ENV)
    if address and not address.startswith("ray://") and address not in ("auto", "local"):
        env["RAY_ADDRESS"] = address
    return {"env_vars": env}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def start_local_ray(num_cpus: int, *, verbose: bool = False) -> str:
    """Start a new single-node Ray for this process (never joining another instance on the
    machine) whose processes all know its address. Returns the GCS address."""
    port = _free_port()
    address = f"{ray.util.get_node_ip_address()}:{port}"
    saved = os.environ.get("RAY_GCS_SERVER_PORT")
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)  # fixes the address before it starts
    try:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            runtime_env=runtime_env(address),
            log_to_driver=verbose,
            logging_level=logging.WARNING,
        )
    finally:
        if saved is None:
            os.environ.pop("RAY_GCS_SERVER_PORT", None)
        else:
            os.environ["RAY_GCS_SERVER_PORT"] = saved
    actual = ray.get_runtime_context().gcs_address
    if actual != address:
        log.warning("Ray started at %s, not %s: placement-group cleanup may not find it", actual, address)
    return actual


def join_ray(address: str, *, verbose: bool = False) -> None:
    """Join an existing cluster (``host:port``, ``auto`` or ``ray://``)."""
    ray.init(
        address=address,
        runtime_env=runtime_env(address),
        log_to_driver=verbose,
        logging_level=logging.WARNING,
    )


def _cluster_nodes() -> list[dict[str, float]]:
    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


def _connect(spec: SearchSpec, address: str | None, verbose: bool) -> tuple[bool, int]:
    """Join (or start) Ray. Returns (started here, concurrent trials)."""
    if ray.is_initialized():
        started = False
    elif address:
        join_ray(address, verbose=verbose)
        started = True
    else:
        start_local_ray(embedded_cpus(spec)[0], verbose=verbose)
        started = True
    nodes = _cluster_nodes()
    embedded = started and not address
    try:
        check_resources(spec, nodes, embedded=embedded)
        conc = embedded_cpus(spec)[1] if embedded else concurrency(spec, nodes)
        if spec.max_concurrent is not None:
            conc = min(conc, spec.max_concurrent)
        if conc < 1:
            raise ConfigError(
                "resources",
                f"one trial ({spec.resources.workers} x {spec.resources.cpus_per_worker:g} CPUs + "
                f"{TRAINABLE_CPUS} for its driver) does not fit this cluster",
            )
    except ConfigError:
        if started:
            ray.shutdown()
        raise
    return started, conc


def build_tuner(spec: SearchSpec, search_dir: Path, conc: int, resume: bool) -> tune.Tuner:
    trainable = tune.with_resources(
        tune.with_parameters(tune_trial, spec=spec, search_dir=str(search_dir)), {"CPU": TRAINABLE_CPUS}
    )
    if resume:
        # Searcher, scheduler and callbacks come back from the saved tuner; finished trials
        # stay finished, unfinished ones resume from their Train checkpoints.
        return tune.Tuner.restore(str(search_dir), trainable, resume_unfinished=True, resume_errored=False)
    s = spec.scheduler
    scheduler: TrialScheduler
    if s.type == "asha":
        # No rung at the last epoch: stopping a trial whose training is done saves nothing
        # but its final evaluation.
        max_t = spec.max_search_epochs() - 1
        scheduler = CellScheduler(
            s.metric, s.mode, max_t, spec.grace_period(), s.reduction_factor, s.per_cell
        )
    else:
        scheduler = FIFOScheduler()
    searcher = CellSearcher(spec.cells(), s.metric, s.mode, spec.seed, spec.name, spec.optuna_storage)
    callbacks: list[Callback] = [ResultsWriter(spec, search_dir), LiveView(spec)]
    return tune.Tuner(
        trainable,
        param_space={},
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=spec.num_trials(),
            max_concurrent_trials=conc,
            # A stopped trial's actor must die: its Train run (controller and workers) is
            # owned by it and would otherwise keep training in a cached, reused actor.
            reuse_actors=False,
            trial_name_creator=lambda t: f"trial_{t.trial_id}",
            trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=search_dir.name,
            storage_path=str(search_dir.parent),
            failure_config=tune.FailureConfig(max_failures=0),  # Train retries worker faults
            callbacks=callbacks,
            verbose=0,
        ),
    )


def prepare_dir(spec: SearchSpec, search_dir: Path, resume: bool) -> None:
    """Refuse to mix two searches in one folder; remember the spec for ``--resume``."""
    saved = search_dir / SPEC_FILE
    exists = (search_dir / "tuner.pkl").exists()
    if resume:
        if not exists:
            raise ConfigError("--resume", f"no search to resume in {search_dir}")
        if not any(search_dir.glob("experiment_state-*.json")):
            raise ConfigError(
                "--resume",
                f"{search_dir} holds no saved Tune state yet: remove it and start the search again",
            )
        if saved.exists() and json.loads(saved.read_text()).get("hash") != spec_hash(spec):
            raise ConfigError("--resume", f"the spec differs from the one that started {search_dir}")
        return
    if exists:
        raise ConfigError(
            "--out",
            f"{search_dir} already holds a search: pass --resume to continue it, or pick another --out",
        )
    search_dir.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps({"hash": spec_hash(spec), "spec": spec_to_dict(spec)}, indent=1, default=str))


def run_search(
    spec: SearchSpec,
    *,
    address: str | None = None,
    resume: bool = False,
    out: str | Path | None = None,
    quiet: bool = False,
    verbose: bool = False,
) -> SearchOutcome:
    """Run (or resume) a whole search and write its tables. Uses a Ray that is already
    initialised, else joins ``address`` / ``RAY_ADDRESS``, else starts an embedded one."""
    start = time.time()
    search_dir = Path(out).resolve() if out is not None else spec.search_dir
    address = address or os.environ.get("RAY_ADDRESS") or None
    prepare_dir(spec, search_dir, resume)
    os.environ.update(WORKER_ENV)
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # Tune's own tables off: LiveView replaces them
    # Snapshot Tune's state often: a killed driver then loses at most a few seconds.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    VIEW["quiet"] = quiet
    started, conc = _connect(spec, address, verbose)
    try:
        log.info(
            "search %s: %d trials, %d at a time, results in %s",
            spec.name,
            spec.num_trials(),
            conc,
            search_dir,
        )
        tuner = build_tuner(spec, search_dir, conc, resume)
        grid = tuner.fit()
        records = [
            tables.TrialRecord(
                trial_id=str(r.metrics.get("trial_id") or Path(r.path).name.removeprefix("trial_")),
                config=dict(r.config or {}),
                state="ERROR" if r.error is not None else "TERMINATED",
                last_result=dict(r.metrics or {}),
                error=_unwrap(r.error),
            )
            for r in grid
        ]
        trials_path, epochs_path, rows = tables.write_tables(spec, records, search_dir)
    finally:
        if started:
            ray.shutdown()
    return SearchOutcome(
        search_dir, trials_path, epochs_path, rows, tables.best_per_cell(rows), time.time() - start
    )


def _unwrap(error: BaseException | None) -> str | None:
    seen = 0
    exc = error
    while exc is not None and seen < 5:
        if isinstance(exc, TrialDiverged | TrialFailed):
            return str(exc)
        exc = getattr(exc, "cause", None) or exc.__cause__
        seen += 1
    if error is None:
        return None
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1][:500] if lines else type(error).__name__


def summary_lines(spec: SearchSpec, outcome: SearchOutcome) -> list[str]:
    """What the CLI prints at the end: where the tables are and the best config per cell."""
    rows = outcome.trials
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in tables.STATUSES}
    lines = [
        f"{len(rows)} trials in {outcome.wall_s:.0f}s: {counts['ok']} ok, {counts['stopped']} stopped early, "
        f"{counts['error']} errored",
        f"trials: {outcome.trials_path}",
        f"epochs: {outcome.epochs_path}",
        "best per grid cell (chosen by final validation PGD accuracy; test accuracies shown):",
    ]
    searched = list(spec.search)
    for cell in spec.cells():
        row = outcome.best.get(cell.id)
        head = f"  [{cell.id}] {cell.key}"
        if row is None:
            lines.append(f"{head}: no finished trial")
            continue
        params = ", ".join(f"{k}={_fmt(row.get(k))}" for k in searched if k in cell.space)
        robust = row.get("robust_acc")
        kind = "AA" if row.get("aa_acc") is not None else "PGD"
        lines.append(
            f"{head}: {params or 'no searched values'} -> val PGD {row.get('final_val_pgd_acc') or 0:.4f}, "
            f"test clean {row.get('clean_acc') or 0:.4f}, robust {robust if robust is not None else math.nan:.4f} "
            f"({kind}) [trial {row['trial_id']}]"
        )
    return lines
