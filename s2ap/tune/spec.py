"""Search specs: what ``python -m s2ap.tune SPEC.yaml`` runs, validated whole before Ray starts.

A spec names a base experiment config, grid axes whose every combination is run (a *grid
cell*), searched parameters with distributions, how many samples each cell gets, the
scheduler, the resources of one trial and where results go. It is one frozen dataclass
(:class:`SearchSpec`) built by :func:`s2ap.coerce.build`: types and ranges sit on the fields,
rules between them in ``check()``, and the JSON Schema is generated from the same fields.
Every mistake is a :class:`~s2ap.errors.ConfigError` naming the dotted field of the spec,
so the CLI and the HTTP service can both answer with one line.

The base config is validated once, at load, into a frozen
:class:`~s2ap.config.ExperimentConfig`; a trial's config is that base with the cell's grid
values and the searched values set, validated once (:meth:`SearchSpec.trial_config`).

This module never imports Ray: the HTTP service imports it only to validate specs. (Checking
the experiment configs loads the model and method registries, hence torch.)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from s2ap import experiment, storage
from s2ap.coerce import Checked, bounded, build, build_with, documented, stable_hash, to_dict
from s2ap.config import ExperimentConfig
from s2ap.errors import ConfigError
from s2ap.io import read_yaml_mapping
from s2ap.tune.cells import CELL_KEY, Cell, cell_of, corner_configs, grid_cells
from s2ap.tune.clock import search_epoch, search_epochs
from s2ap.tune.resources import (
    TRAINABLE_CPUS,
    Resources,
    check_resources,
    concurrency,
    embedded_cpus,
    local_nodes,
)
from s2ap.tune.schema import base_schema, document
from s2ap.tune.space import Distribution

# Per-epoch metrics the pipeline reports that a scheduler can rank trials on: they are
# numbers in every epoch of every phase (hamming and lambda_max are not).
Metric = Literal["val_pgd_acc", "val_clean_acc", "train_acc", "train_loss"]
# Keys the search sets itself: the device follows the resources, out_dir the storage.
RESERVED_KEYS = ("device", "out_dir")
RESERVED = "set by the search (device from resources, results under storage)"
DEFAULT_STORAGE = "runs/tune"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# --------------------------------------------------------------------------- schedulers


@dataclass(frozen=True)
class _Ranked(Checked):
    """What both schedulers share: the metric trials are ranked by, and its direction."""

    type: str
    metric: Metric = "val_pgd_acc"
    mode: Literal["max", "min"] | None = None  # None: min for train_loss, else max

    def __post_init__(self) -> None:
        if self.mode is None:
            object.__setattr__(self, "mode", "min" if self.metric == "train_loss" else "max")
        super().__post_init__()


@dataclass(frozen=True)
class FifoSpec(_Ranked):
    """Every trial runs to its end."""

    type: Literal["fifo"] = "fifo"


@dataclass(frozen=True)
class AshaSpec(_Ranked):
    """ASHA. ``grace_period`` is in post-pretraining epochs (:func:`search_epoch`)."""

    type: Literal["asha"] = "asha"
    # None: a third of the way into finetuning (see default_grace); chosen by benchmarks/bench_asha.py
    grace_period: int | None = bounded(None, ge=1)
    reduction_factor: float = bounded(4.0, gt=1)  # 4: chosen with the first rung by bench_asha.py
    per_cell: bool = True  # one ASHA per grid cell: cells never compete with each other
    # Where trials are judged: epochs (val_pgd_acc at search epochs grace_period, x
    # reduction_factor, ...) or probe (only at the base's prune.probe_after, by each trial's
    # probe_val_pgd_acc: the best mask so far finetuned briefly on a copy; s2ap.rung_probe)
    rungs: Literal["epochs", "probe"] = "epochs"


@dataclass(frozen=True)
class HalvingSpec(_Ranked):
    """Synchronous successive halving on the probe rungs (prune.probe_after): at each probe a
    trial waits, paused, until its whole bracket has reported; the best 1 / reduction_factor
    go on."""

    type: Literal["halving"] = "halving"
    reduction_factor: float = bounded(4.0, gt=1)  # keep ceil(k / reduction_factor) of k at each rung
    per_cell: bool = True  # one bracket per grid cell (its trials); false: one for the search


SchedulerSpec = AshaSpec | HalvingSpec | FifoSpec


# --------------------------------------------------------------------------- the spec


@dataclass(frozen=True, kw_only=True)
class SearchSpec(Checked):
    """A search over the pipeline: a base experiment config, grid axes whose every
    combination (a grid cell) is run, parameters searched inside each cell, the scheduler,
    one trial's resources and where results go."""

    name: str = documented("search", schema={"type": "string", "pattern": NAME.pattern})
    base: ExperimentConfig = documented(schema=base_schema())
    # Dotted keys set on base when the spec is loaded; a loaded spec holds them in base.
    overrides: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    search: dict[str, Distribution] = field(default_factory=dict)
    # Per grid cell; a cell where nothing searched matters runs once.
    num_samples: int = bounded(1, ge=1, le=100_000)
    scheduler: SchedulerSpec = field(default_factory=AshaSpec)
    resources: Resources = field(default_factory=Resources)
    max_concurrent: int | None = bounded(None, ge=1)
    max_failures: int = bounded(2, ge=-1, note="-1: unlimited")  # worker-group restarts per trial
    storage: str = DEFAULT_STORAGE
    pretrain_cache: str | None = None
    seed: int = bounded(0, ge=0, le=1_000_000, note="cell searchers are seeded seed x 1009 + cell < 2**32")
    optuna_storage: str | None = None  # an Optuna storage URL keeping one study per cell

    # ----------------------------------------------------------------- rules

    def check(self) -> None:
        if not NAME.match(self.name):
            raise ConfigError(
                "name", f"expected a folder name of letters, digits, '_', '.', '-', got {self.name!r}"
            )
        self._check_places()
        self._check_keys()
        if self.base.device == "cuda" and self.resources.gpus_per_worker == 0:
            raise ConfigError(
                "resources.gpus_per_worker",
                "the base config asks for device cuda: give each worker a GPU (>= 1)",
            )
        configs = self.corner_configs  # every cell, at its extremes
        if isinstance(self.scheduler, HalvingSpec) or getattr(self.scheduler, "rungs", "") == "probe":
            self._check_probe(configs)
        elif isinstance(self.scheduler, AshaSpec):
            self._check_asha(configs)

    def _check_probe(self, configs: Sequence[ExperimentConfig]) -> None:
        """Rungs at the probes: every trial probes at the same pruning epochs, ranked by them."""
        points = {cfg.prune.probe_after for cfg in configs}
        if points == {()} or len(points) > 1:
            raise ConfigError(
                "base.prune.probe_after",
                "rungs at the probes need the same probe epochs in every trial (set it in base, "
                f"neither on the grid nor searched), got {sorted(points)}",
            )
        if self.scheduler.metric != "val_pgd_acc":
            raise ConfigError(
                "scheduler.metric",
                "probe rungs rank by the probe's validation PGD accuracy: use val_pgd_acc",
            )
        if isinstance(self.scheduler, AshaSpec) and self.scheduler.grace_period is not None:
            raise ConfigError("scheduler.grace_period", "probe rungs start at the first probe: leave it out")

    def _check_places(self) -> None:
        # Every node writes trial notes, checkpoints and the pretraining cache there: on a
        # cluster a shared folder (NFS) or an object store URI (s2ap.storage).
        storage.check(self.storage, "storage")
        if self.pretrain_cache is not None:
            storage.check(self.pretrain_cache, "pretrain_cache")
        if self.optuna_storage is not None and "://" not in self.optuna_storage:
            raise ConfigError(
                "optuna_storage",
                f"expected an Optuna storage URL like sqlite:///optuna.db, got {self.optuna_storage!r}",
            )

    def _check_keys(self) -> None:
        for key, values in self.grid.items():
            if key in RESERVED_KEYS:
                raise ConfigError(f"grid.{key}", RESERVED)
            if not values:
                raise ConfigError(f"grid.{key}", "expected a non-empty list of values, got []")
            if len({json.dumps(v, sort_keys=True, default=str) for v in values}) != len(values):
                raise ConfigError(f"grid.{key}", "values must be distinct")
        for key in self.search:
            if key in RESERVED_KEYS:
                raise ConfigError(f"search.{key}", RESERVED)
            if key in self.grid:
                raise ConfigError(
                    f"search.{key}", "already a grid axis; a key is either on the grid or searched"
                )

    def _check_asha(self, configs: Sequence[ExperimentConfig]) -> None:
        assert isinstance(self.scheduler, AshaSpec)
        longest = _longest_warmup(configs)
        total = max(search_epochs(cfg) for cfg in configs)
        if total < 1:
            raise ConfigError(
                "scheduler.type", "asha needs pruning or finetuning epochs to judge trials; use fifo"
            )
        grace = self.scheduler.grace_period
        if grace is not None and grace <= longest:
            raise ConfigError(
                "scheduler.grace_period",
                f"must be greater than the longest S2AP warm-up ({longest} pruning epochs) so every trial "
                f"is judged after S2AP has run; got {grace} (leave it out for {default_grace(configs)})",
            )
        grace = grace if grace is not None else default_grace(configs)
        if grace >= total:
            raise ConfigError(
                "scheduler.grace_period",
                f"must be smaller than the {total} pruning + finetuning epochs of the longest trial "
                f"(ASHA could never stop a trial), got {grace}; use scheduler type fifo",
            )

    # ----------------------------------------------------------------- derived

    @property
    def search_dir(self) -> str:
        """Where this search's results, Tune state and Train checkpoints live: a local
        folder or a storage URI."""
        return storage.join(self.storage, self.name)

    @property
    def device(self) -> str:
        return "cuda" if self.resources.gpus_per_worker > 0 else "cpu"

    def base_config(self) -> ExperimentConfig:
        return self.base

    def cells(self) -> list[Cell]:
        """Every grid combination, in spec order, with the searched keys that matter there."""
        return list(self._cells)

    # Derived once per spec (the spec is frozen): the cells, and every cell's config at the
    # extremes of its searched parameters, each checked once while the spec is checked.
    @cached_property
    def _cells(self) -> tuple[Cell, ...]:
        return tuple(grid_cells(self.base, self.grid, self.search, self.num_samples))

    @cached_property
    def corner_configs(self) -> tuple[ExperimentConfig, ...]:
        """Every cell's config at every combination of its searched parameters' extremes."""
        return tuple(
            cfg for _, cfg in corner_configs(self.base, list(self._cells), self.device, bool(self.grid))
        )

    def num_trials(self) -> int:
        return sum(c.samples for c in self.cells())

    def trial_config(self, config: Mapping[str, Any]) -> ExperimentConfig:
        """One trial's experiment: the base with the trial's grid and searched values (its Tune
        config; the cell key is skipped) and the device of the resources, validated once.
        ``eval.mask_test`` left null is off in a trial (nothing ranks trials by it)."""
        values = {k: v for k, v in config.items() if k not in (CELL_KEY, "out_dir")}
        values.setdefault("device", self.device)
        if self.base.eval.mask_test is None:  # Table 5's mask evaluation ranks no trial: off
            values.setdefault("eval.mask_test", False)
        return experiment.with_overrides(self.base, values)

    def max_warmup(self) -> int:
        """Longest S2AP warm-up any trial can have (0 when S2AP is never on)."""
        return _longest_warmup(self.corner_configs)

    def max_search_epochs(self) -> int:
        """Most epochs after pretraining (ASHA's clock) any trial can run."""
        return max(search_epochs(cfg) for cfg in self.corner_configs)

    def probe_after(self) -> tuple[int, ...]:
        """The probe rungs' pruning epochs (() when the scheduler judges epochs)."""
        s = self.scheduler
        if isinstance(s, HalvingSpec) or (isinstance(s, AshaSpec) and s.rungs == "probe"):
            return self.base.prune.probe_after
        return ()

    def grace_period(self) -> int:
        s = self.scheduler
        if isinstance(s, AshaSpec) and s.grace_period is not None:
            return s.grace_period
        return default_grace(self.corner_configs)


