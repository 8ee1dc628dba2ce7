"""Frozen experiment configuration, built from YAML with unknown keys rejected.

Every user-facing value is validated here, in one place, and every failure is a
:class:`ConfigError` naming the dotted field and what is allowed. A run's dotted
overrides (``prune.sparsity=0.95``) resolve into a new frozen config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad user input: ``field`` is the dotted path, the message says what is allowed."""

    def __init__(self, field_path: str, message: str) -> None:
        self.field = field_path
        self.message = message
        super().__init__(f"{field_path}: {message}" if field_path else message)


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"
    root: str = "data"
    download: bool = False
    val_fraction: float = 0.1
    batch_size: int = 128
    eval_batch_size: int = 256
    image_size: int | None = None  # resize to this side; None keeps the native size
    train_limit: int | None = None  # use only the first N training points (after shuffling)
    test_limit: int | None = None
    num_workers: int = 0


@dataclass(frozen=True)
class ModelConfig:
    name: str = "cnn"
    # Which layers get scores: "default" lets the model decide (ViT: every linear but
    # the head), "all" prunes every conv and linear layer, "all_but_last" keeps the head.
    prune_layers: Literal["default", "all", "all_but_last"] = "default"


@dataclass(frozen=True)
class AttackConfig:
    """L-inf PGD used for training and for per-epoch validation."""

    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    random_start: bool = True


@dataclass(frozen=True)
class ObjectiveConfig:
    name: Literal["trades", "pgd", "clean"] = "trades"
    beta: float = 6.0  # TRADES trade-off


@dataclass(frozen=True)
class PhaseConfig:
    epochs: int = 0
    lr: float = 0.1
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "constant", "step"] = "cosine"


@dataclass(frozen=True)
class PretrainConfig(PhaseConfig):
    epochs: int = 100
    checkpoint: str | None = None  # a dense state dict to start from instead of training


@dataclass(frozen=True)
class PruneConfig(PhaseConfig):
    epochs: int = 20
    lr: float = 0.1
    weight_decay: float = 1e-4
    method: str = "hydra"
    sparsity: float = 0.9  # fraction of prunable weights removed
    score_init: Literal["scaled", "magnitude", "kaiming"] = "scaled"
    # How the returned mask is chosen among pruning epochs: lowest training robust loss
    # (the paper, Algorithm 1 lines 13-15), highest validation robust accuracy, or last.
    best_mask: Literal["train_loss", "val_robust", "last"] = "train_loss"
    mask: str | None = None  # a saved mask to use instead of pruning
    # What a mask entry covers: single weights, or whole output channels (structured). null
    # takes the method's own default (weight for hydra/harp/lwm/rlth, channel for adasap).
    granularity: Literal["weight", "channel"] | None = None
    # Channel pruning only: the target as a FLOPs reduction factor of the compact network
    # (the paper's 4x and 15x, Table 9) instead of prune.sparsity.
    flops_reduction: float | None = None


@dataclass(frozen=True)
class HarpConfig:
    """HARP (Zhao & Wressnegger, 2023): learned per-layer keep-rates."""

    min_rate_fraction: float = 0.1  # each layer's keep-rate stays >= this fraction of the target
    init_rates: tuple[float, ...] = ()  # per pruned layer, in definition order; () = uniform
    penalty_init: float = 1.0  # weight of the over-budget penalty in the first epoch
    penalty_growth: float = 2.0  # factor applied after each epoch that ends over budget
    # After the search, shift all rates down together until the budget holds (the soft
    # penalty alone may leave the returned mask slightly over the target).
    enforce_budget: bool = True


@dataclass(frozen=True)
class RlthConfig:
    """Robust lottery tickets (Fu et al., 2021): scores searched in frozen random weights."""

    weight_init: Literal["kaiming_normal", "signed_constant"] = "kaiming_normal"


