"""The run state: everything a run needs to continue after a crash, saved at every epoch end.

:class:`RunState` is what ``state.pt`` holds: where the run is (phase, epoch, phases done),
the per-epoch rows so far, the best mask of the search (:class:`BestMask`), the first mask
(the reference of the Hamming distance), the final metrics gathered so far and the tensors
to restore (model, method, optimizer, scheduler). Per-epoch curves such as the Hamming
distance and lambda_max are not stored twice: they are read off the rows.

The file is a plain mapping of Python values and tensors (``to_dict``), so it stays
readable without this class.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from s2ap import results
from s2ap.config import S2APConfig
from s2ap.io import save_tensors


@dataclass
class BestMask:
    """The scores the search returns, by ``prune.best_mask``'s rule."""

    score: float  # lower is better
    epoch: int
    scores: list[Tensor]  # per scored layer (on the device in a run, on the CPU in state.pt)
    method: dict[str, Any] = field(default_factory=dict)  # the method's state then (HARP's rates)
    iteration: int | None = None  # within ``epoch``, for the per-iteration rule (train_loss_iter)


@dataclass
class RunState:
    config_hash: str
    # the hash of the config with what the data decided filled in (config.yaml's): a run
    # resumed from its folder's config.yaml is the same run
    resolved_hash: str | None = None
    phase: str = "pretrain"
    epoch: int = 0  # epochs of ``phase`` done
    done: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    best: BestMask | None = None
    first_mask: dict[str, Tensor] | None = None
    final: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float = 0.0
    model: dict[str, Tensor] | None = None
    method: dict[str, Any] = field(default_factory=dict)
    sharpness: dict[str, Any] = field(default_factory=dict)  # a carried-over perturbation (algorithm1)
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None

    # ------------------------------------------------------------------ derived

    def curve(self, column: str) -> list[Any]:
        """One value per pruning epoch done, from the rows."""
        return [row.get(column) for row in self.rows if row.get("phase") == "prune"]

    @property
    def best_epoch(self) -> int | None:
        return None if self.best is None else self.best.epoch

    def final_row(
        self, identity: dict[str, Any], s2ap: S2APConfig, density: float, wall: float
    ) -> dict[str, Any]:
        """The run's row of ``final.parquet``: its identity, what the phases measured (in
        :attr:`final`), the search's curves and which epoch's mask it returned."""
        final, best_epoch = self.final, self.best_epoch
        measured = ["compact_params", "compact_flops", "flops_reduction", "gradient_masking"]
        measured += ["robust_attack", "mask_robust_attack", *results.ACCURACIES]
        measured += [f"{name}_n" for name in results.ACCURACIES]
        before_s2ap = s2ap.enabled and best_epoch is not None and best_epoch < s2ap.warmup_epochs
        return results.with_intervals(
            {
                **identity,
                "status": "ok",
                "error": None,
                "density": density,
                **{key: final.get(key) for key in measured},
                "best_mask_epoch": best_epoch,
                "best_mask_before_s2ap": before_s2ap,
                "hamming": self.curve("hamming"),
                "lambda_max": [v for v in self.curve("lambda_max") if v is not None],
                "loss_diff_rho": final.get("loss_diff_rho", []),
                "loss_diff": final.get("loss_diff", []),
                "wall_time_s": wall,
            }
        )

    def enter(self, phase: str) -> bool:
        """Move to ``phase`` (epoch 0) unless the run is already in it; True if it moved."""
        if self.phase == phase:
            return False
        self.phase, self.epoch = phase, 0
        return True

    # ------------------------------------------------------------------ files

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        # A plain mapping, without asdict()'s deep copy of every tensor at every epoch end.
        out["best"] = (
            None if self.best is None else {f.name: getattr(self.best, f.name) for f in fields(self.best)}
        )
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunState:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        best = values.get("best")
        if best is not None and not isinstance(best, BestMask):
            values["best"] = BestMask(**best)
        return cls(**values)

    def save(self, path: Path) -> Path:
        return save_tensors(self.to_dict(), path)  # on the CPU: loads anywhere

    @classmethod
    def load(cls, path: Path) -> RunState:
        return cls.from_dict(torch.load(path, map_location="cpu", weights_only=False))