def default_grace(configs: Sequence[ExperimentConfig]) -> int:
    """ASHA's first rung when the spec names none: a third of the way into finetuning
    (rounded up, at least its first epoch) after the longest pruning phase, so 7 for 4
    pruning + 8 finetuning epochs. ``benchmarks/bench_asha.py`` (docs/measurements.md) chose
    it with ``reduction_factor`` 4 on five recorded digits searches of gamma and both learning
    rates: the cheapest first rung whose pick stayed within one standard error of the best
    trial on every recording (74% of trial-epochs, median regret 0.2 points). Earlier rungs
    misled: Spearman with the final validation robust accuracy -0.48 to +0.36 at the first
    finetuning epoch, -0.51 to +0.40 for a probe after pruning epoch 1, and stops there lost
    more than stopping trials at random. Without a finetuning epoch to spare: one epoch after
    the longest S2AP warm-up, so every trial is judged after S2AP has run."""
    prune = max(experiment.phases(cfg).prune for cfg in configs)
    finetune = min(search_epochs(cfg) - experiment.phases(cfg).prune for cfg in configs)
    rung = prune + max(1, math.ceil(finetune / 3))
    if rung < max(search_epochs(cfg) for cfg in configs):
        return rung
    return max(1, _longest_warmup(configs) + 1)


