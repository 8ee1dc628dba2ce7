"""An experiment config checked against the registries, and what follows from it alone.

:mod:`s2ap.config` checks shapes and ranges; this module, one floor above the data sets,
models and pruning methods, checks what needs them: names that must exist, the rules a
method puts on the settings, and which phases run. Every entry point (the run CLI, the
search, the service) builds configs through :func:`load`, :func:`from_dict` or
:func:`with_overrides`, so a config that reaches the pipeline has been checked once, whole.

It also holds the facts about a run that the config decides before anything trains: the
epochs each phase trains (:func:`phases`), what a pretrained checkpoint depends on
(:func:`pretrain_key`) and the identity columns of a result row (:func:`identity`), each
written once and shared by the pipeline, the search and its tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from s2ap.coerce import build, stable_hash, to_dict
from s2ap.config import ExperimentConfig, changed, read
from s2ap.data import DATASETS, DataInfo, augments, is_import_path, resolve_data
from s2ap.errors import ConfigError
from s2ap.models import MODELS, from_config
from s2ap.models.external import is_external, resolve
from s2ap.pruning import METHODS, PruningMethod


def check(cfg: ExperimentConfig) -> ExperimentConfig:
    """Names that must exist in the registries, then the method's own rules."""
    if is_import_path(cfg.data.name):
        resolve_data(cfg.data.name)  # imported, not called: loading happens when the run starts
    elif cfg.data.name not in DATASETS:
        allowed = ", ".join(DATASETS.names())
        raise ConfigError(
            "data.name", f"unknown {cfg.data.name!r}; allowed: {allowed} or package.module:callable"
        )
    check_model(cfg)
    return check_method(cfg)


def check_method(cfg: ExperimentConfig) -> ExperimentConfig:
    """The pruning method exists and accepts the settings (its own rules)."""
    if cfg.prune.method not in METHODS:
        allowed = ", ".join(METHODS.names())
        raise ConfigError("prune.method", f"unknown {cfg.prune.method!r}; allowed: {allowed}")
    METHODS.get(cfg.prune.method).check_config(cfg)
    return cfg


def check_model(cfg: ExperimentConfig) -> None:
    """The model exists (an external one is imported, not built: building needs the data
    set's facts and happens when the run starts), and its checkpoint is a file."""
    model = cfg.model
    if is_external(model.name):
        resolve(model.name)
    elif model.name not in MODELS:
        raise ConfigError(
            "model.name",
            f"unknown {model.name!r}; allowed: {', '.join(MODELS.names())}, torchvision:NAME, "
            "timm:NAME or package.module:callable",
        )
    elif model.kwargs:
        raise ConfigError(
            "model.kwargs", f"only for torchvision:, timm: or import-path models, not {model.name!r}"
        )
    check_checkpoint(cfg)


def check_checkpoint(cfg: ExperimentConfig) -> None:
    """A checkpoint to start from is a file, given once."""
    model = cfg.model
    if model.checkpoint is not None:
        if not Path(model.checkpoint).is_file():
            raise ConfigError("model.checkpoint", f"file not found: {model.checkpoint}")
        if cfg.pretrain.checkpoint is not None:
            raise ConfigError(
                "model.checkpoint", "give either model.checkpoint or pretrain.checkpoint, not both"
            )


def from_dict(data: Mapping[str, Any] | None) -> ExperimentConfig:
    return check(build(ExperimentConfig, data or {}))


def load(path: str | Path, overrides: Iterable[str] = ()) -> ExperimentConfig:
    return check(read(path, overrides))


def with_overrides(cfg: ExperimentConfig, overrides: Mapping[str, Any] | Iterable[str]) -> ExperimentConfig:
    """``cfg`` (checked) with ``overrides`` set, checked, unless they changed nothing."""
    out = changed(cfg, overrides)
    return cfg if out == cfg else check(out)


def method_class(cfg: ExperimentConfig) -> type[PruningMethod]:
    return METHODS.get(cfg.prune.method)


def resolved(cfg: ExperimentConfig, info: DataInfo) -> ExperimentConfig:
    """``cfg`` with what the data decided written in: the normalisation the model uses
    (``model.mean``/``std``), the image size and the class count. A run folder's
    ``config.yaml`` holds it, so the folder alone rebuilds the model that made its numbers."""
    model = cfg.model if cfg.model.mean is not None else replace(cfg.model, mean=info.mean, std=info.std)
    data = replace(cfg.data, image_size=info.image_size, num_classes=info.num_classes)
    return replace(cfg, model=model, data=data)


# --------------------------------------------------------------------------- which phases run


@dataclass(frozen=True)
class Phases:
    """How many epochs each phase trains in a run of one config (0: it trains nothing).

    ``pretrain`` is 0 when a checkpoint is given (``pretrain.checkpoint`` or
    ``model.checkpoint``) or the method keeps random weights (a pretraining cache may still
    skip it at run time); ``prune`` is 0 when a mask is given or the method learns no scores;
    ``finetune`` is 0 when the method does not finetune.
    """

    pretrain: int
    prune: int
    finetune: int

    @property
    def after_pretraining(self) -> int:
        return self.prune + self.finetune


def bound_model(
    cfg: ExperimentConfig,
    info: DataInfo,
    method: PruningMethod,
    net: torch.nn.Module | None = None,
    place: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m,
) -> torch.nn.Module:
    """The run's masked network (``net`` scored in place, else built from ``cfg.model`` for
    ``info``'s data), moved by ``place`` (to the run's device), then bound to ``method``: its
    checks and hooks, whose state (HARP's rates) lives on the model's device. The one build
    the pipeline and the search's pre-Ray check share; seeding is the caller's."""
    size = cfg.data.image_size or info.image_size
    model = from_config(
        cfg.model,
        num_classes=info.num_classes,
        in_channels=info.in_channels,
        image_size=size,
        mean=info.mean,
        std=info.std,
        granularity=method.granularity,
        net=net,
    )
    model = place(model)
    method.bind(model, (1, info.in_channels, size, size))
    return model


