"""The scheduler: one ASHA (or halving bracket) per grid cell, so trials only ever compete
inside their cell.

A 99% sparsity trial is compared with other 99% trials only, never stopped for losing to an
80% one (``scheduler.per_cell``; false shares one ASHA among all cells). ASHA's clock is
``search_epoch`` (epochs after pretraining, :mod:`s2ap.tune.clock`) and its grace period
ends after S2AP's longest warm-up. The final report of a trial (its evaluation) is never
judged. Each ASHA is driven through its public methods only: this class keeps its own
record of which trials each one has been told about.

Rungs (``scheduler.rungs``): ``epochs`` judges ``val_pgd_acc`` at ASHA's milestones of
``search_epoch``; ``probe`` judges only the probes (``prune.probe_after``), each trial's
``probe_val_pgd_acc``, the ``r``-th probe being rung ``r``. ``scheduler.type: halving`` is
synchronous successive halving on the probe rungs (:mod:`s2ap.tune.halving`): a trial at a
rung pauses until its whole bracket has reported it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from s2ap.tune.cells import cell_of
from s2ap.tune.halving import Bracket, Decision

log = logging.getLogger(__name__)

TIME_ATTR = "search_epoch"
PROBE = "probe_val_pgd_acc"


@dataclass(frozen=True)
class EarlierTrial:
    """An earlier run's trial as ASHA sees it while it is replayed: ASHA reads its id only."""

    trial_id: str
    config: Mapping[str, Any]


