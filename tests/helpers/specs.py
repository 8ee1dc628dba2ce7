"""The small search specs tests build on, written once: change what a test is about, keep the rest.

* :func:`unit_search`: a spec the search's unit tests load but never train (two grid cells,
  Orig. and S2AP, gamma searched, storage never written).
* :func:`tiny_search`: a spec whose trials would train in seconds on CPU (8x8 digits, one
  epoch per phase, two of pruning); the service's tests submit it to a fake cluster.

Both take the base's changes as dotted keys (``{"prune.epochs": 3}``) and the spec's own
top-level keys as keyword arguments, and return a fresh copy each call.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

GAMMA = {"type": "loguniform", "low": 0.001, "high": 0.01}

UNIT_BASE: dict[str, Any] = {
    "data": {"name": "digits"},
    "prune": {"epochs": 4},
    "s2ap": {"enabled": True, "warmup_epochs": 1},
}

TINY_BASE: dict[str, Any] = {
    "data": {"name": "digits", "image_size": 8, "train_limit": 64},
    "pretrain": {"epochs": 1},
    "prune": {"epochs": 2},
    "finetune": {"epochs": 1},
    "s2ap": {"enabled": True, "warmup_epochs": 1},
    "eval": {"autoattack": False},
}


def changed(config: Mapping[str, Any], changes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A deep copy of ``config`` with dotted keys set (``{"prune.sparsity": 0.9}``)."""
    out = copy.deepcopy(dict(config))
    for key, value in (changes or {}).items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = copy.deepcopy(value)
    return out


def unit_search(base: Mapping[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    """Grid ``s2ap.enabled: [false, true]``, gamma searched, 2 samples per cell, storage unused."""
    out = {
        "name": "s",
        "base": changed(UNIT_BASE, base),
        "grid": {"s2ap.enabled": [False, True]},
        "search": {"s2ap.gamma": dict(GAMMA)},
        "num_samples": 2,
        "storage": "/unused",
    }
    return {**out, **copy.deepcopy(spec)}


def tiny_search(base: Mapping[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    """One trial of :data:`TINY_BASE` under FIFO, unless ``grid`` / ``search`` say more."""
    out = {"name": "tiny", "base": changed(TINY_BASE, base), "scheduler": {"type": "fifo"}}
    return {**out, **copy.deepcopy(spec)}
