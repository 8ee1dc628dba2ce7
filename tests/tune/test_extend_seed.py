"""An extension's scheduler judges its new trials against the earlier trials of their cell:
halving brackets ranked among earlier values, ASHA seeded by replaying the earlier trials'
epochs (imports Ray Tune, starts no Ray), and those epochs read back from ``epochs.parquet``."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("ray.tune")

from ray.tune.schedulers import TrialScheduler  # noqa: E402

from s2ap import storage  # noqa: E402
from s2ap.tune import extend  # noqa: E402
from s2ap.tune.halving import Bracket  # noqa: E402
from s2ap.tune.results import TrialRecord, epochs_schema, to_table  # noqa: E402
from s2ap.tune.scheduler import CellScheduler  # noqa: E402
from tests.helpers.rows import result_row  # noqa: E402

STOP, CONTINUE, PAUSE = TrialScheduler.STOP, TrialScheduler.CONTINUE, TrialScheduler.PAUSE


def fake_trial(trial_id: str, cell: int) -> Any:
    return SimpleNamespace(trial_id=trial_id, config={"cell": cell}, status="RUNNING")


def epoch(search_epoch: int, value: float) -> dict[str, Any]:
    """An epoch's report on epoch rungs: the clock and the metric."""
    return {
        "phase": "finetune",
        "epoch": search_epoch - 1,
        "search_epoch": search_epoch,
        "val_pgd_acc": value,
    }


def probe(rung_epoch: int, value: float | None) -> dict[str, Any]:
    """A pruning epoch's report (0-based epoch) with its probe value (None: no probe)."""
    return {
        "phase": "prune",
        "epoch": rung_epoch,
        "search_epoch": rung_epoch + 1,
        "val_pgd_acc": 0.5,
        "probe_val_pgd_acc": value,
    }


# --------------------------------------------------------------------------- halving


def earlier_bracket(size: int) -> Bracket:
    """A bracket of ``size`` new trials, rf 2, two rungs, after 4 earlier trials: all four at
    rung 1, the two that went on at rung 2."""
    b = Bracket(size, 2, 2.0, "max")
    for name, value in {"e1": 0.9, "e2": 0.8, "e3": 0.3, "e4": 0.2}.items():
        b.add_earlier(name, 1, value)
    b.add_earlier("e1", 2, 0.92)
    b.add_earlier("e2", 2, 0.85)
    return b


def test_halving_a_new_trial_below_the_earlier_bar_stops_even_alone() -> None:
    """Alone in its bracket it would go on; ranked 4th of 5 with the earlier values (keep 3), it stops."""
    alone = Bracket(1, 2, 2.0, "max")
    alone.add("n1")
    assert alone.on_rung("n1", 1, 0.25).action == CONTINUE
    b = earlier_bracket(1)
    b.add("n1")
    assert b.on_rung("n1", 1, 0.25).action == STOP
    above = earlier_bracket(1)
    above.add("n1")
    assert above.on_rung("n1", 1, 0.4).action == CONTINUE  # 3rd of 5: kept


def test_halving_keeps_ceil_k_over_rf_of_old_and_new_and_stops_only_new_ones() -> None:
    b = earlier_bracket(2)
    b.add("n1")
    b.add("n2")
    # Rung 1: 6 values, keep 3 (e1 0.9, n1 0.85, e2 0.8); n2 waits for its bracket, then stops.
    assert b.on_rung("n2", 1, 0.5).action == PAUSE
    decision = b.on_rung("n1", 1, 0.85)
    assert (decision.action, decision.stop, decision.resume) == (CONTINUE, ["n2"], [])
    # Rung 2: e1 0.92, e2 0.85 and n1: keep ceil(3 / 2) = 2, n1 must beat e2.
    assert b.on_rung("n1", 2, 0.84).action == STOP
    again = earlier_bracket(1)
    again.add("n1")
    assert again.on_rung("n1", 1, 0.85).action == CONTINUE
    assert again.on_rung("n1", 2, 0.86).action == CONTINUE
    # A tie with an earlier trial goes to the earlier one.
    tie = earlier_bracket(1)
    tie.add("n1")
    assert tie.on_rung("n1", 1, 0.3).action == STOP  # e1, e2, e3 (0.3 first) kept
    # min mode: lower is better.
    low = Bracket(1, 1, 2.0, "min")
    low.add_earlier("e", 1, 0.2)
    low.add("n")
    assert low.on_rung("n", 1, 0.3).action == STOP