def phases(cfg: ExperimentConfig) -> Phases:
    method = method_class(cfg)
    given = cfg.pretrain.checkpoint is not None or cfg.model.checkpoint is not None
    pretrain = cfg.pretrain.epochs if method.pretrains and not given else 0
    prune = cfg.prune.epochs if method.trains_scores and cfg.prune.mask is None else 0
    finetune = cfg.finetune.epochs if method.finetunes else 0
    return Phases(pretrain, prune, finetune)


def pretrain_key(cfg: ExperimentConfig) -> str:
    """What a pretrained checkpoint depends on: never gamma, pruning or finetuning."""
    return stable_hash(
        {
            "model": to_dict(cfg.model),
            "data": to_dict(cfg.data),
            "seed": cfg.seed,
            "pretrain": to_dict(cfg.pretrain),
            "attack": to_dict(cfg.attack),
            "objective": to_dict(cfg.objective),
        }
    )


# --------------------------------------------------------------------------- result rows


def granularity(cfg: ExperimentConfig) -> str:
    """What a mask entry covers in this run: the config's choice or the method's default."""
    return cfg.prune.granularity or method_class(cfg).default_granularity


def fast_settings(cfg: ExperimentConfig, device_type: str) -> dict[str, bool]:
    """The GPU fast path this run uses on a ``device_type`` device: bf16 autocast and
    channels_last are CUDA-only (null = on with CUDA), compile is taken as configured."""
    cuda = device_type == "cuda"
    return {
        "amp": cuda and cfg.amp is not False,
        "channels_last": cuda and cfg.channels_last is not False,
        "compile": cfg.compile,
    }


def provenance(device_type: str) -> dict[str, Any]:
    """Where the numbers came from: the same code and seed give other numbers on other
    kernels, so every run row records the torch version, the GPU's name (CUDA) or the CPU
    capability torch dispatches to (``AVX2``, ``AVX512``...), its thread count and whether
    deterministic algorithms were on."""
    cuda = device_type == "cuda" and torch.cuda.is_available()
    name = torch.cuda.get_device_name() if cuda else f"cpu {torch.backends.cpu.get_cpu_capability()}"
    return {
        "torch_version": str(torch.__version__),  # a plain str: TorchVersion does not load with weights_only
        "device_name": name,
        "threads": torch.get_num_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }


# S2AP's knobs that AWP finetuning uses too: they apply to an Orig. + AWP finetuning run.
AWP_KEYS = ("s2ap.gamma", "s2ap.projection", "s2ap.ascent")


def applies(cfg: ExperimentConfig, key: str) -> bool:
    """Whether the dotted config ``key`` can change this config's result. S2AP's knobs need
    S2AP on (gamma, projection and ascent: S2AP or AWP finetuning), AdaSAP's the AdaSAP method, ``prune.best_mask`` a mask search that chooses; a
    setting that does not apply is null in every table (:func:`identity`, a search's trials)."""
    if key in AWP_KEYS:
        return cfg.s2ap.enabled or cfg.finetune_awp
    if key.startswith("s2ap.") and key != "s2ap.enabled":
        return cfg.s2ap.enabled
    if key.startswith("adasap."):
        return cfg.prune.method == "adasap"
    if key == "prune.best_mask":
        return phases(cfg).prune > 0 and method_class(cfg).best_mask_applies
    return True


def identity(cfg: ExperimentConfig, device_type: str | None = None) -> dict[str, Any]:
    """The result columns that follow from the config alone: every run row (and a search's
    stopped or failed trials) carries them. S2AP's knobs are null when S2AP is off, so an
    Orig. row never looks like it had a gamma (unless AWP finetuning used it). With ``device_type`` the fast-path columns
    are the settings used there and the :func:`provenance` columns are filled; without it,
    the configured ones (null = auto) and no provenance."""
    on = cfg.s2ap.enabled
    awp = on or cfg.finetune_awp  # gamma, projection and ascent shape AWP finetuning too
    fast = (
        fast_settings(cfg, device_type) | provenance(device_type)
        if device_type is not None
        else {"amp": cfg.amp, "channels_last": cfg.channels_last, "compile": cfg.compile}
    )
    searches = phases(cfg).prune > 0 and method_class(cfg).best_mask_applies
    return {
        "config_hash": cfg.hash(),
        "seed": cfg.seed,
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        "method": cfg.prune.method,
        "granularity": granularity(cfg),
        "perturb": cfg.s2ap.perturb if on else None,
        "flops_reduction_target": cfg.prune.flops_reduction,
        "objective": cfg.objective.name,
        "sparsity": cfg.prune.sparsity,
        "s2ap": on,
        "gamma": cfg.s2ap.gamma if awp else None,
        "warmup_epochs": cfg.s2ap.warmup_epochs if on else None,
        "prune_epochs": cfg.prune.epochs,
        "projection": cfg.s2ap.projection if awp else None,
        "ascent": cfg.s2ap.ascent if awp else None,
        "direction": cfg.s2ap.direction if on else None,
        "finetune_awp": cfg.finetune_awp,
        "best_mask": cfg.prune.best_mask if searches else None,
        "augment": augments(cfg.data),
        "adasap_prune_every": cfg.adasap.prune_every if cfg.prune.method == "adasap" else None,
        "pgd_steps": cfg.eval.pgd_steps,
        **fast,
    }