class CellScheduler(FIFOScheduler):
    """ASHA or synchronous halving per grid cell (or one for all cells when ``per_cell`` is
    false). ``probe_after`` (the probe's pruning epochs) puts the rungs at the probes;
    ``halving`` needs it and ``sizes`` (each cell's trial count, the bracket's size)."""

    def __init__(
        self,
        metric: str,
        mode: str,
        max_t: int,
        grace_period: int,
        reduction_factor: float,
        per_cell: bool,
        probe_after: tuple[int, ...] = (),
        halving: bool = False,
        sizes: dict[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.ranked_by = metric
        self.mode = mode
        self.max_t = max_t
        self.grace_period = grace_period
        self.reduction_factor = reduction_factor
        self.per_cell = per_cell
        self.probe_after = tuple(probe_after)
        self.halving = halving
        self.sizes = dict(sizes or {})
        self.ashas: dict[int, AsyncHyperBandScheduler] = {}
        self.brackets: dict[int, Bracket] = {}
        self.known: dict[int, set[str]] = {}  # per ASHA: trials added and not yet completed or removed
        self.stopped: set[str] = set()
        self.trials: dict[str, Trial] = {}
        self.to_resume: set[str] = set()
        self.seeded: set[str] = set()  # earlier trials replayed (seed)

    @property
    def metric(self) -> str:
        """What trials are ranked by (Tune checks every result reports it)."""
        return self.ranked_by

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # metric and mode come from the spec

    def _key(self, trial: Trial) -> int:
        return cell_of(trial.config) if self.per_cell else 0

    def _asha(self, key: int) -> AsyncHyperBandScheduler:
        if key not in self.ashas:
            probes = len(self.probe_after)
            self.ashas[key] = AsyncHyperBandScheduler(
                time_attr=TIME_ATTR,
                metric=self.ranked_by,
                mode=self.mode,
                # On probe rungs the clock is the probe's number: rungs 1, rf, rf^2 ... probes.
                max_t=probes + 1 if probes else self.max_t,
                grace_period=1 if probes else self.grace_period,
                reduction_factor=self.reduction_factor,
                # Trials reaching max_t run on to their final evaluation.
                stop_last_trials=False,
            )
            self.known[key] = set()
        return self.ashas[key]

    def _bracket(self, key: int) -> Bracket:
        if key not in self.brackets:
            size = self.sizes.get(key, 0) if self.per_cell else sum(self.sizes.values())
            self.brackets[key] = Bracket(size, len(self.probe_after), self.reduction_factor, self.mode)
            self.known[key] = set()
        return self.brackets[key]

    def _forget(self, key: int, trial: Trial) -> bool:
        """Whether the ASHA or bracket ``key`` knew the trial (it no longer does after this)."""
        known = self.known.get(key, set())
        if trial.trial_id not in known:
            return False
        known.discard(trial.trial_id)
        return True

    def _rung_result(self, result: Mapping[str, Any]) -> dict | None:
        """What the scheduler judges: the result itself on epoch rungs; on probe rungs the
        probe's value at its number as the clock, and None for every other epoch."""
        if not self.probe_after:
            return dict(result)
        value = result.get(PROBE)
        if result.get("phase") != "prune" or value is None:
            return None
        rung = sum(1 for p in self.probe_after if p <= int(result["epoch"]) + 1)
        return {**result, TIME_ATTR: rung, self.ranked_by: value}

    def seed(self, trial_id: str, config: Mapping[str, Any], reports: Iterable[Mapping[str, Any]]) -> None:
        """Replay a trial of an earlier run of the search (an extension's, before it starts):
        ``reports`` are its epochs' results in order (``epochs.parquet``'s rows), judged as a
        live trial's would be, so its rung values set the bar for the new trials of its cell.
        ASHA is told through its public methods (add, results, remove): it keeps a removed
        trial's rung values, and what it answers for the replayed trial is ignored. A trial
        seeded once is not seeded again."""
        if trial_id in self.seeded:
            return
        self.seeded.add(trial_id)
        key = cell_of(config) if self.per_cell else 0
        judged = [
            j for j in map(self._rung_result, reports) if j is not None and j.get(self.ranked_by) is not None
        ]
        if self.halving:
            bracket = self._bracket(key)
            for j in judged:
                bracket.add_earlier(trial_id, int(j[TIME_ATTR]), float(j[self.ranked_by]))
            return
        asha, stand_in = self._asha(key), cast(Trial, EarlierTrial(trial_id, dict(config)))
        asha.on_trial_add(None, stand_in)
        for j in judged:
            asha.on_trial_result(None, stand_in, j)
        asha.on_trial_remove(None, stand_in)

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        key = self._key(trial)
        self.trials[trial.trial_id] = trial
        if self.halving:
            self._bracket(key).add(trial.trial_id)
        else:
            self._asha(key).on_trial_add(tune_controller, trial)
        self.known[key].add(trial.trial_id)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        judged = None if result.get("final") else self._rung_result(result)
        if judged is None:
            return TrialScheduler.CONTINUE
        key = self._key(trial)
        if self.halving:
            decision = self._bracket(key).on_rung(
                trial.trial_id, int(judged[TIME_ATTR]), float(judged[self.ranked_by])
            )
            action = self._apply(tune_controller, decision)
        else:
            action = self._asha(key).on_trial_result(tune_controller, trial, judged)
        if action == TrialScheduler.STOP:
            self.stopped.add(trial.trial_id)
            log.info(
                "%s stops trial %s at search epoch %s", self._name(), trial.trial_id, result.get(TIME_ATTR)
            )
        return action

    def _apply(self, tune_controller: Any, decision: Decision) -> str:
        """Tune's side of a halving decision: waiting losers stop, waiting winners resume."""
        for trial_id in decision.stop:
            self.stopped.add(trial_id)
            self.to_resume.discard(trial_id)
            log.info("halving stops waiting trial %s", trial_id)
            tune_controller.stop_trial(self.trials[trial_id])
        self.to_resume |= set(decision.resume)
        return {"CONTINUE": TrialScheduler.CONTINUE, "PAUSE": TrialScheduler.PAUSE}.get(
            decision.action, TrialScheduler.STOP
        )

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        for trial in tune_controller.get_trials():
            if trial.status == Trial.PAUSED and trial.trial_id in self.to_resume:
                self.to_resume.discard(trial.trial_id)
                return trial
        for trial in tune_controller.get_trials():
            if trial.status == Trial.PENDING:
                return trial
        return None  # a paused trial waits for its rung's decision

    def _end(self, tune_controller: Any, trial: Trial, result: dict | None) -> None:
        key = self._key(trial)
        if not self._forget(key, trial):
            return
        if self.halving:
            self._apply(tune_controller, self._bracket(key).on_end(trial.trial_id))
        elif result is None:
            self._asha(key).on_trial_remove(tune_controller, trial)
        else:
            self._asha(key).on_trial_complete(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        self._end(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._end(tune_controller, trial, None)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self._end(tune_controller, trial, None)

    def _name(self) -> str:
        return "halving" if self.halving else "ASHA"

    def debug_string(self) -> str:
        return f"{self._name()} per {'cell' if self.per_cell else 'search'}: {len(self.stopped)} stopped"
