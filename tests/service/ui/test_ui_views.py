"""The job page's view functions on files written as a search writes them (no server, no
browser): running trials read from their own epoch records, their rows and curves, and the
Orig.-vs-S2AP Δ paired by seed and test point as the report pairs it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from s2ap import results, storage
from s2ap.stats import accuracy_interval
from s2ap.tune.results import predictions_schema, to_table, trials_schema
from service.ui import live as ui_live
from service.ui import plots as ui_plots
from service.ui.compare import compare_table
from service.ui.views import Accuracy, running_rows
from tests.helpers.rows import result_row

VAL_N = 144


def epoch(phase: str, e: int, val_pgd: float | None) -> dict[str, Any]:
    return {
        "config_hash": "h",
        "seed": 0,
        "code_version": "x",
        "phase": phase,
        "epoch": e,
        "val_clean_acc": None if val_pgd is None else val_pgd + 0.2,
        "val_clean_acc_n": VAL_N,
        "val_pgd_acc": val_pgd,
        "val_pgd_acc_n": VAL_N,
        "hamming": 0.01 * e if phase == "prune" else None,
    }


def running_trial(
    search: Path, tid: str, params: dict[str, Any] | None, epochs: list[dict[str, Any]]
) -> None:
    """What a running trial has written: its store (a worker started it), Tune's params, a
    checkpoint with the epochs so far and its meta.json."""
    store = search / "trials" / tid
    store.mkdir(parents=True)
    (store / "times.json").write_text(json.dumps({"started": 1.0}))
    folder = search / f"trial_{tid}" / "checkpoint_000001"
    folder.mkdir(parents=True)
    if params is not None:
        (search / f"trial_{tid}" / "params.json").write_text(json.dumps(params))
    if epochs:
        pd.DataFrame(epochs).to_parquet(folder / "epochs.parquet")
        (folder / "meta.json").write_text(json.dumps({"time": 2.0, "final": False, "metrics": {}}))


def test_epoch_rows_count_the_search_clock_as_the_search_does() -> None:
    raw = pd.DataFrame(
        [epoch("pretrain", 0, 0.1), epoch("prune", 0, 0.2), epoch("prune", 1, 0.3), epoch("finetune", 0, 0.4)]
    )
    rows = ui_live.epoch_rows(raw, "t1", {"cell": 1})
    assert rows["search_epoch"].tolist() == [0, 1, 2, 3]
    assert rows["global_epoch"].tolist() == [1, 2, 3, 4]
    assert set(rows["trial_id"]) == {"t1"} and set(rows["grid_cell"]) == {1}
    assert ui_live.epoch_rows(pd.DataFrame(), "t1", {}).empty


def test_running_trials_are_read_from_their_own_files_and_finished_ones_left_out(tmp_path: Path) -> None:
    search = tmp_path / "search"
    running_trial(
        search,
        "a1",
        {"cell": 1, "s2ap.enabled": True, "s2ap.gamma": 0.004},
        [epoch("pretrain", 0, 0.3), epoch("prune", 0, 0.5), epoch("prune", 1, None)],
    )
    running_trial(search, "b2", None, [])  # started, pretraining, no checkpoint or params yet
    running_trial(search, "c3", {"cell": 0, "s2ap.enabled": False}, [epoch("pretrain", 0, 0.4)])
    (search / "trials" / "c3" / "times.json").write_text(json.dumps({"started": 1.0, "ended": 3.0}))
    running_trial(search, "d4", {"cell": 0}, [epoch("pretrain", 0, 0.4)])  # in trials.parquet
    live = ui_live.live_trials(str(search), ["d4"])
    assert [t.trial_id for t in live.trials] == ["a1", "b2", "c3"]
    assert live.running == 2  # c3 ended: its row follows when the tables are rewritten
    assert ui_live.running_count(str(search), finished=1) == 3
    base = {"s2ap": {"enabled": True, "gamma": 0.005, "warmup_epochs": 2}}
    rows = {r.trial_id: r for r in running_rows(live, base, {1: "s2ap.enabled=True"})}
    a1 = rows["a1"]
    assert (a1.status, a1.epochs, a1.gamma, a1.warmup, a1.cell) == (
        "running",
        "2",
        "0.004",
        "2",  # not sampled: the spec's base
        "[1] s2ap.enabled=True",
    )
    # Its latest epoch that measured validation PGD (prune 0), with that epoch's n and interval.
    expected = accuracy_interval(0.5, VAL_N)
    assert a1.val_pgd == Accuracy(0.5, VAL_N, expected.lo, expected.hi)
    assert a1.val_pgd.bounds() == f"[{100 * expected.lo:.1f}, {100 * expected.hi:.1f}]"
    assert not a1.robust.known and not a1.clean.known  # test figures come when it ends
    assert (rows["b2"].gamma, rows["b2"].epochs, rows["b2"].val_pgd.known) == ("–", "0", False)
    assert rows["c3"].gamma == "S2AP off"
    # Its curve grows with it: the learning curves draw the running trial's epochs.
    running = live.epochs()
    assert running is not None and set(running["trial_id"]) == {"a1", "c3"}
    figure = ui_plots.learning_curves(None, None, running)
    assert figure.src and figure.phone_src and figure.src != figure.phone_src


def test_a_new_epoch_changes_the_live_key_so_figures_are_redrawn(tmp_path: Path) -> None:
    search = tmp_path / "search"
    running_trial(search, "a1", {"cell": 1}, [epoch("prune", 0, 0.5)])
    before = ui_live.live_trials(str(search), []).key
    folder = search / "trial_a1" / "checkpoint_000002"
    folder.mkdir()
    pd.DataFrame([epoch("prune", 0, 0.5), epoch("prune", 1, 0.6)]).to_parquet(folder / "epochs.parquet")
    (folder / "meta.json").write_text(json.dumps({"time": 5.0, "final": False, "metrics": {}}))
    after = ui_live.live_trials(str(search), [])
    assert after.key != before and after.trials[0].search_epochs == 2


# --------------------------------------------------------------------------- comparison

TEST_N = 40


def trial(tid: str, on: bool, seed: int, correct: list[bool], n: int = TEST_N) -> dict[str, Any]:
    """A finished trial of search ``s`` (:func:`result_row`'s plain run) whose robust accuracy is
    the share of ``correct``, each accuracy with its n and interval."""
    robust = sum(correct) / len(correct)
    row = result_row(
        trial_id=tid,
        search="s",
        grid_cell=int(on),
        cell_key=f"s2ap.enabled={on}",
        stopped_early=False,  # these four: the trials table's required columns
        epochs_run=3,
        search_epochs_run=2,
        attempts=1,
        config_hash=f"h-{tid}",
        seed=seed,
        s2ap=on,
        gamma=0.005 if on else None,
        clean_acc_n=n,
        pgd_acc=robust,
        pgd_acc_n=n,
        robust_acc=robust,
        robust_acc_n=n,
        pgd_steps=20,
        final_val_pgd_acc=0.5,
        final_val_pgd_acc_n=VAL_N,
    )
    return results.with_intervals(row)


def points(tid: str, on: bool, seed: int, correct: list[bool]) -> list[dict[str, Any]]:
    head = {"trial_id": tid, "search": "s", "grid_cell": int(on), "config_hash": f"h-{tid}", "seed": seed}
    return [
        {**head, "code_version": "x", "index": i, "label": 0, "clean": True, "pgd": c, "aa": None}
        for i, c in enumerate(correct)
    ]


def write(folder: Path, rows: list[dict[str, Any]], preds: list[dict[str, Any]] | None) -> str:
    storage.write_table(to_table(rows, trials_schema()), str(folder / "trials.parquet"))
    if preds is not None:
        storage.write_table(to_table(preds, predictions_schema()), str(folder / "predictions.parquet"))
    return str(folder)


def outcomes(seed: int, better: bool) -> list[bool]:
    base = [(i * 7 + seed) % 3 != 0 for i in range(TEST_N)]
    return [c or (better and i % 5 == 0) for i, c in enumerate(base)]


def test_delta_is_paired_by_seed_and_test_point_from_the_trials_predictions(tmp_path: Path) -> None:
    sides = [(f"o{s}", False, s, outcomes(s, False)) for s in (0, 1)]
    sides += [(f"s{s}", True, s, outcomes(s, True)) for s in (0, 1)]
    rows = [trial(*side) for side in sides]
    paired = compare_table(write(tmp_path, rows, [p for side in sides for p in points(*side)]))
    assert len(paired.rows) == 1, paired.absent
    assert f"2 seeds × {TEST_N} points" in paired.rows[0].delta
    assert "across seeds only" not in paired.rows[0].delta
    # Without the per-point outcomes: the across-seeds fallback, and it says so.
    other = tmp_path / "no-points"
    other.mkdir()
    assert "across seeds only" in compare_table(write(other, rows, None)).rows[0].delta


@pytest.mark.parametrize(
    ("change", "why"), [({"robust_attack": "autoattack"}, "attack"), ({"robust_acc_n": 30}, "test points")]
)
def test_sides_measured_differently_are_not_comparable(
    tmp_path: Path, change: dict[str, Any], why: str
) -> None:
    sides = [("o0", False, 0, outcomes(0, False)), ("s0", True, 0, outcomes(0, True))]
    rows = [trial(*sides[0]), {**trial(*sides[1]), **change}]
    table = compare_table(write(tmp_path, rows, [p for side in sides for p in points(*side)]))
    assert table.rows[0].delta.startswith(f"not comparable: {why}")


def test_no_table_before_any_trial_has_finished(tmp_path: Path) -> None:
    assert compare_table(str(tmp_path)).absent == "no trial has finished yet"


# --------------------------------------------------------------------------- controls


def control_arms(folder: Path) -> str:
    """Orig., Orig. + AWP finetuning and S2AP + AWP over seeds 0 and 1, with per-point outcomes."""
    rows, preds = [], []
    for name, on, awp, better in (
        ("o", False, False, False),
        ("oa", False, True, False),
        ("sa", True, True, True),
    ):
        for s in (0, 1):
            side = (f"{name}{s}", on, s, outcomes(s, better))
            rows.append({**trial(*side), "finetune_awp": awp, "config_hash": f"h-{name}"})
            preds += [{**p, "config_hash": f"h-{name}"} for p in points(*side)]
    return write(folder, rows, preds)


def test_a_job_with_control_arms_shows_each_against_orig_paired_by_seed_and_point(tmp_path: Path) -> None:
    table = compare_table(control_arms(tmp_path))
    assert len(table.controls) == 1, table.absent
    setting = table.controls[0]
    assert setting.title == "cnn / digits / hydra at 90% sparsity"
    assert [r[0] for r in setting.arms] == ["Orig.", "Orig. + AWP finetuning", "S2AP + AWP (paper)"]
    orig, orig_awp, paper = setting.arms
    assert orig[2] == "–" and f"2 seeds × {TEST_N} points" in paper[2]
    assert orig_awp[2].startswith("+0.00")  # the same outcomes on every point: no difference
    assert setting.effects == []  # the 2 x 2 factorial is incomplete: no main effect is estimated
    assert list(table.controls_header)[:3] == ["arm", "robust acc. (%)", "Δ robust vs Orig. [95%]"]


def test_a_job_without_control_arms_has_no_controls_section(tmp_path: Path) -> None:
    sides = [(f"o{s}", False, s, outcomes(s, False)) for s in (0, 1)]
    sides += [(f"s{s}", True, s, outcomes(s, True)) for s in (0, 1)]
    rows = [trial(*side) for side in sides]
    table = compare_table(write(tmp_path, rows, [p for side in sides for p in points(*side)]))
    assert table.rows and table.controls == []
