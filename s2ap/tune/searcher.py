"""The searcher: every grid cell gets its samples; inside a cell a seeded TPE study proposes.

:class:`CellSearcher` walks the grid cells round-robin and, inside each cell, lets a seeded
Optuna TPE study (Tune's ``OptunaSearch``) propose the searched values. One study per cell,
because the best gamma for HYDRA at 99% sparsity says little about the best gamma for HARP
at 80%. A trial's Tune config is ``{"cell": id, grid values..., searched values...}``: the
dotted overrides :meth:`~s2ap.tune.spec.SearchSpec.trial_config` turns into its experiment.

Each study is told what happened: every epoch's ranked metric as an intermediate value at
its ``search_epoch``; a trial that ran to its final report as COMPLETE with its final value;
a trial ASHA stopped as PRUNED (so TPE never mixes rung values with final ones); a trial
that diverged or failed as FAIL.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any

import optuna
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from s2ap.tune.cells import CELL_KEY, Cell
from s2ap.tune.scheduler import TIME_ATTR
from s2ap.tune.space import Categorical, Distribution, IntRange, LogUniform


def optuna_distribution(dist: Distribution) -> optuna.distributions.BaseDistribution:
    if isinstance(dist, Categorical):
        return optuna.distributions.CategoricalDistribution(list(dist.values))
    if isinstance(dist, IntRange):
        return optuna.distributions.IntDistribution(dist.low, dist.high, log=dist.log, step=dist.step or 1)
    if isinstance(dist, LogUniform):
        return optuna.distributions.FloatDistribution(dist.low, dist.high, log=True)
    return optuna.distributions.FloatDistribution(dist.low, dist.high, step=dist.step)


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
        self.studies: dict[int, OptunaSearch] = {}
        self.next_cell = 0
        # Study names other than ``<study_name>-cell<id>`` (an extension's renumbered cells)
        self.names: dict[int, str] = {}

    def _study(self, cell: Cell) -> OptunaSearch:
        if cell.id not in self.studies:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            # TPE's default of 10 random start-up trials would leave a handful of samples
            # entirely random; start modelling after a third of the budget (at least 2).
            startup = min(10, max(2, cell.samples // 3))
            sampler = optuna.samplers.TPESampler(seed=self.seed * 1009 + cell.id, n_startup_trials=startup)
            storage = optuna.storages.RDBStorage(self.optuna_storage) if self.optuna_storage else None
            self.studies[cell.id] = OptunaSearch(
                space={k: optuna_distribution(d) for k, d in cell.space.items()},
                metric=self.metric,
                mode=self.mode,
                sampler=sampler,
                study_name=self.names.get(cell.id, f"{self.study_name}-cell{cell.id}"),
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

    def _study_of(self, trial_id: str) -> OptunaSearch | None:
        cell_id = self.trial_cell.get(trial_id)
        return None if cell_id is None else self.studies.get(cell_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        study = self._study_of(trial_id)
        value, step = result.get(self.metric), result.get(TIME_ATTR)
        if study is None or result.get("final") or value is None or not step:
            return  # pretraining (step 0) is shared by every trial and says nothing
        study.on_trial_result(trial_id, {self.metric: value, TRAINING_ITERATION: int(step)})

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        study = self._study_of(trial_id)
        if study is None:
            return
        # A diverged or failed trial is a failed Optuna trial, not a score of zero.
        failed = error or bool((result or {}).get("diverged"))
        if failed or not (result or {}).get("final"):
            # Without a value, OptunaSearch tells FAIL (error) or PRUNED (stopped early; its
            # intermediate values stay with it).
            study.on_trial_complete(trial_id, None, error=failed)
            return
        study.on_trial_complete(trial_id, result, error=False)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
