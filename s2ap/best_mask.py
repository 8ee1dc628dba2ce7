"""Which scores of the search become the mask (``prune.best_mask``).

* ``train_loss_iter`` (Algorithm 1, lines 13-15): the scores with the lowest robust training
  loss, seen at every iteration before that iteration's update;
* ``val_robust``: the epoch with the highest validation PGD accuracy;
* ``last``: the last epoch (also the rule of a method for which ``prune.best_mask`` does not
  apply: ``best_mask_applies`` is False).

Only scores the method admits are candidates (HARP's before it meets its budget are not);
when none was, the last epoch's are returned with a warning. The best so far lives in the
run state (:attr:`~s2ap.state.RunState.best`), so a resumed search keeps it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from s2ap.config import ExperimentConfig
from s2ap.distributed import DistInfo
from s2ap.layers import ScoredLayer
from s2ap.pruning import PruningMethod
from s2ap.state import BestMask, RunState

log = logging.getLogger(__name__)


class BestMaskTracker:
    """Keeps the best scores of one search in ``state.best`` (lower score is better)."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        method: PruningMethod,
        layers: Sequence[ScoredLayer],
        state: RunState,
        dist: DistInfo,
        device: torch.device,
    ) -> None:
        self.rule = cfg.prune.best_mask if method.best_mask_applies else "last"
        self.cfg = cfg
        self.method = method
        self.layers = list(layers)
        self.state = state
        self.dist = dist
        self.device = device

    def per_iteration(self, epoch: int) -> Callable[[Tensor, int], None] | None:
        """The hook that sees each iteration's robust loss before its update, for
        ``train_loss_iter`` (None for the per-epoch rules)."""
        if self.rule != "train_loss_iter":
            return None
        iteration = 0

        def before_update(loss: float | Tensor, n: int) -> None:
            nonlocal iteration
            # Scores the method does not admit cannot change the choice: no all-reduce then
            # (admissibility is the same on every rank).
            if self.method.admissible():
                # The loss over every rank's points, so every rank keeps the same scores.
                total, count = self.dist.all_reduce_sum([float(loss) * n, n], self.device)
                self.offer(total / max(count, 1), epoch, iteration)
            iteration += 1

        return before_update

    def end_epoch(self, epoch: int, val_pgd_acc: float) -> None:
        """The per-epoch rules' candidate: this epoch's scores."""
        if self.rule == "val_robust":
            self.offer(-val_pgd_acc, epoch)
        elif self.rule == "last":
            self.offer(-epoch, epoch)

    def offer(self, score: float, epoch: int, iteration: int | None = None, fallback: bool = False) -> None:
        """Copy the current scores when the method admits them and they beat the best so far;
        ``fallback`` keeps them regardless."""
        best = self.state.best
        if not fallback and (not self.method.admissible() or (best is not None and not score < best.score)):
            return
        # A copy on the device (no host copy per new minimum); the run state saves it on the CPU.
        scores = [layer.scores.detach().clone() for layer in self.layers]
        self.state.best = BestMask(score, epoch, scores, self.method.state_dict(), iteration)

    def restore(self, last_epoch: int) -> BestMask:
        """Put the chosen scores (and the method's state of then, e.g. HARP's rates) back."""
        if self.state.best is None:  # no admissible candidate (HARP never met its budget)
            log.warning(
                "no pruning epoch was admissible under best_mask=%r: returning the last one",
                self.cfg.prune.best_mask,
            )
            self.offer(float("inf"), last_epoch, fallback=True)
        best = self.state.best
        assert best is not None
        with torch.no_grad():
            for layer, scores in zip(self.layers, best.scores, strict=True):
                layer.scores.copy_(scores)
        self.method.load_state_dict(best.method or {})
        s2ap = self.cfg.s2ap
        if s2ap.enabled and best.epoch < s2ap.warmup_epochs:
            log.warning(
                "the returned mask comes from pruning epoch %d, before S2AP began at epoch %d: "
                "no S2AP epoch beat it under best_mask=%r, so this run's mask is the plain method's",
                best.epoch,
                s2ap.warmup_epochs,
                self.cfg.prune.best_mask,
            )
        return best
