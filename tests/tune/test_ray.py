"""Real Ray Tune searches on tiny digits configs (CPU, a few minutes): one-worker trials run
inside their Tune actor, DDP trials as Ray Train runs.

Each test starts its own Ray (embedded, a two-node ``Cluster``, or one the drivers join)
and shuts it down again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

ray = pytest.importorskip("ray")
pd = pytest.importorskip("pandas")

from s2ap.tune.layout import checkpoint_roots, latest_checkpoint, read_epochs, read_workers  # noqa: E402
from s2ap.tune.spec import load_spec  # noqa: E402
from tests.helpers.configs import search_base  # noqa: E402

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]

# Learns within a few epochs (Adam pretraining), so sparsity visibly matters.
BASE: dict[str, Any] = search_base()


def spec_dict(tmp_path: Path, base: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "t",
        "base": base or BASE,
        "num_samples": 1,
        "scheduler": {"type": "fifo"},
        "resources": {"workers": 1, "cpus_per_worker": 1},
        "max_concurrent": 1,
        "storage": str(tmp_path / "runs"),
    }
    spec.update(changes)
    return spec


@pytest.fixture(autouse=True)
def _ray_down() -> Any:
    yield
    ray.shutdown()


def read_all(path: Path) -> tuple[Any, Any, Any]:
    """The same table through pandas, DuckDB and polars: all three must read it as is."""
    duckdb = pytest.importorskip("duckdb")
    pl = pytest.importorskip("polars")
    return pd.read_parquet(path), duckdb.sql(f"select * from '{path}'").df(), pl.read_parquet(path)


def assert_each_epoch_once(epochs: Any) -> None:
    keys = epochs[["trial_id", "phase", "epoch"]].apply(tuple, axis=1)
    assert keys.is_unique, epochs[["trial_id", "phase", "epoch"]]
    for _, grp in epochs.groupby("trial_id"):
        assert list(grp.sort_values("global_epoch")["global_epoch"]) == list(range(1, len(grp) + 1))


def kill_mid_trial(
    search_dir: Path, rank: int, after_epoch: int, thread: threading.Thread
) -> tuple[str, int]:
    """SIGKILL the process of one rank of the first trial (the pid the trial recorded) once
    its checkpoint of ``after_epoch`` exists and it has not finished: a one-worker trial's
    Tune actor, or a DDP trial's Train worker, as a node losing a process."""
    deadline = time.time() + 300
    while time.time() < deadline and thread.is_alive():
        for store in sorted((search_dir / "trials").glob("*")):
            found = latest_checkpoint(*checkpoint_roots(search_dir, store.name))
            if found is None or found[1].get("final") or found[1]["metrics"]["global_epoch"] < after_epoch:
                continue
            for worker in read_workers(store):
                if worker["rank"] == rank:
                    os.kill(worker["pid"], signal.SIGKILL)
                    return store.name, found[1]["metrics"]["global_epoch"]
        time.sleep(0.05)
    raise AssertionError("no mid-trial checkpoint appeared before the trial ended")


def search_killing(spec: Any, rank: int, after_epoch: int) -> tuple[Any, str, int]:
    """Run the search in a thread, kill a process of its first trial mid-way (see
    :func:`kill_mid_trial`), wait for the search to end; (outcome, killed trial, its epoch)."""
    from s2ap.tune.search import run_search

    box: list[Any] = []
    thread = threading.Thread(target=lambda: box.append(run_search(spec, quiet=True)), daemon=True)
    thread.start()
    killed, at_epoch = kill_mid_trial(
        Path(spec.search_dir), rank=rank, after_epoch=after_epoch, thread=thread
    )
    thread.join(timeout=400)
    assert box, "the search did not finish"
    return box[0], killed, at_epoch


