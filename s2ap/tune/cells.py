"""Grid cells: every combination of a search's grid values, and what is searched inside each.

A cell's config is the base experiment with the cell's grid values set; a searched key that
cannot change it (S2AP's knobs with S2AP off) is not searched there, and a cell where
nothing searched matters (Orig.) runs once. Before anything runs, every cell's config is
built at every combination of its searched parameters' extremes (:func:`corner_configs`),
so a bound that breaks a config is reported against the spec field that set it.

A trial's Tune config is ``{"cell": id, grid values..., searched values...}``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from s2ap import experiment
from s2ap.config import ExperimentConfig
from s2ap.errors import ConfigError
from s2ap.tune.space import Distribution, corners

CELL_KEY = "cell"  # the trial-config key holding the grid cell id; the rest are overrides


@dataclass(frozen=True)
class Cell:
    """One combination of grid values and the parameters searched inside it."""

    id: int
    values: Mapping[str, Any]
    space: Mapping[str, Distribution]  # searched keys that matter in this cell
    samples: int

    @property
    def key(self) -> str:
        return cell_key(self.values)


def cell_key(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in values.items()) or "(single cell)"


def cell_of(config: Mapping[str, Any]) -> int:
    """The grid cell of a trial's Tune config."""
    return int(config.get(CELL_KEY, 0))


def is_inert(cfg: ExperimentConfig, key: str) -> bool:
    """A searched key that cannot change this config's result (S2AP's knobs with S2AP off);
    the rule that makes such a setting null in the tables (:func:`s2ap.experiment.applies`)."""
    return not experiment.applies(cfg, key)


def grid_cells(
    base: ExperimentConfig,
    grid: Mapping[str, tuple[Any, ...]],
    search: Mapping[str, Distribution],
    samples: int,
) -> list[Cell]:
    """Every grid combination, in spec order, with the searched keys that matter there."""
    keys = list(grid)
    out = []
    for i, combo in enumerate(itertools.product(*grid.values())):
        values = dict(zip(keys, combo, strict=True))
        try:
            cfg = experiment.with_overrides(base, values)
        except ConfigError as exc:
            raise in_spec(exc, _where(i, values, bool(grid)), values, {}) from None
        space = {k: d for k, d in search.items() if not is_inert(cfg, k)}
        # A cell where nothing searched matters (Orig.: S2AP off) is one run, not
        # ``samples`` identical ones.
        out.append(Cell(i, values, space, samples if space else 1))
    return out


def corner_configs(
    base: ExperimentConfig, cells: list[Cell], device: str, gridded: bool
) -> Iterator[tuple[Cell, ExperimentConfig]]:
    """Every cell's config at every combination of its searched parameters' extremes."""
    for cell in cells:
        for corner in corners(cell.space):
            try:
                cfg = experiment.with_overrides(base, {**cell.values, **corner, "device": device})
            except ConfigError as exc:
                where = _where(cell.id, cell.values, gridded)
                raise in_spec(exc, where, cell.values, corner) from None
            yield cell, cfg


def in_spec(
    error: ConfigError, where: str, values: Mapping[str, Any], corner: Mapping[str, Any]
) -> ConfigError:
    """Re-aim an experiment-config error at the spec field that caused it."""
    fld = error.field
    if fld in corner:
        return ConfigError(f"search.{fld}", f"at {fld}={_fmt(corner[fld])}{where}: {error.message}")
    if fld in values:
        return ConfigError(f"grid.{fld}", f"at {fld}={_fmt(values[fld])}{where}: {error.message}")
    # A value fixed in the base that no longer fits what the grid or search changes.
    return ConfigError(f"base.{fld}" if fld else "base", f"{error.message}{where}")


def _where(cell: int, values: Mapping[str, Any], gridded: bool) -> str:
    return f" in grid cell {cell} ({cell_key(values)})" if gridded else ""


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
