"""ASHA's clock: epochs trained after pretraining.

Not the global epoch: a trial whose pretraining came from the cache has no pretraining
epochs, so counting them would shift it against a trial that pretrained itself. Which
phases train how many epochs is :func:`s2ap.experiment.phases`, the one rule for that.
"""

from __future__ import annotations

from s2ap.config import ExperimentConfig
from s2ap.experiment import phases


def search_epoch(cfg: ExperimentConfig, phase: str, epoch: int) -> int:
    """The clock after ``epoch`` (0-based) of ``phase``: 0 while pretraining, then 1, 2, ..."""
    if phase == "prune":
        return epoch + 1
    if phase == "finetune":
        return phases(cfg).prune + epoch + 1
    return 0


def search_epochs(cfg: ExperimentConfig) -> int:
    """The clock at the end of a run: its pruning (when the method trains scores) plus
    finetuning epochs."""
    return phases(cfg).after_pretraining
