"""What a search checks before Ray starts: every distinct data set opens and every distinct
model builds on it.

The spec's own checks cover the values; these cover what only the files and the code can say
(a data set missing under ``data.root``, a model that does not import, an RGB-only model on
gray data, a checkpoint that does not fit). Without them each trial would start, fail with
the same error and leave the search to exit as if it had run. Each data set is loaded once and
each model built once on the CPU, with one forward for external models, and both are dropped
again; the cost is a second or two on the quickstart (see :func:`check_search`'s log line).

Ray is not imported here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import torch

from s2ap.config import ExperimentConfig
from s2ap.data import DataInfo, load_splits
from s2ap.errors import ConfigError
from s2ap.experiment import bound_model, with_overrides
from s2ap.pruning import build_method
from s2ap.tune.cells import Cell, in_spec
from s2ap.tune.space import corners
from s2ap.tune.spec import SearchSpec

log = logging.getLogger(__name__)


def _data_key(cfg: ExperimentConfig) -> str:
    return repr(cfg.data)


def _model_key(cfg: ExperimentConfig) -> str:
    return repr((cfg.data, cfg.model, cfg.prune))


def check_experiment(cfg: ExperimentConfig, data: dict[str, DataInfo], built: set[str]) -> None:
    """Open ``cfg``'s data set (unless ``data`` has it) and build its model on it (unless
    ``built`` has it), exactly as a run would; a failure is the run's own ConfigError."""
    key = _data_key(cfg)
    if key not in data:
        data[key] = load_splits(cfg.data, cfg.seed).info
    info = data[key]
    if _model_key(cfg) in built:
        return
    with torch.random.fork_rng():  # the check must not move any seed the run draws from
        bound_model(cfg, info, build_method(cfg))
    built.add(_model_key(cfg))


def _cell_configs(
    spec: SearchSpec, cells: Iterable[Cell]
) -> Iterable[tuple[Cell, dict[str, Any], ExperimentConfig]]:
    for cell in cells:
        for corner in corners(cell.space):
            values = {**cell.values, **corner, "device": "cpu"}  # the check builds on the CPU
            yield cell, corner, with_overrides(spec.base, values)


def check_search(spec: SearchSpec) -> float:
    """Raise the first cell's :class:`ConfigError` (aimed at the spec field: ``base.data.root``,
    ``grid.model.name`` at a value) if a data set or model of the search cannot be used.
    Returns the seconds the check took."""
    start = time.perf_counter()
    data: dict[str, DataInfo] = {}
    built: set[str] = set()
    gridded = bool(spec.grid)
    for cell, corner, cfg in _cell_configs(spec, spec.cells()):
        try:
            check_experiment(cfg, data, built)
        except ConfigError as exc:
            where = f" in grid cell {cell.id} ({cell.key})" if gridded else ""
            raise in_spec(exc, where, cell.values, corner) from None
    took = time.perf_counter() - start
    log.info("preflight: %d data set(s) opened, %d model(s) built in %.1f s", len(data), len(built), took)
    return took