# --------------------------------------------------------------------------- CellScheduler


def asha(per_cell: bool = True) -> CellScheduler:
    # Rungs at search epochs 1, 2 and 4 (grace 1, rf 2, max_t 5).
    return CellScheduler("val_pgd_acc", "max", max_t=5, grace_period=1, reduction_factor=2, per_cell=per_cell)


def seeded(per_cell: bool = True) -> CellScheduler:
    """Cell 0's earlier trials reached search epoch 2 with 0.8 and 0.6 (cutoff 0.7 there)."""
    sched = asha(per_cell)
    sched.seed("e1", {"cell": 0}, [epoch(1, 0.7), epoch(2, 0.8)])
    sched.seed("e2", {"cell": 0}, [epoch(1, 0.5), epoch(2, 0.6)])
    return sched


def test_asha_seeded_stops_a_new_trial_below_the_earlier_cutoff_of_its_cell_only() -> None:
    sched = seeded()
    low, high, other = fake_trial("low", 0), fake_trial("high", 0), fake_trial("other", 1)
    for t in (low, high, other):
        sched.on_trial_add(None, t)
    assert sched.on_trial_result(None, low, epoch(1, 0.9)) == CONTINUE
    assert sched.on_trial_result(None, low, epoch(2, 0.65)) == STOP  # below 0.7
    assert sched.on_trial_result(None, high, epoch(2, 0.75)) == CONTINUE
    # Cells never mix: as weak, but in a cell with no earlier trials.
    assert sched.on_trial_result(None, other, epoch(2, 0.1)) == CONTINUE
    # Replayed trials are not Tune's: not known, not counted as stopped by this search.
    assert sched.known == {0: {"low", "high"}, 1: {"other"}} and sched.stopped == {"low"}
    # Unseeded, the same first new trial is alone at the rung and goes on.
    fresh = asha()
    fresh.on_trial_add(None, low)
    assert fresh.on_trial_result(None, low, epoch(2, 0.65)) == CONTINUE
    # One ASHA for all cells: cell 1 meets cell 0's earlier values.
    shared = seeded(per_cell=False)
    shared.on_trial_add(None, other)
    assert shared.on_trial_result(None, other, epoch(2, 0.1)) == STOP


def test_seeding_is_what_asha_would_have_recorded_had_the_earlier_trials_run_live() -> None:
    """Pins Ray's ASHA behaviour the replay relies on: a value reported is recorded at its rung
    even when ASHA answers STOP, and a removed trial's values stay. The new trials then get the
    same answers from a seeded scheduler as from one that saw the earlier trials run."""
    curves = {
        "e1": [0.5, 0.6, 0.7, 0.8, 0.85],
        "e2": [0.2, 0.3, 0.4, 0.45, 0.5],  # stopped by ASHA along the way
        "e3": [0.6, 0.7, 0.75, 0.9, 0.9],
        "e4": [0.55, 0.65, 0.7, 0.72, 0.8],  # stopped at the rung of epoch 4
    }
    live, replayed = asha(), asha()
    for name, curve in curves.items():
        t = fake_trial(name, 0)
        live.on_trial_add(None, t)
        ran = []
        for i, value in enumerate(curve, start=1):
            ran.append(epoch(i, value))
            if live.on_trial_result(None, t, ran[-1]) == STOP:
                break
        if len(ran) < len(curve):
            live.on_trial_remove(None, t)
        else:
            live.on_trial_complete(None, t, {**ran[-1], "search_epoch": 6, "final": True})
        replayed.seed(name, t.config, ran)
    assert live.stopped == {"e2", "e4"}
    new = {"n1": [0.55, 0.62, 0.8, 0.88], "n2": [0.45, 0.66, 0.74, 0.7], "n3": [0.7, 0.5, 0.9, 0.9]}
    answers: dict[str, list[list[str]]] = {"live": [], "replayed": [], "alone": []}
    alone = asha()
    for sched, key in ((live, "live"), (replayed, "replayed"), (alone, "alone")):
        for name, curve in new.items():
            t = fake_trial(name, 0)
            sched.on_trial_add(None, t)
            got = []
            for i, value in enumerate(curve, start=1):
                got.append(sched.on_trial_result(None, t, epoch(i, value)))
                if got[-1] == STOP:
                    break
            answers[key].append(got)
    assert answers["replayed"] == answers["live"]
    assert STOP in sum(answers["replayed"], []) and answers["alone"] != answers["replayed"]


