"""Search specs: what ``python -m s2ap.tune SPEC.yaml`` runs, validated whole before Ray starts.

A spec names a base experiment config, grid axes whose every combination is run (a *grid
cell*), searched parameters with distributions, how many samples each cell gets, the
scheduler, the resources of one trial and where results go. Every mistake is a
:class:`s2ap.config.ConfigError` naming the dotted field of the spec, so the CLI and the
HTTP service can both answer with one line.

This module never imports Ray: the HTTP service imports it only to validate specs. (Checking
the experiment configs loads the model and method registries, hence torch.)
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from s2ap.config import ConfigError, ExperimentConfig
from s2ap.experiment import from_dict, phases
from s2ap.experiment import with_overrides as apply_overrides

# Per-epoch metrics the pipeline reports that a scheduler can rank trials on: they are
# numbers in every epoch of every phase (hamming and lambda_max are not).
SCHEDULER_METRICS = ("val_pgd_acc", "val_clean_acc", "train_acc", "train_loss")
DISTRIBUTIONS = ("loguniform", "uniform", "int", "categorical")
SCHEDULERS = ("asha", "fifo")
# The Tune function trainable only waits on its Train run; it reserves a sliver of a CPU
# (Tune refuses zero) so Train's worker bundles, not trainables, decide what fits.
TRAINABLE_CPUS = 0.01
# Keys the search sets itself: the device follows the resources, out_dir the storage.
RESERVED_KEYS = ("device", "out_dir")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TOP_KEYS = (
    "name",
    "base",
    "overrides",
    "grid",
    "search",
    "num_samples",
    "scheduler",
    "resources",
    "max_concurrent",
    "max_failures",
    "storage",
    "pretrain_cache",
    "seed",
    "optuna_storage",
)


@dataclass(frozen=True)
class Distribution:
    """One searched parameter's prior. ``int`` samples integers in [low, high] inclusive."""

    type: str
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    values: tuple[Any, ...] = ()

    def corners(self) -> list[Any]:
        """The extreme values, enough to find a bound that breaks a cell's config."""
        if self.type == "categorical":
            return list(self.values)
        if self.type == "int":
            assert self.low is not None and self.high is not None
            step = int(self.step or 1)
            high = int(self.low) + (int(self.high) - int(self.low)) // step * step
            return [int(self.low), high] if high != self.low else [int(self.low)]
        return [self.low, self.high]

    def to_dict(self) -> dict[str, Any]:
        if self.type == "categorical":
            return {"type": self.type, "values": list(self.values)}
        out: dict[str, Any] = {"type": self.type, "low": self.low, "high": self.high}
        if self.step is not None:
            out["step"] = self.step
        if self.type == "int" and self.log:
            out["log"] = True
        return out


@dataclass(frozen=True)
class SchedulerSpec:
    """ASHA (or plain FIFO). ``grace_period`` is in post-pretraining epochs (``search_epoch``)."""

    type: str = "asha"
    metric: str = "val_pgd_acc"
    mode: str = "max"
    grace_period: int | None = None  # None: one epoch after the longest S2AP warm-up
    reduction_factor: float = 2.0
    per_cell: bool = True  # one ASHA per grid cell: cells never compete with each other


@dataclass(frozen=True)
class Resources:
    """What one trial's Ray Train run asks for."""

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    @property
    def trial_cpus(self) -> float:
        return self.workers * self.cpus_per_worker

    @property
    def trial_gpus(self) -> float:
        return self.workers * self.gpus_per_worker


@dataclass(frozen=True)
class Cell:
    """One combination of grid values and the parameters searched inside it."""

    id: int
    values: Mapping[str, Any]
    space: Mapping[str, Distribution]  # searched keys that matter in this cell
    samples: int

    @property
    def key(self) -> str:
        return ", ".join(f"{k}={_fmt(v)}" for k, v in self.values.items()) or "(single cell)"


