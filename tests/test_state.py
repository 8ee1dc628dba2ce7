"""The run state file: what a resumed run reads back, and what older files still give."""

from __future__ import annotations

from pathlib import Path

import torch

from s2ap.state import BestMask, RunState


def test_state_round_trips_and_curves_come_from_the_rows(tmp_path: Path) -> None:
    rows = [
        {"phase": "pretrain", "epoch": 0, "hamming": None, "lambda_max": None},
        {"phase": "prune", "epoch": 0, "hamming": 0.0, "lambda_max": 2.0},
        {"phase": "prune", "epoch": 1, "hamming": 0.1, "lambda_max": None},
    ]
    state = RunState("abc", phase="prune", epoch=2, done=["pretrain"], rows=rows)
    state.best = BestMask(0.5, 1, [torch.ones(3)], {"coef": 2.0})
    state.save(tmp_path / "state.pt")
    back = RunState.load(tmp_path / "state.pt")
    assert back.curve("hamming") == [0.0, 0.1] and back.curve("lambda_max") == [2.0, None]
    assert back.best is not None and back.best.epoch == 1 and torch.equal(back.best.scores[0], torch.ones(3))
    assert (back.phase, back.epoch, back.done, back.best_epoch) == ("prune", 2, ["pretrain"], 1)
    assert not back.enter("prune") and back.enter("finetune") and (back.phase, back.epoch) == ("finetune", 0)
    assert not list(tmp_path.glob(".*tmp"))  # written atomically, nothing left behind


def test_a_state_file_of_the_earlier_layout_still_loads(tmp_path: Path) -> None:
    old = {
        "config_hash": "abc",
        "phase": "finetune",
        "epoch": 1,
        "done": ["pretrain", "prune"],
        "rows": [],
        "hamming": [0.0],
        "lambda_max": [None],
        "first_mask": None,
        "final": {"mask_clean_acc": 0.5},
        "wall_time_s": 3.0,
        "best": {"score": 0.1, "epoch": 0, "scores": [torch.zeros(2)], "method": {}},
        "model": {},
        "method": {},
        "optimizer": None,
        "scheduler": None,
    }
    torch.save(old, tmp_path / "state.pt")
    back = RunState.load(tmp_path / "state.pt")
    assert back.best == BestMask(0.1, 0, back.best.scores, {}) and back.final == {"mask_clean_acc": 0.5}