def _longest_warmup(configs: Sequence[ExperimentConfig]) -> int:
    return max((cfg.s2ap.warmup_epochs for cfg in configs if cfg.s2ap.enabled), default=0)


# --------------------------------------------------------------------------- loading


def load_spec(
    source: str | Path | Mapping[str, Any],
    nodes: Sequence[Mapping[str, float]] | str | None = "local",
    *,
    base_dir: str | Path | None = None,
) -> SearchSpec:
    """Parse and validate a whole spec: a YAML path or an already-parsed mapping.

    ``nodes`` says where it will run: ``"local"`` (default) checks the resources against an
    embedded Ray on this machine, a list of ``{"CPU": n, "GPU": m}`` against a cluster's
    nodes, ``None`` skips that check (the CLI re-checks once it has joined a cluster).
    Relative ``base`` paths resolve against the spec file's folder (``base_dir`` for a
    mapping); relative storage paths against the working directory.
    """
    if isinstance(source, str | Path):
        path = Path(source)
        data = read_yaml_mapping(path, "spec")
        where: Path | None = path.resolve().parent
        data.setdefault("name", path.stem)
    elif isinstance(source, Mapping):
        data, where = dict(source), Path(base_dir) if base_dir is not None else None
    else:
        raise ConfigError("spec", f"expected a mapping at the top, got {type(source).__name__}")
    base = _base_config(data, where)
    data.update(base=base, overrides={})  # the overrides now live in the checked base
    if "grid" in data and data["grid"] == {}:
        raise ConfigError(
            "grid",
            "expected a non-empty mapping of dotted keys to lists of values, got {} "
            "(leave grid out for a single cell)",
        )
    if isinstance(data.get("scheduler"), Mapping) and "type" not in data["scheduler"]:
        data["scheduler"] = {"type": "asha", **data["scheduler"]}
    spec = build(SearchSpec, _resolve_places(data))
    if nodes == "local":
        check_resources(spec, local_nodes(), embedded=True)
    elif nodes is not None:
        check_resources(spec, list(nodes))  # type: ignore[arg-type]
    return spec


