"""The search's result tables, built from checkpoint folders as Train leaves them. No Ray."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from s2ap import results
from s2ap.tune import results as tables
from s2ap.tune.layout import record_times
from s2ap.tune.spec import load_spec

SPEC = {
    "name": "r",
    "base": {
        "data": {"name": "digits", "image_size": 8},
        "pretrain": {"epochs": 1},
        "prune": {"epochs": 2},
        "finetune": {"epochs": 1},
        "s2ap": {"enabled": True, "warmup_epochs": 0},
        "eval": {"autoattack": False},
    },
    "grid": {"prune.sparsity": [0.5, 0.9, 0.99]},
    "storage": "/unused",
}
PHASES = [("pretrain", 0), ("prune", 0), ("prune", 1), ("finetune", 0)]


def epoch_row(phase: str, epoch: int, val: float) -> dict[str, Any]:
    return {
        "config_hash": "h",
        "seed": 0,
        "code_version": "v",
        "phase": phase,
        "epoch": epoch,
        "train_loss": 1.0,
        "train_acc": 0.5,
        "val_clean_acc": val,
        "val_pgd_acc": val,
        "hamming": None,
        "lambda_max": None,
        "s2ap_active": phase == "prune",
        "lr": 0.1,
        "time_s": 0.1,
    }


def checkpoint(run: Path, name: str, stamp: float, n_epochs: int, final: bool = False) -> Path:
    """A checkpoint folder as the trial's rank 0 writes it: meta, epochs so far, final row."""
    folder = run / name
    folder.mkdir(parents=True)
    rows = [epoch_row(p, e, 0.1 * (i + 1)) for i, (p, e) in enumerate(PHASES[:n_epochs])]
    results.write_rows(rows, results.EPOCH_SCHEMA, folder / "epochs.parquet")
    metrics = {**rows[-1], "search_epoch": n_epochs - 1, "global_epoch": n_epochs, "final": final}
    (folder / "meta.json").write_text(json.dumps({"time": stamp, "final": final, "metrics": metrics}))
    if final:
        results.write_rows(
            [
                {
                    "config_hash": "h",
                    "seed": 0,
                    "code_version": "v",
                    "status": "ok",
                    "clean_acc": 0.8,
                    "pgd_acc": 0.6,
                    "robust_acc": 0.6,
                    "final_val_pgd_acc": 0.4,  # the run's own final validation measurement
                    "final_val_pgd_acc_n": 48,
                    "hamming": [0.1, 0.2],
                    "wall_time_s": 3.0,
                }
            ],
            results.RUN_SCHEMA,
            folder / "final.parquet",
        )
        outcomes = {"index": [0, 1, 2], "label": [3, 1, 4], "clean": [True] * 3, "pgd": [True, False, True]}
        rows = results.prediction_rows({"config_hash": "h", "seed": 0, "code_version": "v"}, outcomes)
        results.write_rows(rows, results.PREDICTION_SCHEMA, folder / results.PREDICTIONS_FILE)
    return folder