def test_one_worker_trial_resumes_after_its_process_is_killed_and_reused_actors_stop(tmp_path: Path) -> None:
    from s2ap.tune.cluster import start_local_ray

    spec = load_spec(
        spec_dict(
            tmp_path,
            # One after the other, one ASHA: the 99.9% sparse trial is stopped at the rung.
            grid={"prune.sparsity": [0.5, 0.999, 0.6]},
            scheduler={"type": "asha", "per_cell": False, "reduction_factor": 2},
            max_failures=2,
        )
    )
    start_local_ray(num_cpus=2)
    outcome, killed, at_epoch = search_killing(spec, rank=0, after_epoch=3)
    trials = pd.read_parquet(outcome.trials_path).set_index("prune_sparsity")
    epochs = pd.read_parquet(outcome.epochs_path)
    dense, sparse, third = trials.loc[0.5], trials.loc[0.999], trials.loc[0.6]

    # Tune retried the trial whose actor died; it resumed from its checkpoint and finished.
    assert dense["trial_id"] == killed and dense["status"] == "ok" and dense["attempts"] == 2
    first, again = dense["pids"]
    assert first != again
    starts = read_workers(Path(spec.search_dir) / "trials" / killed)
    assert [s["resumed_from"] is not None for s in starts] == [False, True]
    ran = read_epochs(Path(spec.search_dir) / "trials" / killed)
    resumed = [e["global_epoch"] for e in ran if e["pid"] == again]
    # Not from the start: from a checkpoint Tune had registered, at most the one of the epoch
    # seen before the kill (Tune registers a reported checkpoint a moment after it is written,
    # so the kill can land between the two and the last epoch is run again).
    assert resumed and 1 < resumed[0] <= at_epoch + 1
    assert dense["epochs_run"] == 5 and dense["search_epochs_run"] == 3  # each epoch once
    assert_each_epoch_once(epochs)
    assert (epochs["phase"] == "pretrain").sum() == BASE["pretrain"]["epochs"]  # cached after

    # ASHA stopped the sparse trial at the rung; its thread ended there, nothing trained on
    # in the actor that the next trial reused (every later trial ran in the same process).
    assert sparse["status"] == "stopped" and sparse["search_epochs_run"] == 2
    stopped_ran = read_epochs(Path(spec.search_dir) / "trials" / sparse["trial_id"])
    assert [e["global_epoch"] for e in stopped_ran] == [1, 2]
    assert list(sparse["pids"]) == [again] and list(third["pids"]) == [again]
    assert third["status"] in ("ok", "stopped")
    for row in (dense, sparse, third):
        assert row["ended_at"] > row["started_at"] and row["outside_training_s"] > 0