@dataclass(frozen=True)
class SearchSpec:
    """A validated search. ``base`` is the full base experiment config as a mapping."""

    name: str
    base: Mapping[str, Any]
    grid: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    search: Mapping[str, Distribution] = field(default_factory=dict)
    num_samples: int = 1
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    resources: Resources = field(default_factory=Resources)
    max_concurrent: int | None = None
    max_failures: int = 2
    storage: str = "runs/tune"
    pretrain_cache: str | None = None
    seed: int = 0
    optuna_storage: str | None = None

    # ----------------------------------------------------------------- derived

    @property
    def search_dir(self) -> Path:
        """Where this search's results, Tune state and Train checkpoints live."""
        return Path(self.storage) / self.name

    @property
    def device(self) -> str:
        return "cuda" if self.resources.gpus_per_worker > 0 else "cpu"

    def base_config(self) -> ExperimentConfig:
        return from_dict(dict(self.base))

    def cells(self) -> list[Cell]:
        """Every grid combination, in spec order, with the searched keys that matter there."""
        keys = list(self.grid)
        combos = itertools.product(*(self.grid[k] for k in keys)) if keys else [()]
        base = self.base_config()
        out = []
        for i, combo in enumerate(combos):
            values = dict(zip(keys, combo, strict=True))
            cfg = apply_overrides(base, values)
            space = {k: d for k, d in self.search.items() if not is_inert(cfg, k)}
            # A cell where nothing searched matters (Orig.: S2AP off) is one run, not
            # num_samples identical ones.
            samples = self.num_samples if space else 1
            out.append(Cell(i, values, space, samples))
        return out

    def num_trials(self) -> int:
        return sum(c.samples for c in self.cells())

    def trial_overrides(self, cell: Cell, params: Mapping[str, Any]) -> dict[str, Any]:
        return {**cell.values, **params, "device": self.device}

    def trial_config(self, overrides: Mapping[str, Any]) -> ExperimentConfig:
        """The experiment of one trial: base + grid values + searched values + device."""
        values = {k: v for k, v in overrides.items() if k != "out_dir"}
        values.setdefault("device", self.device)
        return apply_overrides(self.base_config(), values)

    def max_warmup(self) -> int:
        """Longest S2AP warm-up any trial can have (0 when S2AP is never on)."""
        longest = 0
        for cell, cfg in self._corner_configs():
            del cell
            if cfg.s2ap.enabled:
                longest = max(longest, cfg.s2ap.warmup_epochs)
        return longest

    def search_epochs(self, cfg: ExperimentConfig) -> int:
        """Epochs after pretraining: pruning (when the method trains scores) + finetuning."""
        return prune_epochs(cfg) + finetune_epochs(cfg)

    def max_search_epochs(self) -> int:
        return max(self.search_epochs(cfg) for _, cfg in self._corner_configs())

    def grace_period(self) -> int:
        if self.scheduler.grace_period is not None:
            return self.scheduler.grace_period
        return max(1, self.max_warmup() + 1)

    def _corner_configs(self) -> Iterable[tuple[Cell, ExperimentConfig]]:
        base = self.base_config()
        for cell in self.cells():
            for corner in _corners(cell.space):
                yield cell, apply_overrides(base, {**cell.values, **corner})


# --------------------------------------------------------------------------- helpers


def is_inert(cfg: ExperimentConfig, key: str) -> bool:
    """A searched key that cannot change this config's result (S2AP's knobs with S2AP off)."""
    return key.startswith("s2ap.") and key != "s2ap.enabled" and not cfg.s2ap.enabled


def prune_epochs(cfg: ExperimentConfig) -> int:
    return phases(cfg).prune


def finetune_epochs(cfg: ExperimentConfig) -> int:
    return phases(cfg).finetune


def search_epoch(cfg: ExperimentConfig, phase: str, epoch: int) -> int:
    """ASHA's clock: epochs done after pretraining.

    Not ``global_epoch``: a trial whose pretraining came from the cache has no pretraining
    rows, so its global epochs would be shifted against a trial that pretrained itself.
    """
    if phase == "prune":
        return epoch + 1
    if phase == "finetune":
        return prune_epochs(cfg) + epoch + 1
    return 0


