"""The probe (``prune.probe_after``): an early look at where a mask search is going.

After a chosen pruning epoch, the best mask so far (:class:`~s2ap.state.BestMask`, by
``prune.best_mask``'s rule; the current scores before there is one) is frozen on a deep copy
of the model, the copy is finetuned for ``prune.probe_epochs`` with the finetuning phase's
optimizer, learning rate and schedule (without AWP), and its PGD accuracy is measured on every
validation point. A search's scheduler ranks trials by it (``scheduler.rungs: probe``).

The run never sees the probe: it trains a copy, with its own optimizer, inside
:func:`torch.random.fork_rng`, so the run's scores, weights, optimizer state and random
streams are what they would have been without it (``tests/test_rung_probe.py`` checks this
bit for bit). Its cost is in the run's wall time and in ``probe_time_s``.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from s2ap import layers as L
from s2ap.config import ExperimentConfig
from s2ap.data import Splits
from s2ap.distributed import DistInfo, ShardedBatches
from s2ap.objectives import Objective
from s2ap.probes import Probes
from s2ap.seeding import derive_seed
from s2ap.state import BestMask
from s2ap.train import Epoch, Trainer, build_optimizer, build_scheduler

log = logging.getLogger(__name__)

# The epochs.parquet columns a probe fills (null in every other row).
COLUMNS = ("probe_val_pgd_acc", "probe_val_pgd_acc_n", "probe_time_s")


def empty() -> dict[str, Any]:
    """The probe's columns of a row without a probe."""
    return dict.fromkeys(COLUMNS)


def due(cfg: ExperimentConfig, phase: str, epoch: int) -> bool:
    """Whether a probe follows ``epoch`` (0-based) of ``phase``."""
    return phase == "prune" and epoch + 1 in cfg.prune.probe_after


def run_probe(
    cfg: ExperimentConfig,
    model: nn.Module,
    best: BestMask | None,
    objective: Objective,
    splits: Splits,
    dist: DistInfo,
    device: torch.device,
    amp: bool,
    loader: Callable[[ShardedBatches], Iterable],
    epoch: int,
) -> dict[str, Any]:
    """The probe after pruning epoch ``epoch`` (0-based): its validation PGD accuracy, the
    points it was measured on and its time. ``loader`` builds a training loader over batches."""
    start = time.perf_counter()
    ft = cfg.finetune
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        probe = copy.deepcopy(model)
        layers = [layer for _, layer in L.scored_layers(probe)]
        if best is not None:
            with torch.no_grad():
                for layer, scores in zip(layers, best.scores, strict=True):
                    layer.scores.copy_(scores)
        L.freeze_masks(probe)  # the mask fixed, as finetuning sees it
        weights = []
        for name, p in probe.named_parameters():
            p.requires_grad_(not name.endswith("scores"))
            if p.requires_grad:
                weights.append(p)
        optimizer = build_optimizer(weights, ft.optimizer, ft.lr, ft.momentum, ft.weight_decay)
        schedule = build_scheduler(optimizer, ft.schedule, ft.epochs)
        batches = ShardedBatches(len(splits.train), cfg.data.batch_size, shuffle=True, dist_info=dist)  # type: ignore[arg-type]
        trainer = Trainer(dist.wrap(probe, device), objective, optimizer, device, amp=amp)
        for k in range(cfg.prune.probe_epochs):
            # The finetuning phase's own batches and augmentation for its epoch k.
            torch.manual_seed(derive_seed(cfg.seed, "probe", epoch, k))
            batches.set_seed(derive_seed(cfg.seed, "data", "finetune", k))
            splits.seed_training(derive_seed(cfg.seed, "augment", "finetune", k))
            trainer.epoch(loader(batches), batches, Epoch("probe", k))
            schedule.step()
        torch.manual_seed(derive_seed(cfg.seed, "probe_validation", epoch, dist.rank))
        _, robust, n = Probes(cfg, probe, layers, objective, splits, dist, device).validate(every_point=True)
    seconds = time.perf_counter() - start
    log.info(
        "probe after pruning epoch %d: validation PGD %.4f on %d points (%.1fs)",
        epoch + 1,
        robust,
        n,
        seconds,
    )
    return {"probe_val_pgd_acc": robust, "probe_val_pgd_acc_n": n, "probe_time_s": seconds}