def test_ddp_search_survives_a_killed_worker_writes_tables_and_asha_stops_a_trial(tmp_path: Path) -> None:
    from s2ap.tune.cluster import start_local_ray

    spec = load_spec(
        spec_dict(
            tmp_path,
            grid={"prune.sparsity": [0.5, 0.999]},
            search={"s2ap.gamma": {"type": "loguniform", "low": 0.001, "high": 0.01}},
            # One ASHA over both cells, run one after the other: the 99.9% sparse trial
            # meets the 50% one's score at the first rung and is stopped.
            scheduler={"type": "asha", "per_cell": False, "reduction_factor": 2},
            resources={"workers": 2, "cpus_per_worker": 1},
            max_failures=2,
        )
    )
    assert spec.grace_period() == 2
    start_local_ray(num_cpus=3)
    outcome, killed, at_epoch = search_killing(spec, rank=1, after_epoch=3)

    trials, trials_duck, trials_pl = read_all(outcome.trials_path)
    epochs, epochs_duck, epochs_pl = read_all(outcome.epochs_path)
    assert len(trials) == len(trials_duck) == trials_pl.height == 2
    assert len(epochs) == len(epochs_duck) == epochs_pl.height > 0
    assert list(trials.columns) == list(trials_duck.columns) == trials_pl.columns
    assert trials_pl.schema["prune_sparsity"].is_float() and trials_pl.schema["epochs_run"].is_integer()

    trials = trials.set_index("prune_sparsity")
    dense, sparse = trials.loc[0.5], trials.loc[0.999]
    # The killed DDP trial restarted both workers from its checkpoint and finished.
    assert trials["pids"].map(len).min() >= 2  # DDP: Train workers, not the Tune actor
    assert dense["trial_id"] == killed and dense["status"] == "ok" and not dense["stopped_early"]
    assert dense["attempts"] == 2 and len(dense["pids"]) == 4  # 2 workers x 2 starts
    starts = [
        json.loads(p.read_text())
        for p in (Path(spec.search_dir) / "trials" / killed / "workers").glob("*.json")
    ]
    assert sorted(s["resumed_from"] is not None for s in starts) == [False, False, True, True]
    assert dense["search_epochs_run"] == 3 and dense["epochs_run"] == 5  # every epoch, each once
    assert 0.0 <= dense["robust_acc"] <= 1.0 and dense["final_val_pgd_acc"] is not None
    assert dense["s2ap_gamma"] == dense["gamma"]  # searched value: flat column = run column
    # ASHA stopped the sparse trial at the grace period, after one S2AP epoch.
    assert sparse["status"] == "stopped" and sparse["stopped_early"]
    assert sparse["search_epochs_run"] == 2 and sparse["attempts"] == 1
    assert_each_epoch_once(epochs)
    at_rung = epochs[epochs["search_epoch"] == 2].set_index("trial_id")["val_pgd_acc"]
    assert at_rung[sparse["trial_id"]] < at_rung[dense["trial_id"]]
    # Pretraining ran once (the second trial loaded it from the cache).
    assert (epochs["phase"] == "pretrain").sum() == BASE["pretrain"]["epochs"]
    assert outcome.best[0]["trial_id"] == dense["trial_id"] and 1 not in outcome.best
    # Plain column names in SQL: the selected trial per cell, by the shared rule.
    duckdb = pytest.importorskip("duckdb")
    picked = duckdb.sql(
        f"select grid_cell, trial_id, s2ap_gamma = gamma from '{outcome.trials_path}' "
        "where selected and s2ap_enabled and prune_sparsity = 0.5"
    ).fetchall()
    assert picked == [(0, dense["trial_id"], True)]
    assert not sparse["selected"]  # a stopped trial is never a cell's best


def test_two_node_cluster_runs_trials_on_both_nodes_and_records_divergence(tmp_path: Path) -> None:
    from ray.cluster_utils import Cluster

    from s2ap.tune.cluster import runtime_env
    from s2ap.tune.search import run_search

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3})
    cluster.add_node(num_cpus=3)
    try:
        ray.init(address=cluster.address, runtime_env=runtime_env(cluster.address))
        # Each trial's one worker takes 2 of a node's 3 CPUs, so two at once need both nodes.
        spec = load_spec(
            spec_dict(
                tmp_path,
                grid={"finetune.lr": [0.01, 1.0e30]},  # the second one's loss turns NaN
                resources={"workers": 1, "cpus_per_worker": 2},
                max_concurrent=2,
            ),
            nodes=None,
        )
        outcome = run_search(spec, quiet=True)
    finally:
        ray.shutdown()
        cluster.shutdown()
    trials = pd.read_parquet(outcome.trials_path).set_index("finetune_lr")
    assert trials.loc[0.01, "status"] == "ok"
    assert trials.loc[1.0e30, "status"] == "error"
    assert "diverged" in trials.loc[1.0e30, "error"] and "nan" in trials.loc[1.0e30, "error"].lower()
    assert trials.loc[1.0e30, "attempts"] == 1  # a NaN is not retried
    nodes = {n for ids in trials["node_ids"] for n in ids}
    assert len(nodes) == 2, trials[["node_ids", "hostnames", "pids"]]
    epochs = pd.read_parquet(outcome.epochs_path)
    assert_each_epoch_once(epochs)
    # The diverged trial keeps the epochs before the NaN.
    diverged = epochs[epochs["trial_id"] == trials.loc[1.0e30, "trial_id"]]
    assert set(diverged["phase"]) <= {"pretrain", "prune"} and len(diverged) >= 2


