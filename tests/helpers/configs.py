"""The small training configs tests build on, written once: change what a test is about, keep the rest.

* :func:`tiny_run`: the cnn on 8x8 digits that trains through all three phases in seconds on
  CPU (192 training points, two PGD steps, HYDRA at 80% sparsity, S2AP off, no AutoAttack).
* :func:`one_epoch_run`: one epoch of pretraining and of pruning, no finetuning, one PGD step
  at eps 0.1; for runs on data or a model the test brings (it names no data set or model).
* :func:`search_base`: the base of the searches Ray really runs (512 digits, PGD training,
  Adam pretraining that learns within two epochs, so sparsity visibly matters; S2AP on).

Both take dotted changes (``{"prune.epochs": 2}``) and ``without_keys``, dotted keys to leave at
their defaults (``without=("s2ap",)``), and return a fresh copy each call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tests.helpers.specs import changed

TINY_RUN: dict[str, Any] = {
    "seed": 0,
    "data": {"name": "digits", "image_size": 8, "batch_size": 64, "train_limit": 192, "test_limit": 96},
    "attack": {"steps": 2},
    "pretrain": {"epochs": 2, "lr": 0.05},
    "prune": {"method": "hydra", "sparsity": 0.8, "epochs": 3},
    "finetune": {"epochs": 1, "lr": 0.01},
    "s2ap": {"enabled": False, "gamma": 0.05, "warmup_epochs": 1},
    "eval": {"pgd_steps": 3, "autoattack": False, "val_limit": 48},
}

ONE_EPOCH_RUN: dict[str, Any] = {
    "data": {"batch_size": 32},
    "attack": {"eps": 0.1, "step_size": 0.05, "steps": 1},
    "pretrain": {"epochs": 1, "lr": 0.05},
    "prune": {"method": "hydra", "sparsity": 0.75, "epochs": 1},
    "finetune": {"epochs": 0},
    "eval": {"autoattack": False, "pgd_steps": 1, "val_limit": 16},
}

SEARCH_BASE: dict[str, Any] = {
    "seed": 0,
    "data": {"name": "digits", "image_size": 8, "train_limit": 512, "test_limit": 64, "batch_size": 32},
    "attack": {"steps": 1},
    "objective": {"name": "pgd"},
    "pretrain": {"epochs": 2, "lr": 0.01, "optimizer": "adam"},
    "prune": {"epochs": 2, "sparsity": 0.5},
    "finetune": {"epochs": 1, "lr": 0.01},
    "s2ap": {"enabled": True, "gamma": 0.005, "warmup_epochs": 1},
    "eval": {"pgd_steps": 2, "autoattack": False, "val_pgd_steps": 1, "val_limit": 64},
}


def without(config: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """A deep copy of ``config`` with dotted keys removed (``"data.batch_size"``, ``"s2ap"``)."""
    out = changed(config)
    for key in keys:
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node[part]
        del node[leaf]
    return out


def tiny_run(changes: Mapping[str, Any] | None = None, without_keys: Iterable[str] = ()) -> dict[str, Any]:
    """:data:`TINY_RUN` with ``changes`` set and ``without_keys`` left at their defaults."""
    return changed(without(TINY_RUN, without_keys), changes)


def one_epoch_run(
    changes: Mapping[str, Any] | None = None, without_keys: Iterable[str] = ()
) -> dict[str, Any]:
    """:data:`ONE_EPOCH_RUN` with ``changes`` set and ``without_keys`` left at their defaults."""
    return changed(without(ONE_EPOCH_RUN, without_keys), changes)


def search_base(changes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """:data:`SEARCH_BASE` with ``changes`` set."""
    return changed(SEARCH_BASE, changes)
