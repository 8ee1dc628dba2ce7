"""Extending a finished search (``--extend``): what may change, what is refused, and a tiny
real extension on Ray (slow) that runs only the new trials and keeps each row once."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import yaml

ray = pytest.importorskip("ray")
pd = pytest.importorskip("pandas")

from s2ap.errors import ConfigError  # noqa: E402
from s2ap.tune import extend  # noqa: E402
from s2ap.tune.__main__ import main  # noqa: E402
from s2ap.tune.results import TrialRecord  # noqa: E402
from s2ap.tune.spec import load_spec, spec_hash  # noqa: E402
from tests.helpers.configs import search_base  # noqa: E402
from tests.tune.test_ray import assert_each_epoch_once, spec_dict  # noqa: E402

SEARCH = {"s2ap.gamma": {"type": "loguniform", "low": 0.001, "high": 0.01}}


def finished(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    """A stored ``spec.json`` of a finished search (as the search folder holds it)."""
    spec = load_spec(spec_dict(tmp_path, grid={"prune.sparsity": [0.5, 0.7]}, search=SEARCH, **changes), None)
    return yaml.safe_load(extend.spec_note(spec))


def grown(tmp_path: Path, more: int = 0, **changes: Any) -> Any:
    changes = {"grid": {"prune.sparsity": [0.5, 0.7]}, "search": SEARCH, **changes}
    spec = load_spec(spec_dict(tmp_path, **changes), None)
    return extend.extended_spec(finished(tmp_path, num_samples=2), spec, more, "runs/t")


def test_extend_adds_samples_and_grid_values(tmp_path: Path) -> None:
    assert grown(tmp_path, 3, num_samples=2).num_samples == 5
    assert grown(tmp_path, 0, num_samples=4).num_samples == 4
    assert grown(tmp_path, 1, num_samples=4).num_samples == 5  # N more than the spec asks
    bigger = grown(tmp_path, 0, num_samples=2, grid={"prune.sparsity": [0.9, 0.5, 0.7]})
    assert [c.key for c in bigger.cells()] == [f"prune.sparsity={v}" for v in (0.9, 0.5, 0.7)]
    # Where the results go, the resources and the concurrency may change.
    assert grown(tmp_path, 1, num_samples=2, max_concurrent=2).num_samples == 3


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"base": search_base({"prune.epochs": 3})}, "base.prune.epochs"),
        ({"scheduler": {"type": "fifo", "metric": "val_clean_acc"}}, "scheduler.metric"),
        ({"scheduler": {"type": "asha"}}, "scheduler.type"),
        (
            {"search": {"s2ap.gamma": {"type": "loguniform", "low": 0.001, "high": 0.1}}},
            "search.s2ap.gamma.high",
        ),
        ({"seed": 1}, "seed"),
        ({"grid": {"prune.sparsity": [0.5, 0.9]}}, "grid.prune.sparsity"),
        ({"grid": {"prune.sparsity": [0.5, 0.7], "seed": [0, 1]}}, "grid"),
        ({"num_samples": 1}, "num_samples"),
    ],
)
def test_extend_refuses_a_changed_fixed_part(tmp_path: Path, changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        grown(tmp_path, **{"num_samples": 2, **changes})
    assert caught.value.field == field


def test_plan_counts_only_new_trials_and_refuses_nothing_new(tmp_path: Path) -> None:
    old = load_spec(
        spec_dict(tmp_path, grid={"prune.sparsity": [0.5, 0.7]}, search=SEARCH, num_samples=2), None
    )
    state = {"cells": old.cells(), "issued": [2, 2], "studies": {}, "study_name": "t"}
    new = load_spec(spec_dict(tmp_path, grid={"prune.sparsity": [0.9, 0.5, 0.7]}, search=SEARCH), None)
    bigger = extend.extended_spec(yaml.safe_load(extend.spec_note(old)), new, 1, "runs/t")
    assert extend.plan(bigger, state, "runs/t").new_trials == {0: 3, 1: 1, 2: 1}
    with pytest.raises(ConfigError, match="nothing to add") as caught:
        extend.plan(old, state, "runs/t")
    assert caught.value.field == "--extend"
    with pytest.raises(ConfigError, match="has not finished"):
        extend.plan(bigger, {**state, "issued": [2, 1]}, "runs/t")
    # Earlier trials move to their cell's new id (matched by grid values).
    records = [TrialRecord("a", {"cell": 0, "prune.sparsity": 0.5}, "TERMINATED")]
    records.append(TrialRecord("b", {"cell": 1, "prune.sparsity": 0.7}, "TERMINATED"))
    moved = extend.renumbered(records, old.cells(), bigger.cells())
    assert [r.config["cell"] for r in moved] == [1, 2]


def test_cli_refuses_a_changed_base_with_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "search"
    folder.mkdir()
    (folder / "tuner.pkl").write_bytes(b"")
    stored = load_spec(spec_dict(tmp_path, search=SEARCH), None)
    (folder / "spec.json").write_text(extend.spec_note(stored))
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    spec_file = tmp_path / "t.yaml"
    spec_file.write_text(
        yaml.safe_dump(spec_dict(tmp_path, base=search_base({"finetune.lr": 0.02}), search=SEARCH))
    )
    assert main([str(spec_file), "--extend", "1", "--out", str(folder), "--no-preflight", "-q"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: base.finetune.lr: differs from the finished search in ")
        and err.count("\n") == 1
    )
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


@pytest.mark.slow
@pytest.mark.ray
def test_extend_runs_only_the_new_trials_and_keeps_every_row_once(tmp_path: Path) -> None:
    from s2ap.tune.cluster import start_local_ray
    from s2ap.tune.search import run_search

    start_local_ray(num_cpus=2)
    try:
        first = load_spec(spec_dict(tmp_path, grid={"prune.sparsity": [0.5]}, search=SEARCH))
        outcome = run_search(first, quiet=True)
        before = pd.read_parquet(outcome.trials_path)
        assert len(before) == 1 and set(before["status"]) == {"ok"}
        old_id = before["trial_id"][0]

        # A grid value in front (the old cell becomes cell 1) and one more sample per cell.
        more = load_spec(spec_dict(tmp_path, grid={"prune.sparsity": [0.6, 0.5]}, search=SEARCH))
        outcome = run_search(more, extend_by=1, quiet=True)
    finally:
        ray.shutdown()
    trials = pd.read_parquet(outcome.trials_path)
    assert trials["trial_id"].is_unique and len(trials) == 4 and set(trials["status"]) == {"ok"}
    by_cell = trials.groupby("grid_cell")["prune_sparsity"].agg(["count", "first"])
    assert by_cell.to_dict("index") == {0: {"count": 2, "first": 0.6}, 1: {"count": 2, "first": 0.5}}
    # The finished trial did not run again: its row is the one the first search wrote.
    old = trials.set_index("trial_id").loc[old_id]
    kept = before.set_index("trial_id").loc[old_id]
    assert old["grid_cell"] == 1 and old["started_at"] == kept["started_at"] and old["attempts"] == 1
    assert old["final_val_pgd_acc"] == kept["final_val_pgd_acc"]
    assert (trials.set_index("trial_id").drop(old_id)["started_at"] > kept["ended_at"]).all()
    epochs = pd.read_parquet(outcome.epochs_path)
    assert_each_epoch_once(epochs)
    assert set(epochs["trial_id"]) == set(trials["trial_id"])
    points = pd.read_parquet(Path(outcome.search_dir) / "predictions.parquet")
    assert (points.groupby("trial_id").size() == points.groupby("trial_id").size().iloc[0]).all()
    assert set(points["trial_id"]) == set(trials["trial_id"])
    # One selected trial per cell, over old and new rows.
    assert trials.groupby("grid_cell")["selected"].sum().to_dict() == {0: 1, 1: 1}

    # The kept cell's Optuna study went on: it now holds the old trial and the new one.
    states = sorted(n for n in os.listdir(outcome.search_dir) if n.startswith("searcher-state-"))
    state = pickle.loads((Path(outcome.search_dir) / states[-1]).read_bytes())
    studies = {cid: s._ot_study for cid, s in state["studies"].items()}
    assert len(studies[1].trials) == 2 and len(studies[0].trials) == 2
    gammas = sorted(studies[1].trials[i].params["s2ap.gamma"] for i in range(2))
    assert gammas == sorted(trials[trials["grid_cell"] == 1]["s2ap_gamma"])
    # The spec the folder now runs is the extended one.
    note = yaml.safe_load((Path(outcome.search_dir) / "spec.json").read_text())
    assert note["spec"]["num_samples"] == 2 and note["given"] == spec_hash(more)


@pytest.mark.slow
@pytest.mark.ray
def test_extension_judges_new_trials_against_the_earlier_rung_values(tmp_path: Path) -> None:
    """The new trial of a cell stops at ASHA's rung because of the earlier trial's value there,
    read from ``epochs.parquet``: alone in its own Tune run it would have gone on."""
    from ray import cloudpickle

    from s2ap.tune.cluster import start_local_ray
    from s2ap.tune.search import run_search

    asha = {"type": "asha", "reduction_factor": 2}  # one rung, at search epoch 2 of 3
    spec = load_spec(spec_dict(tmp_path, grid={"prune.sparsity": [0.5]}, search=SEARCH, scheduler=asha))
    start_local_ray(num_cpus=2)
    try:
        outcome = run_search(spec, quiet=True)
        old_id = pd.read_parquet(outcome.trials_path)["trial_id"][0]
        # The earlier trial's value at the rung: above any accuracy, so only a new trial judged
        # against it can stop there.
        epochs = pd.read_parquet(outcome.epochs_path)
        epochs.loc[epochs["search_epoch"] == 2, "val_pgd_acc"] = 1.5
        epochs.to_parquet(outcome.epochs_path)
        outcome = run_search(spec, extend_by=1, quiet=True)
    finally:
        ray.shutdown()
    trials = pd.read_parquet(outcome.trials_path).set_index("trial_id")
    assert len(trials) == 2 and trials.loc[old_id, "status"] == "ok"
    new = trials.drop(old_id).iloc[0]
    assert new["status"] == "stopped" and new["search_epochs_run"] == 2
    # The seeded scheduler is what the folder's Tune run saved: --resume restores it as it is.
    state = cloudpickle.loads((Path(outcome.search_dir) / "tuner.pkl").read_bytes())
    assert state["_tune_config"].scheduler.seeded == {old_id}


def test_resume_after_an_extension_continues_the_extended_spec(tmp_path: Path) -> None:
    given = load_spec(spec_dict(tmp_path, search=SEARCH, num_samples=2), None)
    bigger = extend.extended_spec(yaml.safe_load(extend.spec_note(given)), given, 3, "runs/t")
    (tmp_path / "spec.json").write_text(extend.spec_note(bigger, given))
    # The spec file the extension was started from, or the extended spec itself: both resume it.
    assert extend.resumed_spec(given, str(tmp_path)).num_samples == 5
    assert extend.resumed_spec(bigger, str(tmp_path)) is bigger
    assert extend.resumed_spec(given, str(tmp_path / "elsewhere")) is given
