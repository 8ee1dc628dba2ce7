"""A search whose storage is an object store: moto's S3 server on loopback (tests/conftest.py),
a real local Ray, the tables read back through ``pyarrow.fs``. Starts Ray; a few minutes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

ray = pytest.importorskip("ray")
pd = pytest.importorskip("pandas")

import pyarrow.fs as pafs  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from s2ap import storage  # noqa: E402
from s2ap.tune.__main__ import main  # noqa: E402
from tests.helpers.configs import search_base  # noqa: E402
from tests.helpers.net import free_port  # noqa: E402

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]

# The tiny digits search test_ray.py runs: pretraining (cached), pruning, finetuning.
BASE: dict[str, Any] = search_base()


@pytest.fixture(autouse=True)
def _ray_down() -> Any:
    yield
    ray.shutdown()


def s3_table(uri: str) -> Any:
    """A Parquet table on the store, read with plain pyarrow.fs (the environment's endpoint)."""
    fs, path = pafs.FileSystem.from_uri(uri)
    return pq.read_table(path, filesystem=fs).to_pandas()


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_search_on_s3_writes_tables_there_resumes_from_the_bucket_and_writes_nothing_local(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from s2ap.tune.cluster import start_local_ray

    # The drivers, Ray and its workers run in an empty folder, the drivers with an empty
    # home: whatever the search writes outside Ray's temp dir (its local cache) shows up
    # there. (Ray itself keeps its home: it caches its auth token per process, and the
    # drivers are pointed at that token.)
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    monkeypatch.chdir(work)
    storage_uri = f"{s3_bucket}/searches"
    spec_file = tmp_path / "spec" / "s3.yaml"
    spec_file.parent.mkdir()
    # The second trial is long enough (40 finetuning epochs) to be cut by the kill.
    spec = {
        "name": "s3",
        "base": BASE,
        "grid": {"finetune.epochs": [1, 40]},
        "scheduler": {"type": "fifo"},
        "resources": {"workers": 1, "cpus_per_worker": 1},
        "max_concurrent": 1,
        "storage": storage_uri,
    }
    spec_file.write_text(yaml.safe_dump(spec))
    address = start_local_ray(num_cpus=2)  # the drivers join it; its workers get the AWS_* env
    env = {**os.environ, "HOME": str(home)}
    token = Path.home() / ".ray" / "auth_token"
    if "RAY_AUTH_TOKEN" not in env and "RAY_AUTH_TOKEN_PATH" not in env and token.is_file():
        env["RAY_AUTH_TOKEN"] = token.read_text().strip()
    search = f"{storage_uri}/s3"
    cmd = [sys.executable, "-m", "s2ap.tune", str(spec_file), "--address", address, "-q"]
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and driver.poll() is None:
            if storage.exists(f"{search}/trials.parquet") and len(s3_table(f"{search}/trials.parquet")) >= 1:
                break
            time.sleep(0.5)
        assert driver.poll() is None, driver.communicate()[0][-3000:]
        time.sleep(3)  # let Tune snapshot the finished trial to the bucket (every 2 s)
    finally:
        driver.kill()
        driver.wait()
    first = s3_table(f"{search}/trials.parquet")
    assert len(first) == 1
    done = dict(zip(first["trial_id"], first["attempts"], strict=True))

    again = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=400, env=env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"trials: {search}/trials.parquet" in again.stdout

    trials = s3_table(f"{search}/trials.parquet")
    epochs = s3_table(f"{search}/epochs.parquet")
    assert len(trials) == 2 and set(trials["status"]) == {"ok"}
    cut = trials.set_index("finetune_epochs").loc[40]
    assert (
        cut["attempts"] == 2 and cut["epochs_run"] == 2 + 40
    )  # resumed, each epoch once (pretraining cached)
    for trial_id, attempts in done.items():  # finished before the kill: not run again
        assert trials.set_index("trial_id").loc[trial_id, "attempts"] == attempts
    keys = epochs[["trial_id", "phase", "epoch"]].apply(tuple, axis=1)
    assert keys.is_unique
    # Pretraining ran once: the second trial loaded it from the cache in the bucket.
    assert (epochs["phase"] == "pretrain").sum() == BASE["pretrain"]["epochs"]
    cache = storage.list_dir(f"{storage_uri}/pretrain_cache")
    assert len(cache) == 1 and cache[0].startswith("pretrain-") and cache[0].endswith(".pt")
    # Checkpoints, notes and Tune's state are in the bucket too.
    names = storage.list_dir(search)
    assert {"spec.json", "tuner.pkl", "trials", "trials.parquet", "epochs.parquet"} <= set(names)
    assert any(n.startswith("experiment_state-") for n in names)
    assert any(n.startswith("trial_") for n in names)

    # Nothing but Ray's temp dir (the local cache) was written on this machine.
    assert files_under(work) == [] and files_under(home) == []

    # A report reads the tables straight from the URI.
    from s2ap.report import load_runs

    runs, per_epoch = load_runs([search])
    assert len(runs) == 2 and per_epoch is not None and len(per_epoch) == len(epochs)


def test_bad_storage_is_one_line_before_any_trial(
    s3_endpoint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No Ray is started for these: the store is probed first."""
    spec_file = tmp_path / "bad.yaml"

    def run(storage_uri: str, **more: Any) -> str:
        spec = {"name": "bad", "base": BASE, "scheduler": {"type": "fifo"}, "storage": storage_uri, **more}
        spec_file.write_text(yaml.safe_dump(spec))
        assert main([str(spec_file), "-q"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ")
        return err.strip()

    assert run("s3://no-such-bucket/p") == (
        "error: storage: bucket 'no-such-bucket' of 's3://no-such-bucket/p' does not exist"
    )
    assert run("ftp://host/p").startswith("error: storage: unknown storage scheme 'ftp://'")
    assert "sup3rsecret" not in run("s3://KEY:sup3rsecret@bucket/p")
    port = free_port()  # a port nothing listens on
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    assert run("s3://bucket/p").startswith(
        f"error: storage: cannot reach the store of 's3://bucket/p' at endpoint http://127.0.0.1:{port}"
    )
    assert not ray.is_initialized()


def test_trials_land_on_the_worker_nodes_of_a_cluster_sharing_s3(s3_bucket: str, tmp_path: Path) -> None:
    """A head and two worker nodes (``ray.cluster_utils.Cluster``, all on this machine):
    trials ask for a custom resource only the workers declare, so they run there, and the
    nodes share the search's files and the pretraining cache through the bucket alone."""
    from ray.cluster_utils import Cluster

    from s2ap.tune.cluster import runtime_env
    from s2ap.tune.search import run_search
    from s2ap.tune.spec import load_spec

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = {cluster.add_node(num_cpus=1, resources={"trial_node": 1}).node_id for _ in range(2)}
    head = cluster.head_node.node_id
    try:
        ray.init(address=cluster.address, runtime_env=runtime_env(cluster.address))
        spec = load_spec(
            {
                "name": "cluster",
                "base": {**BASE, "finetune": {"epochs": 1, "lr": 0.01}},
                "grid": {"prune.sparsity": [0.5, 0.6]},
                "scheduler": {"type": "fifo"},
                "resources": {"workers": 1, "cpus_per_worker": 1, "custom_per_worker": {"trial_node": 1}},
                "max_concurrent": 2,
                "storage": f"{s3_bucket}/cluster",
            },
            nodes=None,
        )
        outcome = run_search(spec, quiet=True)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert outcome.trials_path == f"{s3_bucket}/cluster/cluster/trials.parquet"
    trials = s3_table(outcome.trials_path)
    assert len(trials) == 2 and set(trials["status"]) == {"ok"}
    ran_on = [list(ids) for ids in trials["node_ids"]]
    assert all(len(ids) == 1 for ids in ran_on), ran_on
    # Two at a time, one per node that has the resource: both worker nodes, never the head.
    assert {ids[0] for ids in ran_on} == workers and head not in workers
    epochs = s3_table(outcome.epochs_path)
    # One trial pretrained, the other (on the other node) waited on the lease and loaded the
    # checkpoint from the bucket.
    assert (epochs["phase"] == "pretrain").sum() == BASE["pretrain"]["epochs"]
    assert [n for n in storage.list_dir(f"{s3_bucket}/cluster/pretrain_cache") if n.endswith(".lease")] == []


def test_custom_resources_no_node_has_are_refused() -> None:
    from s2ap.errors import ConfigError
    from s2ap.tune.spec import load_spec

    spec = {
        "name": "x",
        "base": BASE,
        "scheduler": {"type": "fifo"},
        "resources": {"custom_per_worker": {"trial_node": 1}},
        "storage": "/tmp/s2ap-custom-resources",
    }
    with pytest.raises(ConfigError) as err:
        load_spec(spec)  # an embedded Ray on this machine declares none
    assert err.value.field == "resources.custom_per_worker.trial_node"
    with pytest.raises(ConfigError) as err:
        load_spec(spec, nodes=[{"CPU": 4.0}, {"CPU": 2.0, "trial_node": 0.5}])
    assert str(err.value) == (
        "resources.custom_per_worker.trial_node: 1 'trial_node' per worker, but no node has more than 0.5"
    )
    with pytest.raises(ConfigError) as err:
        load_spec({**spec, "resources": {"custom_per_worker": {"GPU": 1}}}, nodes=None)
    assert err.value.field == "resources.custom_per_worker.GPU"
    nodes = [{"CPU": 4.0}, {"CPU": 4.0, "trial_node": 2.0}]
    fits = load_spec({**spec, "grid": {"seed": [0, 1, 2]}}, nodes=nodes)
    from s2ap.tune.resources import concurrency

    # The CPUs would hold all three trials; the custom resource holds two, on the second node.
    assert concurrency(fits, nodes) == 2


def test_a_ddp_trial_keeps_train_checkpoints_in_the_bucket(s3_bucket: str) -> None:
    """Two Train workers (gloo) with storage on S3: Train gets the bucket's filesystem, its
    checkpoints and the tables land there."""
    from s2ap.tune.cluster import start_local_ray
    from s2ap.tune.search import run_search
    from s2ap.tune.spec import load_spec

    spec = load_spec(
        {
            "name": "ddp",
            "base": BASE,
            "scheduler": {"type": "fifo"},
            "resources": {"workers": 2, "cpus_per_worker": 1},
            "storage": f"{s3_bucket}/ddp",
        }
    )
    start_local_ray(num_cpus=3)
    outcome = run_search(spec, quiet=True)
    trials = s3_table(outcome.trials_path)
    assert len(trials) == 1 and trials.loc[0, "status"] == "ok" and len(trials.loc[0, "pids"]) == 2
    assert trials.loc[0, "epochs_run"] == 5
    trial_id = trials.loc[0, "trial_id"]
    kept = storage.list_dir(f"{outcome.search_dir}/train/{trial_id}")
    assert any(n.startswith("checkpoint_") for n in kept), kept
