"""The per-cell ASHA scheduler, driven by hand (imports Ray Tune, starts no Ray)."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("ray.tune")

from ray.tune.schedulers import TrialScheduler  # noqa: E402

from s2ap.tune.scheduler import CellScheduler  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def fake_trial(trial_id: str, cell: int) -> Any:
    return SimpleNamespace(trial_id=trial_id, config={"cell": cell})


def test_asha_per_cell_never_compares_across_cells() -> None:
    sched = CellScheduler("val_pgd_acc", "max", max_t=5, grace_period=2, reduction_factor=2, per_cell=True)
    good, bad, other = fake_trial("good", 0), fake_trial("bad", 0), fake_trial("other", 1)
    for t in (good, bad, other):
        sched.on_trial_add(None, t)
    before = {"search_epoch": 1, "val_pgd_acc": 0.0}
    assert sched.on_trial_result(None, bad, before) == TrialScheduler.CONTINUE  # grace period
    assert (
        sched.on_trial_result(None, good, {"search_epoch": 2, "val_pgd_acc": 0.8}) == TrialScheduler.CONTINUE
    )
    # Worse than its own cell's first trial at the rung: stopped.
    assert sched.on_trial_result(None, bad, {"search_epoch": 2, "val_pgd_acc": 0.3}) == TrialScheduler.STOP
    # Just as weak, but alone in its cell: it goes on.
    assert (
        sched.on_trial_result(None, other, {"search_epoch": 2, "val_pgd_acc": 0.1}) == TrialScheduler.CONTINUE
    )
    # The final report (evaluation done) is never judged.
    assert (
        sched.on_trial_result(None, bad, {"search_epoch": 6, "val_pgd_acc": 0.0, "final": True}) == "CONTINUE"
    )
    shared = CellScheduler("val_pgd_acc", "max", max_t=5, grace_period=2, reduction_factor=2, per_cell=False)
    for t in (good, other):
        shared.on_trial_add(None, t)
    shared.on_trial_result(None, good, {"search_epoch": 2, "val_pgd_acc": 0.8})
    assert shared.on_trial_result(None, other, {"search_epoch": 2, "val_pgd_acc": 0.1}) == TrialScheduler.STOP


def test_completed_and_removed_trials_are_forgotten_per_cell() -> None:
    sched = CellScheduler("val_pgd_acc", "max", max_t=5, grace_period=2, reduction_factor=2, per_cell=True)
    a, b, c = fake_trial("a", 0), fake_trial("b", 0), fake_trial("c", 1)
    for t in (a, b, c):
        sched.on_trial_add(None, t)
    assert sched.known == {0: {"a", "b"}, 1: {"c"}}
    sched.on_trial_result(None, a, {"search_epoch": 2, "val_pgd_acc": 0.8})
    sched.on_trial_complete(None, a, {"search_epoch": 5, "val_pgd_acc": 0.8, "final": True})
    sched.on_trial_remove(None, b)  # e.g. stopped by the controller
    # Told twice, or about a trial it never saw: nothing to forward, nothing raised.
    sched.on_trial_complete(None, a, {"search_epoch": 5, "val_pgd_acc": 0.8})
    sched.on_trial_remove(None, b)
    sched.on_trial_remove(None, fake_trial("never", 1))
    assert sched.known == {0: set(), 1: {"c"}}
    # The per-cell records survive a save/restore (Tune pickles the scheduler).
    again = pickle.loads(pickle.dumps(sched))
    assert again.known == sched.known and again.metric == "val_pgd_acc"
    # The completed trial still counts at its cell's rung: a weaker newcomer is stopped.
    late = fake_trial("late", 0)
    again.on_trial_add(None, late)
    assert again.on_trial_result(None, late, {"search_epoch": 2, "val_pgd_acc": 0.1}) == TrialScheduler.STOP


def test_scheduler_uses_no_private_ray_attributes() -> None:
    """Only this module's own helpers may be private: never ASHA's or Tune's internals."""
    tree = ast.parse((ROOT / "s2ap" / "tune" / "scheduler.py").read_text())
    own = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    private = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
    }
    assert private <= own, private - own