def test_tables_hold_each_epoch_once_from_the_run_that_counted(tmp_path: Path) -> None:
    spec = load_spec(SPEC, nodes=None)
    train, trials_dir = tmp_path / "train", tmp_path / "trials"
    # ok, a one-worker trial (Tune's checkpoints, in trial_<id>): restarted from its epoch-1
    # checkpoint after epoch 3 had been reported; the newest checkpoint (by time, not by
    # epoch) is the run that counted.
    checkpoint(tmp_path / "trial_a", "checkpoint_old", 2.0, 3)
    checkpoint(tmp_path / "trial_a", "checkpoint_new", 5.0, 4, final=True)
    # stopped by ASHA after epoch 2 (it was judged on that checkpoint).
    stopped = checkpoint(train / "b", "checkpoint_1", 1.0, 2)
    # errored: NaN during pruning.
    checkpoint(train / "c", "checkpoint_1", 1.0, 2)
    (trials_dir / "c").mkdir(parents=True)
    (trials_dir / "c" / "diverged.json").write_text(json.dumps({"reason": "training diverged: loss is nan"}))
    for trial, starts in (("a", 2), ("b", 1), ("c", 1)):
        workers = trials_dir / trial / "workers"
        workers.mkdir(parents=True, exist_ok=True)
        for i in range(starts):
            (workers / f"{i}.json").write_text(
                json.dumps(
                    {
                        "time": i,
                        "rank": 0,
                        "node_id": f"node{i}",
                        "hostname": "h",
                        "pid": 100 + i,
                        "resumed_from": None,
                    }
                )
            )
    # The driver saw trial a start at t=100 s and end at t=110 s.
    record_times(trials_dir / "a", started=100.0)
    record_times(trials_dir / "a", started=105.0, ended=110.0)  # a restart keeps the first start
    records = [
        tables.TrialRecord(
            "a", {"cell": 0, "prune.sparsity": 0.5}, "TERMINATED", {"final": True, "val_pgd_acc": 0.4}
        ),
        tables.TrialRecord(
            "b",
            {"cell": 1, "prune.sparsity": 0.9},
            "TERMINATED",
            {"checkpoint_path": str(stopped), "search_epoch": 1},
        ),
        tables.TrialRecord("c", {"cell": 2, "prune.sparsity": 0.99}, "ERROR", {}, error="TrialDiverged"),
    ]
    t_path, e_path, rows = tables.write_tables(spec, records, tmp_path)

    duckdb = pytest.importorskip("duckdb")
    pl = pytest.importorskip("polars")
    pd = pytest.importorskip("pandas")
    trials = pd.read_parquet(t_path).set_index("trial_id")
    epochs = pd.read_parquet(e_path)
    assert duckdb.sql(f"select count(*) from '{t_path}'").fetchall()[0][0] == 3
    assert pl.read_parquet(e_path).height == len(epochs) == 4 + 2 + 2

    assert list(trials["status"]) == ["ok", "stopped", "error"]
    # The finished trial's test points, beside trials.parquet under its trial id.
    points = pd.read_parquet(tmp_path / "predictions.parquet")
    assert points.trial_id.tolist() == ["a"] * 3 and points.grid_cell.tolist() == [0] * 3
    assert points.pgd.tolist() == [True, False, True] and points.aa.isna().all()
    assert list(trials["stopped_early"]) == [False, True, False]
    assert trials.loc["c", "error"] == "training diverged: loss is nan"
    assert list(trials["epochs_run"]) == [4, 2, 2]
    assert list(trials["search_epochs_run"]) == [3, 1, 1]
    assert list(trials["attempts"]) == [2, 1, 1]
    # Wall time from the driver's start and end; overhead = wall - the 4 counted epochs' 0.1 s.
    assert trials.loc["a", "trial_time_s"] == pytest.approx(10.0)
    assert trials.loc["a", "outside_training_s"] == pytest.approx(10.0 - 4 * 0.1)
    assert trials.loc["a", "started_at"] == pd.Timestamp(100.0, unit="s", tz="UTC")
    assert trials.loc["a", "ended_at"] == pd.Timestamp(110.0, unit="s", tz="UTC")
    assert pd.isna(trials.loc["b", "outside_training_s"]) and pd.isna(trials.loc["b", "started_at"])
    # No probe ran; the unit a probe would be counted in: its epochs' mean training seconds.
    assert trials["probe_time_s"].isna().all() and trials.loc["a", "mean_epoch_time_s"] == pytest.approx(0.1)
    assert list(trials.loc["a", "node_ids"]) == ["node0", "node1"]
    assert trials.loc["a", "robust_acc"] == 0.6 and list(trials.loc["a", "hamming"]) == [0.1, 0.2]
    assert trials.loc["a", "final_val_pgd_acc"] == pytest.approx(0.4)
    assert trials.loc["a", "final_val_pgd_acc_n"] == 48 and pd.isna(trials.loc["b", "final_val_pgd_acc"])
    # Identity columns come from the config, also for trials without a final row.
    assert trials.loc["b", "method"] == "hydra" and trials.loc["b", "sparsity"] == 0.9
    assert trials.loc["c", "prune_sparsity"] == 0.99 and trials.loc["c", "s2ap"]
    assert trials.loc["a", "cell_key"] == "prune.sparsity=0.5"
    keys = epochs[["trial_id", "phase", "epoch"]].apply(tuple, axis=1)
    assert keys.is_unique
    assert list(epochs[epochs.trial_id == "a"]["search_epoch"]) == [0, 1, 2, 3]
    assert tables.best_per_cell(rows)[0]["trial_id"] == "a" and set(tables.best_per_cell(rows)) == {0}


