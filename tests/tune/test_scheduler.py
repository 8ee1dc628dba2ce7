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


class FakeController:
    """What the scheduler asks of Tune's controller: the trials, and stopping one."""

    def __init__(self, trials: list[Any]) -> None:
        self.trials = trials
        self.stopped: list[str] = []

    def get_trials(self) -> list[Any]:
        return self.trials

    def stop_trial(self, trial: Any) -> None:
        self.stopped.append(trial.trial_id)
        trial.status = "TERMINATED"


def probe_result(epoch: int, probe: float | None, val: float = 0.5) -> dict[str, Any]:
    """A pruning epoch's report (0-based epoch); ``probe`` None: no probe after it."""
    return {
        "phase": "prune",
        "epoch": epoch,
        "search_epoch": epoch + 1,
        "val_pgd_acc": val,
        "probe_val_pgd_acc": probe,
    }


# Scripted probe curves of one 8-trial cell: the value at probe 1 and at probe 2.
CURVES = {
    "t0": (0.30, None),
    "t1": (0.62, 0.70),
    "t2": (0.41, None),
    "t3": (0.55, None),
    "t4": (0.60, 0.58),
    "t5": (0.20, None),
    "t6": (0.47, None),
    "t7": (0.50, None),
}


def test_halving_keeps_the_best_quarter_at_each_probe_rung() -> None:
    """Keep ceil(8 / 4) = 2 after probe 1 (t1, t4), then ceil(2 / 4) = 1 after probe 2 (t1);
    everyone waits (paused) until the whole cell has reported, whatever order they come in."""
    sched = CellScheduler(
        "val_pgd_acc", "max", 7, 1, 4.0, True, probe_after=(1, 3), halving=True, sizes={0: 8, 1: 1}
    )
    trials = {name: fake_trial(name, 0) for name in CURVES} | {"solo": fake_trial("solo", 1)}
    for t in trials.values():
        t.status = "RUNNING"
        sched.on_trial_add(None, t)
    tune = FakeController(list(trials.values()))
    # An epoch without a probe is never judged, whatever its val_pgd_acc.
    assert sched.on_trial_result(tune, trials["t5"], probe_result(1, None, val=0.0)) == "CONTINUE"
    order = ["t4", "t0", "t7", "t1", "t2", "t6", "t5"]
    for name in order:
        assert sched.on_trial_result(tune, trials[name], probe_result(0, CURVES[name][0])) == "PAUSE", name
        trials[name].status = "PAUSED"
    assert sched.choose_trial_to_run(tune) is None  # nobody resumes before the rung is decided
    # The last of the cell arrives: the rung is decided; it is itself among the losers.
    assert sched.on_trial_result(tune, trials["t3"], probe_result(0, CURVES["t3"][0])) == TrialScheduler.STOP
    assert sorted(tune.stopped) == ["t0", "t2", "t5", "t6", "t7"]
    resumed = {sched.choose_trial_to_run(tune).trial_id for _ in range(2)}
    assert resumed == {"t1", "t4"}
    # A cell of its own: its one trial is its bracket, never held back.
    assert sched.on_trial_result(tune, trials["solo"], probe_result(0, 0.01)) == "CONTINUE"
    # Probe 2 (after pruning epoch 3): t1 goes on, t4 (reported first, paused) stops.
    for name in ("t1", "t4"):
        trials[name].status = "RUNNING"
    assert sched.on_trial_result(tune, trials["t4"], probe_result(2, CURVES["t4"][1])) == "PAUSE"
    trials["t4"].status = "PAUSED"
    assert sched.on_trial_result(tune, trials["t1"], probe_result(2, CURVES["t1"][1])) == "CONTINUE"
    assert tune.stopped[-1] == "t4" and sched.stopped == {"t0", "t2", "t3", "t5", "t6", "t7", "t4"}
    # The final report is never judged.
    assert sched.on_trial_result(tune, trials["t1"], {"final": True, "val_pgd_acc": 0.7}) == "CONTINUE"


def test_halving_decides_without_a_trial_that_ended_early() -> None:
    """A trial that errors before the rung is not waited for."""
    sched = CellScheduler("val_pgd_acc", "max", 7, 1, 2.0, True, probe_after=(1,), halving=True, sizes={0: 3})
    a, b, c = (fake_trial(n, 0) for n in "abc")
    for t in (a, b, c):
        t.status = "RUNNING"
        sched.on_trial_add(None, t)
    tune = FakeController([a, b, c])
    assert sched.on_trial_result(tune, a, probe_result(0, 0.4)) == "PAUSE"
    a.status = "PAUSED"
    assert sched.on_trial_result(tune, b, probe_result(0, 0.6)) == "PAUSE"
    b.status = "PAUSED"
    sched.on_trial_error(tune, c)  # ceil(2 / 2) = 1 of the 2 that reported goes on: b
    assert tune.stopped == ["a"] and sched.choose_trial_to_run(tune) is b


def test_asha_on_probe_rungs_ranks_by_the_probe_only() -> None:
    sched = CellScheduler("val_pgd_acc", "max", 7, 1, 2.0, True, probe_after=(2,))
    good, bad = fake_trial("good", 0), fake_trial("bad", 0)
    for t in (good, bad):
        sched.on_trial_add(None, t)
    # Pruning epoch 1 has no probe: a terrible val_pgd_acc is not judged.
    assert sched.on_trial_result(None, bad, probe_result(0, None, val=0.0)) == "CONTINUE"
    assert sched.on_trial_result(None, good, probe_result(1, 0.7, val=0.1)) == "CONTINUE"
    # Higher val_pgd_acc, lower probe: stopped on the probe.
    assert sched.on_trial_result(None, bad, probe_result(1, 0.3, val=0.9)) == TrialScheduler.STOP
    # Finetuning epochs are not rungs either.
    later = {
        "phase": "finetune",
        "epoch": 0,
        "search_epoch": 5,
        "val_pgd_acc": 0.0,
        "probe_val_pgd_acc": None,
    }
    assert sched.on_trial_result(None, good, later) == "CONTINUE"
