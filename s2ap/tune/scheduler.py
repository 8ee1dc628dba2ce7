"""The scheduler: one ASHA per grid cell, so trials only ever compete inside their cell.

A 99% sparsity trial is compared with other 99% trials only, never stopped for losing to an
80% one (``scheduler.per_cell``; false shares one ASHA among all cells). ASHA's clock is
``search_epoch`` (epochs after pretraining, :mod:`s2ap.tune.clock`) and its grace period
ends after S2AP's longest warm-up. The final report of a trial (its evaluation) is never
judged. Each ASHA is driven through its public methods only: this class keeps its own
record of which trials each one has been told about.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from s2ap.tune.cells import cell_of

log = logging.getLogger(__name__)

TIME_ATTR = "search_epoch"


class CellScheduler(FIFOScheduler):
    """ASHA per grid cell (or one ASHA for all cells when ``per_cell`` is false)."""

    def __init__(
        self, metric: str, mode: str, max_t: int, grace_period: int, reduction_factor: float, per_cell: bool
    ) -> None:
        super().__init__()
        self.ranked_by = metric
        self.mode = mode
        self.max_t = max_t
        self.grace_period = grace_period
        self.reduction_factor = reduction_factor
        self.per_cell = per_cell
        self.ashas: dict[int, AsyncHyperBandScheduler] = {}
        self.known: dict[int, set[str]] = {}  # per ASHA: trials added and not yet completed or removed
        self.stopped: set[str] = set()

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
            self.ashas[key] = AsyncHyperBandScheduler(
                time_attr=TIME_ATTR,
                metric=self.ranked_by,
                mode=self.mode,
                max_t=self.max_t,
                grace_period=self.grace_period,
                reduction_factor=self.reduction_factor,
                # Trials reaching max_t run on to their final evaluation.
                stop_last_trials=False,
            )
            self.known[key] = set()
        return self.ashas[key]

    def _forget(self, key: int, trial: Trial) -> bool:
        """Whether ASHA ``key`` knew the trial (it no longer does after this)."""
        known = self.known.get(key, set())
        if trial.trial_id not in known:
            return False
        known.discard(trial.trial_id)
        return True

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        key = self._key(trial)
        self._asha(key).on_trial_add(tune_controller, trial)
        self.known[key].add(trial.trial_id)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        if result.get("final"):
            return TrialScheduler.CONTINUE
        action = self._asha(self._key(trial)).on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP:
            self.stopped.add(trial.trial_id)
            log.info("ASHA stops trial %s at search epoch %s", trial.trial_id, result.get(TIME_ATTR))
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        key = self._key(trial)
        if self._forget(key, trial):
            self._asha(key).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        key = self._key(trial)
        if self._forget(key, trial):
            self._asha(key).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return f"ASHA per {'cell' if self.per_cell else 'search'}: {len(self.stopped)} stopped"