@dataclass(frozen=True)
class AdaSAPConfig:
    """AdaSAP (Bair et al.): defaults from its Sect. 4.1 (ASAM, rho in [0.01, 2], 10 warm-up
    epochs, rho 2 for the uniform finetuning)."""

    rho_min: float = 0.01  # perturbation radius of the most important neuron
    rho_max: float = 2.0  # perturbation radius of the least important neuron
    finetune_rho: float = 2.0  # uniform radius during finetuning (robustness encouragement)
    adaptive: bool = True  # ASAM's scale-invariant ball (T_w = |w| + eta); false = plain SAM
    eta: float = 0.01  # ASAM's offset in T_w
    criterion: Literal["l2", "l1"] = "l2"  # neuron importance (and pruning saliency)
    warmup_epochs: int = 10  # prune-phase epochs before the first pruning step


@dataclass(frozen=True)
class FinetuneConfig(PhaseConfig):
    epochs: int = 100
    lr: float = 0.01


@dataclass(frozen=True)
class S2APConfig:
    enabled: bool = False
    gamma: float = 0.001  # layer-wise bound ||z_l|| <= gamma * ||s_l||
    warmup_epochs: int = 5  # pruning epochs of the plain method before S2AP starts
    finetune_awp: bool = True  # Algorithm 2: AWP on the kept weights with the same gamma
    # What the mask search perturbs: the scores (S2AP) or the frozen weights within
    # gamma * ||w_l|| (AWP during pruning, the paper's Table 13 ablation).
    perturb: Literal["scores", "weights"] = "scores"


@dataclass(frozen=True)
class EvalConfig:
    pgd_steps: int = 50
    pgd_restarts: int = 1
    autoattack: bool = True
    autoattack_n: int | None = None  # test points for AutoAttack; None = whole test set
    val_pgd_steps: int = 10  # PGD steps for the per-epoch validation robust accuracy
    val_limit: int | None = None  # validation points used per epoch; None = all
    lambda_max_every: int = 0  # power iteration every N pruning iterations; 0 = off
    lambda_max_iters: int = 10
    lambda_max_batch: int = 64
    loss_diff_rhos: tuple[float, ...] = ()  # e.g. (0.001, 0.0025, 0.005, 0.0075, 0.01)
    loss_diff_steps: int = 20
    corruption_root: str | None = None  # CIFAR-10-C folder
    corruption_severity: int = 3