def test_best_per_cell_is_chosen_on_validation_never_on_test() -> None:
    def row(trial: str, cell: int, val_pgd: float, val_clean: float, test_robust: float) -> dict[str, Any]:
        return {
            "trial_id": trial,
            "grid_cell": cell,
            "status": "ok",
            "final_val_pgd_acc": val_pgd,
            "final_val_clean_acc": val_clean,
            "robust_acc": test_robust,
        }

    trials = [
        # cell 0: "b" is best on test, "a" on validation
        row("a", 0, 0.50, 0.80, 0.30),
        row("b", 0, 0.40, 0.90, 0.70),
        # cell 1: a tie on validation PGD is broken by validation clean, not by test
        row("c", 1, 0.50, 0.85, 0.10),
        row("d", 1, 0.50, 0.80, 0.90),
        dict(row("e", 1, 0.99, 0.99, 0.99), status="stopped"),  # unfinished trials never win
    ]
    best = tables.best_per_cell(trials)
    assert {cell: r["trial_id"] for cell, r in best.items()} == {0: "a", 1: "c"}
    assert "never" in tables.SELECTION_RULE and "validation" in tables.SELECTION_RULE


def test_result_schemas_are_typed_and_unique() -> None:
    trials, epochs = tables.trials_schema(), tables.epochs_schema()
    assert len(set(trials.names)) == len(trials.names)
    assert len(set(epochs.names)) == len(epochs.names)
    assert trials.field("prune_sparsity").type == pa.float64()
    assert trials.field("data_image_size").type == pa.int64()
    assert trials.field("s2ap_enabled").type == pa.bool_()
    assert trials.field("eval_loss_diff_rhos").type == pa.list_(pa.float64())
    assert trials.field("robust_acc").type == pa.float64()
    for name in results.ACCURACIES:  # every accuracy with its points and 95% interval
        assert trials.field(f"{name}_n").type == pa.int64()
        assert trials.field(f"{name}_lo").type == trials.field(f"{name}_hi").type == pa.float64()
    assert trials.field("robust_attack").type == pa.string()
    assert epochs.field("val_pgd_acc_n").type == pa.int64()
    assert trials.field("status").type == pa.string()
    assert epochs.field("val_pgd_acc").type == pa.float64()
    assert epochs.field("global_epoch").type == pa.int64()


def test_a_mapping_valued_setting_stays_one_json_column() -> None:
    # model.kwargs is a value, not a config section: one column holding its JSON.
    from s2ap.experiment import from_dict

    cfg = from_dict(
        {
            "model": {
                "name": "torchvision.models:resnet18",
                "kwargs": {"width_per_group": 32, "zero_init_residual": True},
            }
        }
    )
    flat = tables._flatten(cfg.to_dict())
    assert flat["model.kwargs"] == {"width_per_group": 32, "zero_init_residual": True}
    assert not any(k.startswith("model.kwargs.") for k in flat)
    table = tables.to_table([tables.config_columns(cfg)], tables.trials_schema())
    assert json.loads(table.column("model_kwargs")[0].as_py()) == {
        "width_per_group": 32,
        "zero_init_residual": True,
    }
    assert flat["prune.sparsity"] == cfg.prune.sparsity  # sections are still opened


def test_a_trials_probe_seconds_and_epoch_unit() -> None:
    epochs = [
        {"phase": "pretrain", "time_s": 9.0, "probe_time_s": None},
        {"phase": "prune", "time_s": 2.0, "probe_time_s": 1.5},
        {"phase": "prune", "time_s": 2.0, "probe_time_s": 0.5},
        {"phase": "finetune", "time_s": 1.0},
    ]
    assert tables.probe_costs(epochs) == {"probe_time_s": 2.0, "mean_epoch_time_s": pytest.approx(5 / 3)}
    assert tables.probe_costs(epochs[:1]) == {"probe_time_s": None, "mean_epoch_time_s": None}