def _base_config(data: Mapping[str, Any], where: Path | None) -> ExperimentConfig:
    """The base experiment config with the spec's overrides set, checked once, whole."""
    if "base" not in data:
        raise ConfigError("base", "required: an experiment config mapping or a path to a config YAML")
    value = data["base"]
    if isinstance(value, str):
        path = Path(value)
        mapping = read_yaml_mapping(
            where / path if where is not None and not path.is_absolute() else path, "base"
        )
    elif isinstance(value, Mapping):
        mapping = dict(value)
    else:
        raise ConfigError("base", f"expected an experiment config mapping or a path to one, got {value!r}")
    overrides = data.get("overrides")
    overrides = {} if overrides is None else overrides
    if not isinstance(overrides, Mapping):
        raise ConfigError("overrides", f"expected a mapping, got {overrides!r}")
    for key in overrides:
        if key in RESERVED_KEYS:
            raise ConfigError(f"overrides.{key}", RESERVED)
    try:
        return experiment.check(build_with(ExperimentConfig, mapping, overrides))
    except ConfigError as exc:
        raise exc.within("overrides" if exc.field in overrides else "base") from None


def _resolve_places(data: dict[str, Any]) -> dict[str, Any]:
    """Storage (and the pretraining cache, by default inside it) as absolute folders or
    checked URIs (:func:`s2ap.storage.check`)."""
    where = data.get("storage", DEFAULT_STORAGE)
    if not isinstance(where, str):
        return data  # the field's type check says what is wrong with it
    data["storage"] = where = storage.check(where, "storage")
    cache = data.get("pretrain_cache", storage.join(where, "pretrain_cache"))
    if isinstance(cache, str):
        cache = storage.check(cache, "pretrain_cache")
    data["pretrain_cache"] = cache
    return data


# --------------------------------------------------------------------------- export


def spec_to_dict(spec: SearchSpec) -> dict[str, Any]:
    """A plain, JSON-able mapping that ``load_spec`` accepts back (paths already resolved)."""
    out = to_dict(spec)
    for key in ("overrides", "grid"):
        if not out[key]:
            del out[key]  # folded into base / a single cell
    return out


def spec_hash(spec: SearchSpec) -> str:
    """What a resumed search must match: everything but where results go."""
    d = spec_to_dict(spec)
    for key in ("storage", "pretrain_cache", "max_concurrent", "optuna_storage"):
        d.pop(key, None)
    return stable_hash(d)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a spec (generated from :class:`SearchSpec`'s fields)."""
    return document(SearchSpec, "s2ap search spec")


__all__ = [
    "CELL_KEY",
    "TRAINABLE_CPUS",
    "AshaSpec",
    "Cell",
    "ConfigError",
    "Distribution",
    "FifoSpec",
    "Resources",
    "SchedulerSpec",
    "SearchSpec",
    "cell_of",
    "check_resources",
    "concurrency",
    "embedded_cpus",
    "json_schema",
    "load_spec",
    "local_nodes",
    "search_epoch",
    "spec_hash",
    "spec_to_dict",
]