def test_seeding_survives_a_save_and_is_not_repeated() -> None:
    """Tune pickles the scheduler; seeding the restored one again (a trial it already holds)
    changes nothing: the cutoff at the rung stays 0.7."""
    again = pickle.loads(pickle.dumps(seeded()))
    assert again.seeded == {"e1", "e2"}
    again.seed("e1", {"cell": 0}, [epoch(1, 0.1), epoch(2, 0.1)])
    for name, value, answer in (("a", 0.69, STOP), ("b", 0.71, CONTINUE)):
        t = fake_trial(name, 0)
        again.on_trial_add(None, t)
        assert again.on_trial_result(None, t, epoch(2, value)) == answer


def test_seeding_on_probe_rungs_uses_the_probe_values() -> None:
    """ASHA on probe rungs: the earlier trial's probe (not its val_pgd_acc) sets the bar."""
    sched = CellScheduler("val_pgd_acc", "max", 7, 1, 2.0, True, probe_after=(2,))
    sched.seed("e", {"cell": 0}, [probe(0, None), probe(1, 0.7)])
    t = fake_trial("n", 0)
    sched.on_trial_add(None, t)
    assert sched.on_trial_result(None, t, probe(0, None)) == CONTINUE
    assert sched.on_trial_result(None, t, probe(1, 0.6)) == STOP
    # Halving on the probe: the earlier probe joins the new bracket's ranking.
    halving = CellScheduler(
        "val_pgd_acc", "max", 7, 1, 2.0, True, probe_after=(2,), halving=True, sizes={0: 1, 1: 1}
    )
    halving.seed("e", {"cell": 0}, [probe(0, None), probe(1, 0.7)])
    n, m = fake_trial("n", 0), fake_trial("m", 1)
    for trial in (n, m):
        halving.on_trial_add(None, trial)
    assert halving.on_trial_result(None, n, probe(1, 0.6)) == STOP
    assert halving.on_trial_result(None, m, probe(1, 0.6)) == CONTINUE  # its cell has no earlier trial


# --------------------------------------------------------------------------- epochs.parquet


def test_earlier_reports_reads_each_earlier_trials_epochs_in_order(tmp_path: Path) -> None:
    rows = [
        result_row(trial_id=tid, search="t", grid_cell=0, global_epoch=g, phase=ph, epoch=e)
        | {"search_epoch": se, "val_pgd_acc": v, "probe_val_pgd_acc": None, "config_hash": "c", "seed": 0}
        for tid, g, ph, e, se, v in [
            ("b", 2, "prune", 0, 1, 0.4),
            ("a", 1, "pretrain", 0, 0, 0.1),
            ("a", 3, "finetune", 0, 2, 0.6),
            ("a", 2, "prune", 0, 1, 0.5),
            ("gone", 1, "prune", 0, 1, 0.9),  # not an earlier trial of this extension
        ]
    ]
    storage.write_table(to_table(rows, epochs_schema()), storage.join(str(tmp_path), "epochs.parquet"))
    # The records' cells are the new ids: the rows' grid_cell is not read.
    records = [TrialRecord("a", {"cell": 1}, "TERMINATED"), TrialRecord("b", {"cell": 1}, "TERMINATED")]
    got = extend.earlier_reports(str(tmp_path), records, "val_pgd_acc")
    assert set(got) == {"a", "b"}
    assert [(r["phase"], r["search_epoch"], r["val_pgd_acc"]) for r in got["a"]] == [
        ("pretrain", 0, 0.1),
        ("prune", 1, 0.5),
        ("finetune", 2, 0.6),
    ]
    assert set(got["b"][0]) >= {"phase", "epoch", "search_epoch", "val_pgd_acc", "probe_val_pgd_acc"}
    # No table: nothing to seed (a warning), not an error.
    assert extend.earlier_reports(str(tmp_path / "none"), records, "val_pgd_acc") == {}