@dataclass(frozen=True)
class ExperimentConfig:
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = False
    out_dir: str = "runs/experiment"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    s2ap: S2APConfig = field(default_factory=S2APConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    harp: HarpConfig = field(default_factory=HarpConfig)
    rlth: RlthConfig = field(default_factory=RlthConfig)
    adasap: AdaSAPConfig = field(default_factory=AdaSAPConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def hash(self) -> str:
        """Content hash of everything that changes the result (not where it is written)."""
        d = self.to_dict()
        d.pop("out_dir", None)
        return stable_hash(d)

    def with_overrides(self, overrides: Mapping[str, Any] | Iterable[str]) -> ExperimentConfig:
        return apply_overrides(self, overrides)


# --------------------------------------------------------------------------- building


def stable_hash(obj: Any, length: int = 16) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def to_dict(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    return obj


def _parse_number(value: Any, path: str) -> Any:
    """Accept '8/255' style fractions where a float is expected."""
    if isinstance(value, str) and "/" in value:
        num, _, den = value.partition("/")
        try:
            return float(num) / float(den)
        except (ValueError, ZeroDivisionError):
            raise ConfigError(path, f"expected a number or a fraction like 8/255, got {value!r}") from None
    return value


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(path, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(path, f"expected {_type_name(tp)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(path, f"expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
    if is_dataclass(tp):
        return build(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        value = _parse_number(value, path)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(path, f"expected a number, got {value!r}")
        if not math.isfinite(float(value)):
            raise ConfigError(path, f"expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {path}")  # a bug, not bad input


def build(cls: type[T], data: Any, path: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(path or "config", f"expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in known:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(where, f"unknown key; allowed: {', '.join(sorted(known))}")
    kwargs = {
        key: _coerce(value, hints[key], f"{path}.{key}" if path else key) for key, value in data.items()
    }
    return cls(**kwargs)  # type: ignore[call-arg]


def _check(cond: bool, path: str, message: str) -> None:
    if not cond:
        raise ConfigError(path, message)


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    """Range checks and names that must exist in the registries."""
    d, p, s, e = cfg.data, cfg.prune, cfg.s2ap, cfg.eval
    _check(0.0 < d.val_fraction < 1.0, "data.val_fraction", f"must be in (0, 1), got {d.val_fraction}")
    for name in ("batch_size", "eval_batch_size"):
        _check(getattr(d, name) >= 1, f"data.{name}", f"must be >= 1, got {getattr(d, name)}")
    for name in ("image_size", "train_limit", "test_limit"):
        v = getattr(d, name)
        _check(v is None or v >= 1, f"data.{name}", f"must be null or >= 1, got {v}")
    _check(d.num_workers >= 0, "data.num_workers", f"must be >= 0, got {d.num_workers}")
    _check(0.0 < p.sparsity < 1.0, "prune.sparsity", f"must be in (0, 1), got {p.sparsity}")
    a = cfg.attack
    _check(a.eps >= 0, "attack.eps", f"must be >= 0, got {a.eps}")
    _check(a.step_size >= 0, "attack.step_size", f"must be >= 0, got {a.step_size}")
    _check(a.steps >= 0, "attack.steps", f"must be >= 0, got {a.steps}")
    _check(cfg.objective.beta >= 0, "objective.beta", f"must be >= 0, got {cfg.objective.beta}")
    for phase in ("pretrain", "prune", "finetune"):
        ph: PhaseConfig = getattr(cfg, phase)
        _check(ph.epochs >= 0, f"{phase}.epochs", f"must be >= 0, got {ph.epochs}")
        _check(ph.lr > 0, f"{phase}.lr", f"must be > 0, got {ph.lr}")
        _check(ph.weight_decay >= 0, f"{phase}.weight_decay", f"must be >= 0, got {ph.weight_decay}")
        _check(0 <= ph.momentum < 1, f"{phase}.momentum", f"must be in [0, 1), got {ph.momentum}")
    _check(s.gamma >= 0, "s2ap.gamma", f"must be >= 0, got {s.gamma}")
    _check(s.warmup_epochs >= 0, "s2ap.warmup_epochs", f"must be >= 0, got {s.warmup_epochs}")
    if s.enabled and p.mask is None:
        _check(
            s.warmup_epochs < p.epochs,
            "s2ap.warmup_epochs",
            f"must be smaller than prune.epochs ({p.epochs}) so S2AP runs at least one epoch, "
            f"got {s.warmup_epochs}",
        )
    _check(e.pgd_steps >= 1, "eval.pgd_steps", f"must be >= 1, got {e.pgd_steps}")
    _check(e.pgd_restarts >= 1, "eval.pgd_restarts", f"must be >= 1, got {e.pgd_restarts}")
    _check(e.val_pgd_steps >= 1, "eval.val_pgd_steps", f"must be >= 1, got {e.val_pgd_steps}")
    _check(e.lambda_max_every >= 0, "eval.lambda_max_every", f"must be >= 0, got {e.lambda_max_every}")
    _check(e.lambda_max_iters >= 1, "eval.lambda_max_iters", f"must be >= 1, got {e.lambda_max_iters}")
    _check(all(r > 0 for r in e.loss_diff_rhos), "eval.loss_diff_rhos", "every rho must be > 0")
    _check(1 <= e.corruption_severity <= 5, "eval.corruption_severity", "must be in 1..5")
    for name in ("autoattack_n", "val_limit"):
        v = getattr(e, name)
        _check(v is None or v >= 1, f"eval.{name}", f"must be null or >= 1, got {v}")
    _validate_methods(cfg)
    _check_registered(cfg)
    return cfg


def _validate_methods(cfg: ExperimentConfig) -> None:
    """Ranges of the method sections (whether a method accepts them is its check_config)."""
    p, h, a = cfg.prune, cfg.harp, cfg.adasap
    if p.flops_reduction is not None:
        _check(
            p.flops_reduction > 1,
            "prune.flops_reduction",
            f"must be > 1 (a reduction factor), got {p.flops_reduction}",
        )
    _check(
        0 < h.min_rate_fraction < 1, "harp.min_rate_fraction", f"must be in (0, 1), got {h.min_rate_fraction}"
    )
    for i, r in enumerate(h.init_rates):
        _check(0 < r <= 1, f"harp.init_rates[{i}]", f"must be a keep-rate in (0, 1], got {r}")
    _check(h.penalty_init > 0, "harp.penalty_init", f"must be > 0, got {h.penalty_init}")
    _check(h.penalty_growth >= 1, "harp.penalty_growth", f"must be >= 1, got {h.penalty_growth}")
    _check(a.rho_min >= 0, "adasap.rho_min", f"must be >= 0, got {a.rho_min}")
    _check(
        a.rho_max >= a.rho_min, "adasap.rho_max", f"must be >= adasap.rho_min ({a.rho_min}), got {a.rho_max}"
    )
    _check(a.finetune_rho >= 0, "adasap.finetune_rho", f"must be >= 0, got {a.finetune_rho}")
    _check(a.eta >= 0, "adasap.eta", f"must be >= 0, got {a.eta}")
    _check(
        a.warmup_epochs >= 1,
        "adasap.warmup_epochs",
        f"must be >= 1 (the warm-up primes the network), got {a.warmup_epochs}",
    )


def _check_registered(cfg: ExperimentConfig) -> None:
    # Imported here: the registries live on higher floors and fill themselves on import.
    from s2ap.data import DATASETS
    from s2ap.models import MODELS
    from s2ap.pruning.methods import METHODS

    for path, value, registry in (
        ("data.name", cfg.data.name, DATASETS),
        ("model.name", cfg.model.name, MODELS),
        ("prune.method", cfg.prune.method, METHODS),
    ):
        _check(value in registry, path, f"unknown {value!r}; allowed: {', '.join(registry.names())}")
    METHODS.get(cfg.prune.method).check_config(cfg)


def from_dict(data: Mapping[str, Any] | None) -> ExperimentConfig:
    return validate(build(ExperimentConfig, data or {}))


def load(path: str | Path, overrides: Iterable[str] = ()) -> ExperimentConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config", f"file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError("config", f"{path} is not valid YAML: {exc}".replace("\n", " ")) from None
    cfg = build(ExperimentConfig, data)
    return validate(apply_overrides(cfg, overrides))


def parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError("--set", f"expected key=value, got {item!r}")
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def apply_overrides(cfg: ExperimentConfig, overrides: Mapping[str, Any] | Iterable[str]) -> ExperimentConfig:
    """Return a new config with dotted keys replaced, validated like the YAML."""
    items = overrides.items() if isinstance(overrides, Mapping) else map(parse_override, overrides)
    data = cfg.to_dict()
    for key, value in items:
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                raise ConfigError(key, f"unknown key {'.'.join(parts[: i + 1])!r}")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(key, f"unknown key; allowed: {', '.join(sorted(node))}")
        node[parts[-1]] = value
    return validate(build(ExperimentConfig, data))


__all__ = [
    "AdaSAPConfig",
    "AttackConfig",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ExperimentConfig",
    "FinetuneConfig",
    "HarpConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "PhaseConfig",
    "PretrainConfig",
    "PruneConfig",
    "RlthConfig",
    "S2APConfig",
    "apply_overrides",
    "build",
    "dataclasses",
    "from_dict",
    "load",
    "replace",
    "stable_hash",
    "validate",
]