def _corners(space: Mapping[str, Distribution], limit: int = 256) -> list[dict[str, Any]]:
    """Combinations of every searched parameter's extremes (one at a time when too many)."""
    if not space:
        return [{}]
    keys = list(space)
    options = [space[k].corners() for k in keys]
    if math.prod(len(o) for o in options) <= limit:
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*options)]
    lows = {k: o[0] for k, o in zip(keys, options, strict=True)}
    return [dict(lows, **{k: v}) for k, o in zip(keys, options, strict=True) for v in o]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _number(value: Any, path: str, *, integer: bool = False) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(path, f"expected {'an integer' if integer else 'a number'}, got {value!r}")
    if integer and not isinstance(value, int):
        raise ConfigError(path, f"expected an integer, got {value!r}")
    if not math.isfinite(float(value)):
        raise ConfigError(path, f"expected a finite number, got {value!r}")
    return value


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(path, f"expected a mapping, got {value!r}")
    return value


def _reject_unknown(data: Mapping[str, Any], allowed: Sequence[str], prefix: str) -> None:
    for key in data:
        if key not in allowed:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(where, f"unknown key; allowed: {', '.join(allowed)}")


def parse_distribution(data: Any, path: str) -> Distribution:
    """``{type: loguniform, low: .., high: ..}``, ``{type: int, low, high[, step, log]}``,
    ``{type: uniform, low, high[, step]}`` or ``{type: categorical, values: [..]}``."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            path,
            f"expected a distribution like {{type: loguniform, low: 0.001, high: 0.01}}, got {data!r}"
            " (fixed lists of values belong in grid)",
        )
    kind = data.get("type")
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{path}.type", f"expected one of {', '.join(DISTRIBUTIONS)}, got {kind!r}")
    if kind == "categorical":
        _reject_unknown(data, ("type", "values"), path)
        values = data.get("values")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}.values", f"expected a non-empty list, got {values!r}")
        for i, v in enumerate(values):
            if not _is_scalar(v):
                raise ConfigError(
                    f"{path}.values[{i}]", f"expected a number, string, bool or null, got {v!r}"
                )
        if len({json.dumps(v) for v in values}) != len(values):
            raise ConfigError(f"{path}.values", "values must be distinct")
        return Distribution(kind, values=tuple(values))
    allowed = ("type", "low", "high", "step", "log") if kind == "int" else ("type", "low", "high", "step")
    if kind == "loguniform":
        allowed = ("type", "low", "high")
    _reject_unknown(data, allowed, path)
    integer = kind == "int"
    for bound in ("low", "high"):
        if bound not in data:
            raise ConfigError(f"{path}.{bound}", "required")
    low = _number(data["low"], f"{path}.low", integer=integer)
    high = _number(data["high"], f"{path}.high", integer=integer)
    if not low < high:
        raise ConfigError(f"{path}.high", f"must be greater than low ({low}), got {high}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{path}.low", f"loguniform needs low > 0, got {low}")
    step = data.get("step")
    if step is not None:
        step = _number(step, f"{path}.step", integer=integer)
        if step <= 0 or step > high - low:
            raise ConfigError(f"{path}.step", f"must be in (0, high - low], got {step}")
    log = data.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{path}.log", f"expected true or false, got {log!r}")
    if log and (low <= 0 or step not in (None, 1)):
        raise ConfigError(f"{path}.log", "a log-scaled int needs low >= 1 and no step")
    return Distribution(kind, low, high, step, log)


def _load_base(value: Any, where: Path | None) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        path = Path(value)
        if not path.is_absolute() and where is not None:
            path = where / path
        if not path.is_file():
            raise ConfigError("base", f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError("base", f"{path} is not valid YAML: {exc}".replace("\n", " ")) from None
        if not isinstance(data, Mapping):
            raise ConfigError("base", f"{path} must hold a mapping")
        return dict(data)
    raise ConfigError("base", f"expected an experiment config mapping or a path to one, got {value!r}")


def _in_spec(error: ConfigError, spec: SearchSpec, cell: Cell, corner: Mapping[str, Any]) -> ConfigError:
    """Re-aim an experiment-config error at the spec field that caused it."""
    fld = error.field
    where = f" in grid cell {cell.id} ({cell.key})" if spec.grid else ""
    if fld in corner:
        return ConfigError(f"search.{fld}", f"at {fld}={_fmt(corner[fld])}{where}: {error.message}")
    if fld in cell.values:
        return ConfigError(f"grid.{fld}", f"at {fld}={_fmt(cell.values[fld])}{where}: {error.message}")
    # A value fixed in the base that no longer fits what the grid or search changes.
    return ConfigError(f"base.{fld}" if fld else "base", f"{error.message}{where}")


# --------------------------------------------------------------------------- nodes


def local_nodes() -> list[dict[str, float]]:
    """This machine as the one node an embedded Ray instance will have."""
    return [{"CPU": float(os.cpu_count() or 1), "GPU": float(_local_gpus())}]


def _local_gpus() -> int:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return 0
    try:
        import torch  # lazily: slow to import, and only needed when GPUs are asked for
    except ImportError:  # pragma: no cover
        return 0
    return torch.cuda.device_count()


def _worker_slots(node: Mapping[str, float], res: Resources) -> int:
    cpus = float(node.get("CPU", 0.0))
    slots = math.floor(cpus / res.cpus_per_worker + 1e-9) if res.cpus_per_worker > 0 else 10**6
    if res.gpus_per_worker > 0:
        slots = min(slots, math.floor(float(node.get("GPU", 0.0)) / res.gpus_per_worker + 1e-9))
    return max(slots, 0)


def check_resources(
    spec: SearchSpec, nodes: Sequence[Mapping[str, float]], *, embedded: bool = False
) -> None:
    """Reject resources no node can provide. ``embedded``: the nodes will be sized to fit,
    so only one worker's bundle must fit a node; on a cluster one trial's workers must fit."""
    res = spec.resources
    if res.gpus_per_worker > 0 and not any(float(n.get("GPU", 0)) >= res.gpus_per_worker for n in nodes):
        have = max((float(n.get("GPU", 0)) for n in nodes), default=0.0)
        raise ConfigError(
            "resources.gpus_per_worker",
            f"{res.gpus_per_worker:g} GPUs per worker, but no node has more than {have:g}; "
            "use 0 to train on CPU",
        )
    cpus = max((float(n.get("CPU", 0)) for n in nodes), default=0.0)
    if res.cpus_per_worker > cpus:
        raise ConfigError(
            "resources.cpus_per_worker",
            f"{res.cpus_per_worker:g} CPUs per worker, but no node has more than {cpus:g}",
        )
    if not embedded:
        slots = sum(_worker_slots(n, res) for n in nodes)
        if slots < res.workers:
            raise ConfigError(
                "resources.workers",
                f"{res.workers} workers of {res.cpus_per_worker:g} CPUs / {res.gpus_per_worker:g} GPUs "
                f"do not fit this cluster (room for {slots}); ask for at most {slots}",
            )


def concurrency(spec: SearchSpec, nodes: Sequence[Mapping[str, float]]) -> int:
    """How many trials can run at once without any trial's workers waiting for another's.

    Places whole trials (trainable sliver + every worker bundle) first-fit on the nodes and
    stops at the first trial that does not fit, so Tune never starts a trial whose Train
    worker group would sit waiting for resources (and time out) behind running ones.
    """
    res = spec.resources
    free = [[float(n.get("CPU", 0.0)), float(n.get("GPU", 0.0))] for n in nodes]
    cap = spec.max_concurrent or spec.num_trials()
    placed = 0
    while placed < cap:
        trial_free = [list(f) for f in free]
        ok = True
        for _ in range(res.workers):
            for f in sorted(trial_free, key=lambda f: f[0]):
                if f[0] + 1e-9 >= res.cpus_per_worker and f[1] + 1e-9 >= res.gpus_per_worker:
                    f[0] -= res.cpus_per_worker
                    f[1] -= res.gpus_per_worker
                    break
            else:
                ok = False
                break
        if ok:
            host = max(trial_free, key=lambda f: f[0])
            ok = host[0] + 1e-9 >= TRAINABLE_CPUS
            host[0] -= TRAINABLE_CPUS
        if not ok:
            break
        free = trial_free
        placed += 1
    return placed


def embedded_cpus(spec: SearchSpec) -> tuple[int, int]:
    """(logical CPUs for an embedded Ray, concurrent trials). Logical CPUs are generous: a
    2-core laptop still runs a 2-worker trial, oversubscribed rather than deadlocked."""
    cores = os.cpu_count() or 1
    per_trial = spec.resources.trial_cpus
    conc = spec.max_concurrent or max(1, int(cores // per_trial))
    conc = max(1, min(conc, spec.num_trials()))
    need = math.ceil(conc * per_trial + conc * TRAINABLE_CPUS)
    return max(cores, need), conc


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
    where: Path | None = Path(base_dir) if base_dir is not None else None
    default_name = "search"
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise ConfigError("spec", f"file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError("spec", f"{path} is not valid YAML: {exc}".replace("\n", " ")) from None
        where = path.resolve().parent
        default_name = path.stem
    else:
        data = source
    if not isinstance(data, Mapping):
        raise ConfigError("spec", f"expected a mapping at the top, got {type(data).__name__}")
    _reject_unknown(data, _TOP_KEYS, "")

    name = data.get("name", default_name)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError("name", f"expected a folder name of letters, digits, '_', '.', '-', got {name!r}")

    if "base" not in data:
        raise ConfigError("base", "required: an experiment config mapping or a path to a config YAML")
    base = _load_base(data["base"], where)
    overrides = dict(_mapping(data.get("overrides"), "overrides"))
    for key in overrides:
        if key in RESERVED_KEYS:
            raise ConfigError(
                f"overrides.{key}", "set by the search (device from resources, results under storage)"
            )
    try:
        base_cfg = from_dict(base)
        base_cfg = apply_overrides(base_cfg, overrides)
    except ConfigError as exc:
        prefix = "overrides" if exc.field in overrides else "base"
        raise ConfigError(f"{prefix}.{exc.field}" if exc.field else prefix, exc.message) from None

    grid: dict[str, tuple[Any, ...]] = {}
    if "grid" in data:
        raw_grid = data["grid"]
        if not isinstance(raw_grid, Mapping) or not raw_grid:
            raise ConfigError(
                "grid",
                f"expected a non-empty mapping of dotted keys to lists of values, got {raw_grid!r}"
                " (leave grid out for a single cell)",
            )
        for key, values in raw_grid.items():
            path = f"grid.{key}"
            if key in RESERVED_KEYS:
                raise ConfigError(path, "set by the search (device from resources, results under storage)")
            if not isinstance(values, list) or not values:
                raise ConfigError(path, f"expected a non-empty list of values, got {values!r}")
            if len({json.dumps(v, sort_keys=True, default=str) for v in values}) != len(values):
                raise ConfigError(path, "values must be distinct")
            grid[str(key)] = tuple(values)

    search: dict[str, Distribution] = {}
    for key, dist in _mapping(data.get("search"), "search").items():
        path = f"search.{key}"
        if key in RESERVED_KEYS:
            raise ConfigError(path, "set by the search (device from resources, results under storage)")
        if key in grid:
            raise ConfigError(path, "already a grid axis; a key is either on the grid or searched")
        search[str(key)] = parse_distribution(dist, path)

    num_samples = data.get("num_samples", 1)
    _number(num_samples, "num_samples", integer=True)
    if num_samples < 1:
        raise ConfigError("num_samples", f"must be >= 1, got {num_samples}")

    scheduler = _parse_scheduler(_mapping(data.get("scheduler"), "scheduler"))
    resources = _parse_resources(_mapping(data.get("resources"), "resources"))
    if base_cfg.device == "cuda" and resources.gpus_per_worker == 0:
        raise ConfigError(
            "resources.gpus_per_worker", "the base config asks for device cuda: give each worker a GPU (>= 1)"
        )

    max_concurrent = data.get("max_concurrent")
    if max_concurrent is not None:
        _number(max_concurrent, "max_concurrent", integer=True)
        if max_concurrent < 1:
            raise ConfigError("max_concurrent", f"must be null or >= 1, got {max_concurrent}")
    max_failures = data.get("max_failures", 2)
    _number(max_failures, "max_failures", integer=True)
    if max_failures < -1:
        raise ConfigError("max_failures", f"must be >= 0 (or -1 for unlimited), got {max_failures}")
    seed = data.get("seed", 0)
    _number(seed, "seed", integer=True)

    storage = data.get("storage", "runs/tune")
    if not isinstance(storage, str) or not storage:
        raise ConfigError("storage", f"expected a folder path, got {storage!r}")
    if "://" in storage:
        # Workers write trial notes and the pretraining cache next to Train's checkpoints.
        raise ConfigError(
            "storage", f"expected a folder (shared by every node on a cluster, e.g. NFS), got {storage!r}"
        )
    storage = str(Path(storage).expanduser().resolve())
    cache = data.get("pretrain_cache", "__default__")
    if cache == "__default__":
        cache = str(Path(storage) / "pretrain_cache")
    elif cache is not None:
        if not isinstance(cache, str) or not cache:
            raise ConfigError("pretrain_cache", f"expected a folder path or null, got {cache!r}")
        cache = str(Path(cache).expanduser().resolve())
    optuna_storage = data.get("optuna_storage")
    if optuna_storage is not None and (not isinstance(optuna_storage, str) or "://" not in optuna_storage):
        raise ConfigError(
            "optuna_storage",
            f"expected an Optuna storage URL like sqlite:///optuna.db, got {optuna_storage!r}",
        )

    spec = SearchSpec(
        name=name,
        base=base_cfg.to_dict(),
        grid=grid,
        search=search,
        num_samples=int(num_samples),
        scheduler=scheduler,
        resources=resources,
        max_concurrent=max_concurrent,
        max_failures=int(max_failures),
        storage=storage,
        pretrain_cache=cache,
        seed=int(seed),
        optuna_storage=optuna_storage,
    )
    _validate_cells(spec)
    _validate_scheduler(spec)
    if nodes == "local":
        check_resources(spec, local_nodes(), embedded=True)
    elif nodes is not None:
        check_resources(spec, list(nodes))  # type: ignore[arg-type]
    return spec


def _parse_scheduler(data: Mapping[str, Any]) -> SchedulerSpec:
    kind = data.get("type", "asha")
    if kind not in SCHEDULERS:
        raise ConfigError("scheduler.type", f"expected one of {', '.join(SCHEDULERS)}, got {kind!r}")
    allowed = (
        ("type", "metric", "mode")
        if kind == "fifo"
        else ("type", "metric", "mode", "grace_period", "reduction_factor", "per_cell")
    )
    _reject_unknown(data, allowed, "scheduler")
    metric = data.get("metric", "val_pgd_acc")
    if metric not in SCHEDULER_METRICS:
        raise ConfigError(
            "scheduler.metric",
            f"the pipeline reports {', '.join(SCHEDULER_METRICS)} every epoch; got {metric!r}",
        )
    mode = data.get("mode", "min" if metric == "train_loss" else "max")
    if mode not in ("max", "min"):
        raise ConfigError("scheduler.mode", f"expected max or min, got {mode!r}")
    grace = data.get("grace_period")
    if grace is not None:
        _number(grace, "scheduler.grace_period", integer=True)
        if grace < 1:
            raise ConfigError("scheduler.grace_period", f"must be >= 1, got {grace}")
    rf = data.get("reduction_factor", 2.0)
    _number(rf, "scheduler.reduction_factor")
    if rf <= 1:
        raise ConfigError("scheduler.reduction_factor", f"must be > 1, got {rf}")
    per_cell = data.get("per_cell", True)
    if not isinstance(per_cell, bool):
        raise ConfigError("scheduler.per_cell", f"expected true or false, got {per_cell!r}")
    return SchedulerSpec(kind, metric, mode, grace, float(rf), per_cell)


def _parse_resources(data: Mapping[str, Any]) -> Resources:
    _reject_unknown(data, ("workers", "cpus_per_worker", "gpus_per_worker"), "resources")
    workers = data.get("workers", 1)
    _number(workers, "resources.workers", integer=True)
    if workers < 1:
        raise ConfigError("resources.workers", f"must be >= 1, got {workers}")
    cpus = data.get("cpus_per_worker", 1)
    _number(cpus, "resources.cpus_per_worker")
    if cpus <= 0:
        raise ConfigError("resources.cpus_per_worker", f"must be > 0, got {cpus}")
    gpus = data.get("gpus_per_worker", 0)
    _number(gpus, "resources.gpus_per_worker")
    if gpus < 0:
        raise ConfigError("resources.gpus_per_worker", f"must be >= 0, got {gpus}")
    return Resources(int(workers), float(cpus), float(gpus))


def _validate_cells(spec: SearchSpec) -> None:
    """Build every cell's config at the searched parameters' extremes with s2ap.config."""
    base = spec.base_config()
    cells = []
    for i, combo in enumerate(itertools.product(*spec.grid.values()) if spec.grid else [()]):
        values = dict(zip(spec.grid, combo, strict=True))
        cell = Cell(i, values, spec.search, spec.num_samples)
        try:
            cfg = apply_overrides(base, values)
        except ConfigError as exc:
            raise _in_spec(exc, spec, cell, {}) from None
        cells.append((cell, cfg))
    for cell, cfg in cells:
        space = {k: d for k, d in spec.search.items() if not is_inert(cfg, k)}
        for corner in _corners(space):
            try:
                apply_overrides(base, {**cell.values, **corner, "device": spec.device})
            except ConfigError as exc:
                raise _in_spec(exc, spec, cell, corner) from None


def _validate_scheduler(spec: SearchSpec) -> None:
    if spec.scheduler.type != "asha":
        return
    longest = spec.max_warmup()
    total = spec.max_search_epochs()
    if total < 1:
        raise ConfigError(
            "scheduler.type", "asha needs pruning or finetuning epochs to judge trials; use fifo"
        )
    grace = spec.scheduler.grace_period
    if grace is not None and grace <= longest:
        raise ConfigError(
            "scheduler.grace_period",
            f"must be greater than the longest S2AP warm-up ({longest} pruning epochs) so every trial "
            f"is judged after S2AP has run; got {grace} (leave it out for {longest + 1})",
        )
    if spec.grace_period() >= total:
        raise ConfigError(
            "scheduler.grace_period",
            f"must be smaller than the {total} pruning + finetuning epochs of the longest trial "
            f"(ASHA could never stop a trial), got {spec.grace_period()}; use scheduler type fifo",
        )


# --------------------------------------------------------------------------- export


def spec_to_dict(spec: SearchSpec) -> dict[str, Any]:
    """A plain, JSON-able mapping that ``load_spec`` accepts back (paths already resolved)."""
    return {
        "name": spec.name,
        "base": json.loads(json.dumps(dict(spec.base))),
        **({"grid": {k: list(v) for k, v in spec.grid.items()}} if spec.grid else {}),
        "search": {k: d.to_dict() for k, d in spec.search.items()},
        "num_samples": spec.num_samples,
        "scheduler": (
            {"type": "fifo", "metric": spec.scheduler.metric, "mode": spec.scheduler.mode}
            if spec.scheduler.type == "fifo"
            else {
                "type": "asha",
                "metric": spec.scheduler.metric,
                "mode": spec.scheduler.mode,
                "grace_period": spec.scheduler.grace_period,
                "reduction_factor": spec.scheduler.reduction_factor,
                "per_cell": spec.scheduler.per_cell,
            }
        ),
        "resources": {
            "workers": spec.resources.workers,
            "cpus_per_worker": spec.resources.cpus_per_worker,
            "gpus_per_worker": spec.resources.gpus_per_worker,
        },
        "max_concurrent": spec.max_concurrent,
        "max_failures": spec.max_failures,
        "storage": spec.storage,
        "pretrain_cache": spec.pretrain_cache,
        "seed": spec.seed,
        "optuna_storage": spec.optuna_storage,
    }


def spec_hash(spec: SearchSpec) -> str:
    """What a resumed search must match: everything but where results go."""
    from s2ap.config import stable_hash

    d = spec_to_dict(spec)
    for key in ("storage", "pretrain_cache", "max_concurrent", "optuna_storage"):
        d.pop(key, None)
    return stable_hash(d)


def json_schema() -> dict[str, Any]:
    """A JSON-Schema description of a spec, for the service's docs and form builders."""
    number = {"type": "number"}
    dist = {
        "oneOf": [
            {
                "type": "object",
                "properties": {"type": {"enum": ["loguniform"]}, "low": number, "high": number},
                "required": ["type", "low", "high"],
                "additionalProperties": False,
            },
            {
                "type": "object",
                "properties": {"type": {"enum": ["uniform"]}, "low": number, "high": number, "step": number},
                "required": ["type", "low", "high"],
                "additionalProperties": False,
            },
            {
                "type": "object",
                "properties": {
                    "type": {"enum": ["int"]},
                    "low": {"type": "integer"},
                    "high": {"type": "integer"},
                    "step": {"type": "integer"},
                    "log": {"type": "boolean"},
                },
                "required": ["type", "low", "high"],
                "additionalProperties": False,
            },
            {
                "type": "object",
                "properties": {"type": {"enum": ["categorical"]}, "values": {"type": "array", "minItems": 1}},
                "required": ["type", "values"],
                "additionalProperties": False,
            },
        ]
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "s2ap search spec",
        "type": "object",
        "required": ["base"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "pattern": _NAME.pattern},
            "base": {"oneOf": [{"type": "object"}, {"type": "string"}]},
            "overrides": {"type": "object"},
            "grid": {
                "type": "object",
                "minProperties": 1,
                "additionalProperties": {"type": "array", "minItems": 1},
            },
            "search": {"type": "object", "additionalProperties": dist},
            "num_samples": {"type": "integer", "minimum": 1},
            "scheduler": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "type": {"enum": list(SCHEDULERS)},
                    "metric": {"enum": list(SCHEDULER_METRICS)},
                    "mode": {"enum": ["max", "min"]},
                    "grace_period": {"type": ["integer", "null"], "minimum": 1},
                    "reduction_factor": {"type": "number", "exclusiveMinimum": 1},
                    "per_cell": {"type": "boolean"},
                },
            },
            "resources": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "workers": {"type": "integer", "minimum": 1},
                    "cpus_per_worker": {"type": "number", "exclusiveMinimum": 0},
                    "gpus_per_worker": {"type": "number", "minimum": 0},
                },
            },
            "max_concurrent": {"type": ["integer", "null"], "minimum": 1},
            "max_failures": {"type": "integer", "minimum": -1},
            "storage": {"type": "string"},
            "pretrain_cache": {"type": ["string", "null"]},
            "seed": {"type": "integer"},
            "optuna_storage": {"type": ["string", "null"]},
        },
    }


__all__ = [
    "Cell",
    "ConfigError",
    "Distribution",
    "Resources",
    "SchedulerSpec",
    "SearchSpec",
    "check_resources",
    "concurrency",
    "embedded_cpus",
    "json_schema",
    "load_spec",
    "local_nodes",
    "parse_distribution",
    "search_epoch",
    "spec_hash",
    "spec_to_dict",
]
