"""The probe (prune.probe_after): a rung value measured on a copy, never changing the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from s2ap.errors import ConfigError
from s2ap.experiment import from_dict, with_overrides
from s2ap.pipeline import Pipeline
from s2ap.rung_probe import COLUMNS
from s2ap.state import RunState
from tests.helpers.configs import tiny_run


def _run(folder: Path, **changes: Any) -> tuple[dict, list[dict[str, Any]], Pipeline]:
    """The final row, every epoch's saved run state (weights, scores, optimizer) and the pipeline."""
    cfg = with_overrides(from_dict(tiny_run()), changes)
    states: list[dict[str, Any]] = []

    def reporter(metrics: dict, path: Path | None) -> None:
        assert path is not None
        saved = RunState.load(path)
        states.append({"model": saved.model, "optimizer": saved.optimizer, "best": saved.best})

    pipeline = Pipeline(cfg, folder, reporter=reporter)
    return pipeline.run(), states, pipeline


def _same(a: Any, b: Any, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif hasattr(a, "__dataclass_fields__"):
        _same(vars(a), vars(b), where)
    else:
        assert a == b, where


@pytest.mark.slow  # two multi-epoch runs
@pytest.mark.parametrize("best_mask", ["train_loss_iter", "val_robust"])
def test_the_probe_leaves_the_run_bit_exact(best_mask: str, tmp_path: Path) -> None:
    """S2AP on and augmentation on, so every random stream the run draws from is in play."""
    common = {"s2ap.enabled": True, "data.augment": True, "prune.best_mask": best_mask}
    off_final, off_states, off = _run(tmp_path / "off", **common)
    on_final, on_states, on = _run(tmp_path / "on", **common, **{"prune.probe_after": [1, 3]})

    # Every epoch's weights, scores, BatchNorm buffers, optimizer state and best mask are the same.
    assert len(on_states) == len(off_states)
    for epoch, (a, b) in enumerate(zip(off_states, on_states, strict=True)):
        _same(a, b, f"global epoch {epoch}")
    for key in ("clean_acc", "pgd_acc", "final_val_pgd_acc", "best_mask_epoch", "hamming", "density"):
        assert off_final[key] == on_final[key], key
    assert off_final["config_hash"] == on_final["config_hash"]  # the probe is no part of the result

    rows_off = pd.read_parquet(tmp_path / "off" / "epochs.parquet")
    rows_on = pd.read_parquet(tmp_path / "on" / "epochs.parquet")
    timing = ["time_s", *COLUMNS]
    pd.testing.assert_frame_equal(rows_off.drop(columns=timing), rows_on.drop(columns=timing))

    # The probe's rows: after pruning epochs 1 and 3 only, on every validation point.
    assert rows_off[list(COLUMNS)].isna().all().all()
    probed = rows_on[rows_on["probe_val_pgd_acc"].notna()]
    assert list(zip(probed["phase"], probed["epoch"], strict=True)) == [("prune", 0), ("prune", 2)]
    n_val = len(on.splits.val)  # type: ignore[arg-type]
    assert n_val > 48  # more than eval.val_limit: the probe measures them all
    assert (probed["probe_val_pgd_acc_n"] == n_val).all()
    assert probed["probe_val_pgd_acc"].between(0, 1).all() and (probed["probe_time_s"] > 0).all()
    assert rows_on["val_pgd_acc_n"].max() == 48


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prune.probe_after": [4]}, "prune.probe_after"),
        ({"prune.probe_after": [2, 1]}, "prune.probe_after"),
        ({"prune.probe_after": [0]}, "prune.probe_after"),
    ],
)
def test_probe_points_outside_the_search_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        with_overrides(from_dict(tiny_run()), changes)