def test_resume_after_the_driver_is_killed(tmp_path: Path) -> None:
    from s2ap.tune.cluster import start_local_ray

    address = start_local_ray(num_cpus=2)  # the drivers join this instance
    spec_file = tmp_path / "spec.yaml"
    # The second trial is long enough (40 finetuning epochs) to be cut by the kill.
    spec_file.write_text(yaml.safe_dump(spec_dict(tmp_path, grid={"finetune.epochs": [1, 40]})))
    out = tmp_path / "search"
    cmd = [sys.executable, "-m", "s2ap.tune", str(spec_file), "--address", address, "--out", str(out), "-q"]
    driver = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and driver.poll() is None:
            if (out / "trials.parquet").exists() and len(pd.read_parquet(out / "trials.parquet")) >= 1:
                break
            time.sleep(0.5)
        assert driver.poll() is None, driver.communicate()[0][-3000:]
        time.sleep(3)  # let Tune snapshot the finished trial (every 2 s)
    finally:
        driver.kill()
        driver.wait()
    first = pd.read_parquet(out / "trials.parquet")
    assert len(first) == 1
    done = dict(zip(first["trial_id"], first["attempts"], strict=True))

    again = subprocess.run(cmd + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "best per grid cell" in again.stdout
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 2 and trials["trial_id"].is_unique
    assert set(trials["status"]) == {"ok"}
    assert sorted(trials["finetune_epochs"]) == [1, 40]
    cut = trials.set_index("finetune_epochs").loc[40]
    assert (
        cut["attempts"] == 2 and cut["epochs_run"] == 2 + 40
    )  # restarted; every epoch once (pretraining cached)
    for trial_id, attempts in done.items():  # finished before the kill: not run again
        assert trials.set_index("trial_id").loc[trial_id, "attempts"] == attempts
    assert_each_epoch_once(pd.read_parquet(out / "epochs.parquet"))

    # A second start without --resume must not clobber the search.
    clash = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert clash.returncode == 2 and clash.stderr.startswith("error: --out: ")


def test_ddp_trial_resumes_after_its_train_controller_is_killed(tmp_path: Path) -> None:
    """Tune retries a DDP trial whose Train controller died; the new TorchTrainer (same name,
    same storage) resumes from Train's last checkpoint."""
    from ray.util.state import list_actors

    from s2ap.tune.cluster import start_local_ray
    from s2ap.tune.search import run_search

    spec = load_spec(spec_dict(tmp_path, resources={"workers": 2, "cpus_per_worker": 1}, max_failures=1))
    start_local_ray(num_cpus=3)
    box: list[Any] = []
    thread = threading.Thread(target=lambda: box.append(run_search(spec, quiet=True)), daemon=True)
    thread.start()
    killed = None
    deadline = time.time() + 300
    while killed is None and time.time() < deadline and thread.is_alive():
        for store in (Path(spec.search_dir) / "trials").glob("*"):
            found = latest_checkpoint(*checkpoint_roots(spec.search_dir, store.name))
            if found is None or found[1].get("final") or found[1]["metrics"]["global_epoch"] < 3:
                continue
            for actor in list_actors(filters=[("state", "=", "ALIVE")]):
                if "Controller" in str(actor.class_name) and actor.pid:
                    os.kill(actor.pid, signal.SIGKILL)
                    killed = store.name
        time.sleep(0.1)
    assert killed is not None, "no controller was killed mid-trial"
    thread.join(timeout=400)
    assert box, "the search did not finish"
    trials = pd.read_parquet(box[0].trials_path)
    row = trials.set_index("trial_id").loc[killed]
    assert row["status"] == "ok" and row["epochs_run"] == 5
    assert row["attempts"] == 2  # a second worker group, started by Tune's retry
    starts = read_workers(Path(spec.search_dir) / "trials" / killed)
    assert sorted(s["resumed_from"] is not None for s in starts) == [False, False, True, True]
    assert_each_epoch_once(pd.read_parquet(box[0].epochs_path))
