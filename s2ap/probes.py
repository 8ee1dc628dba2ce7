"""What a run measures besides training: validation per epoch, the test evaluation, and the
paper's score-space sharpness measures (lambda_max during pruning, the loss difference
after it).

Every measurement is distributed-aware: each rank measures its share of the points, and the
means are weighted by the points each rank measured (:meth:`DistInfo.weighted_means`), so a
2-rank run reports what one process would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from s2ap.attacks import PGD
from s2ap.config import ExperimentConfig
from s2ap.data import Splits
from s2ap.distributed import DistInfo
from s2ap.evaluate import PREDICTIONS, clean_accuracy, evaluate, pgd_accuracy
from s2ap.layers import ScoredLayer
from s2ap.metrics import lambda_max, loss_difference
from s2ap.objectives import Objective
from s2ap.results import ACCURACIES
from s2ap.seeding import derive_seed


class Probes:
    """The measurements of one run, bound to its model, data and process group."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        model: nn.Module,
        layers: list[ScoredLayer],
        objective: Objective,
        splits: Splits,
        dist: DistInfo,
        device: torch.device,
    ) -> None:
        self.cfg = cfg
        self.model = model
        self.layers = layers
        self.objective = objective
        self.splits = splits
        self.dist = dist
        self.device = device
        self._fixed: tuple[Tensor, Tensor] | None = None  # read once, on first use

    def _eval_loader(self, dataset: Dataset, limit: int | None = None) -> DataLoader:
        return DataLoader(
            self.dist.shard(dataset, limit), batch_size=self.cfg.data.eval_batch_size, shuffle=False
        )

    # ------------------------------------------------------------------ every epoch

    def validate(self, every_point: bool = False) -> tuple[float, float, int]:
        """Clean and PGD accuracy on the validation split (``eval.val_limit`` points, or all
        of them), and the number of points both were measured on (summed over ranks)."""
        a = self.cfg.attack
        loader = self._eval_loader(self.splits.val, None if every_point else self.cfg.eval.val_limit)
        n = len(loader.dataset)  # type: ignore[arg-type]
        attack = PGD(a.eps, a.step_size, self.cfg.eval.val_pgd_steps, a.random_start)
        clean = clean_accuracy(self.model, loader, self.device) if n else 0.0
        robust = pgd_accuracy(self.model, loader, attack, self.device) if n else 0.0
        means = self.dist.weighted_means({"clean": (clean, n), "robust": (robust, n)}, self.device)
        total = int(self.dist.all_reduce_sum([float(n)], self.device)[0])
        return float(means["clean"] or 0.0), float(means["robust"] or 0.0), total

    def final_validation(self) -> dict[str, Any]:
        """The run's last word on the validation split: what selection reads, never test."""
        torch.manual_seed(derive_seed(self.cfg.seed, "final_validation", self.dist.rank))
        clean, robust, n = self.validate()
        return {
            "final_val_clean_acc": clean,
            "final_val_clean_acc_n": n,
            "final_val_pgd_acc": robust,
            "final_val_pgd_acc_n": n,
        }

    # ------------------------------------------------------------------ the test split

    def test_metrics(self, autoattack: bool) -> dict[str, Any]:
        """Clean, PGD, AutoAttack (when asked) and corruption accuracy on the test split, each
        ``X`` with its points ``X_n`` (see :func:`s2ap.evaluate.evaluate`)."""
        e = self.cfg.eval
        points = e.test_points
        if points is not None:
            points = max(1, -(-points // self.dist.world))
        eval_cfg = replace(e, autoattack=autoattack, test_points=points)
        loader = self._eval_loader(self.splits.test, self.cfg.data.test_limit)
        n = len(loader.dataset)  # type: ignore[arg-type]
        # Evaluation randomness depends on nothing that ran before it (resumable runs).
        torch.manual_seed(derive_seed(self.cfg.seed, "test", autoattack, self.dist.rank))
        if n:
            out = evaluate(self.model, loader, eval_cfg, self.cfg.attack, self.device)
        else:  # a rank with no test points in a tiny distributed evaluation
            measured = ("clean_acc", "pgd_acc", "robust_acc", "clean_acc_full", "pgd_acc_full")
            out = {k: 0.0 for k in measured} | {f"{k}_n": 0 for k in measured}
            out |= {"aa_acc": 0.0 if autoattack else None, "aa_acc_n": 0 if autoattack else None}
            out |= {"robust_attack": "autoattack" if autoattack else "pgd", "gradient_masking": False}
            out |= {"corruption_acc": None, "corruption_acc_n": None}
            out[PREDICTIONS] = {k: [] for k in ("index", "label", "clean", "pgd")}
            out[PREDICTIONS]["aa"] = [] if autoattack else None
        # Positions in this rank's shard -> indices in the test split, every rank's points.
        shard = loader.dataset.indices  # type: ignore[attr-defined]
        out[PREDICTIONS]["index"] = [int(shard[i]) for i in out[PREDICTIONS]["index"]]
        out[PREDICTIONS] = self.dist.gather_columns(out[PREDICTIONS])
        if self.dist.world == 1:
            return out
        # Each rank's accuracies weighted by the points they were measured on; the points add up.
        names = [k for k in ACCURACIES if f"{k}_n" in out]
        weights = {k: (out.get(k), float(out.get(f"{k}_n") or 0)) for k in names}
        means = self.dist.weighted_means(weights, self.device)
        totals = self.dist.all_reduce_sum([w for _, w in weights.values()], self.device)
        for k, total in zip(names, totals, strict=True):
            if out.get(k) is not None:
                out[k], out[f"{k}_n"] = means[k], int(total)
        out["gradient_masking"] = self.dist.any(bool(out.get("gradient_masking")), self.device)
        return out

    # ------------------------------------------------------------------ score-space sharpness

    def fixed_batch(self) -> tuple[Tensor, Tensor]:
        """The first ``eval.lambda_max_batch`` validation points: the same batch every time."""
        if self._fixed is None:
            n = min(self.cfg.eval.lambda_max_batch, len(self.splits.val))  # type: ignore[arg-type]
            x, y = next(iter(DataLoader(Subset(self.splits.val, list(range(n))), batch_size=n)))
            self._fixed = (x.to(self.device), y.to(self.device))
        return self._fixed

    def lambda_max_hook(self, sink: list[float]) -> Callable[[int], None] | None:
        """A per-iteration hook measuring lambda_max every ``eval.lambda_max_every`` steps
        into ``sink`` (None when the measurement is off)."""
        every = self.cfg.eval.lambda_max_every
        if every <= 0:
            return None
        x, y = self.fixed_batch()
        scores = [layer.scores for layer in self.layers]

        def hook(step: int) -> None:
            if step % every:
                return
            batch = self.objective.craft(self.model, x, y)
            self.model.eval()  # BatchNorm in eval mode: a fixed function of the scores
            try:
                value = lambda_max(
                    lambda: self.objective.loss(self.model, batch)[0],
                    scores,
                    iters=self.cfg.eval.lambda_max_iters,
                    generator=torch.Generator(device=self.device).manual_seed(step),
                )
            finally:
                self.model.train()
            sink.append(value)

        return hook

    def loss_differences(self) -> dict[str, list[float]]:
        """The score-space loss difference at each ``eval.loss_diff_rhos`` (empty when off)."""
        rhos = self.cfg.eval.loss_diff_rhos
        if not rhos:
            return {}
        x, y = self.fixed_batch()
        self.model.eval()
        torch.manual_seed(derive_seed(self.cfg.seed, "loss_difference"))
        batch = self.objective.craft(self.model, x, y)
        scores = [layer.scores for layer in self.layers]
        for p in scores:
            p.requires_grad_(True)
        diffs = []
        for rho in rhos:
            _, increase = loss_difference(
                lambda: self.objective.loss(self.model, batch)[0], scores, rho, self.cfg.eval.loss_diff_steps
            )
            diffs.append(increase)
        return {"loss_diff_rho": list(rhos), "loss_diff": diffs}
