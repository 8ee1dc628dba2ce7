"""Locations: local folders and object-store URIs (moto's S3 server on loopback), the
pretraining cache on them and its lock."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from s2ap import pretrain_cache, storage
from s2ap.errors import ConfigError
from tests.helpers.net import free_port

# --------------------------------------------------------------------------- checking


def test_a_local_path_is_made_absolute_as_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert storage.check("runs/tune", "storage") == str(tmp_path / "runs" / "tune")
    assert storage.check(f"file://{tmp_path}/x", "storage") == str(tmp_path / "x")
    assert not storage.is_remote(str(tmp_path)) and storage.is_remote("s3://b/p")


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("ftp://host/p", "unknown storage scheme 'ftp://'"),
        ("s3://", "expected s3://BUCKET/PREFIX"),
        ("", "expected a folder path or a URI"),
    ],
)
def test_bad_locations_are_one_line_naming_the_field(uri: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        storage.check(uri, "storage")
    assert err.value.field == "storage" and says in err.value.message
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "uri",
    [
        "s3://AKIAEXAMPLE:sup3rsecret@bucket/prefix",
        "s3://bucket/prefix?access_key=AKIAEXAMPLE&secret_key=sup3rsecret",
        "abfs://container@account.dfs.core.windows.net/p?sas_token=sup3rsecret",
    ],
)
def test_credentials_in_a_uri_are_refused_and_never_shown(uri: str) -> None:
    with pytest.raises(ConfigError) as err:
        storage.check(uri, "pretrain_cache")
    assert err.value.field == "pretrain_cache" and "credentials in the URI are refused" in err.value.message
    assert "sup3rsecret" not in str(err.value)


def test_paths_inside_each_kind_of_store_map_back_to_uris() -> None:
    """What Ray reports (a path inside the store's filesystem) becomes a URI again."""
    s3 = storage.check("s3://bucket/searches/", "storage")
    assert s3 == "s3://bucket/searches" and storage._split(s3)[:2] == ("s3://", "bucket/searches")
    assert storage.from_fs_path(s3, "bucket/searches/x/checkpoint_1") == "s3://bucket/searches/x/checkpoint_1"
    az = storage.check(
        "abfs://runs@acct.dfs.core.windows.net/searches", "storage"
    )  # a container, not a secret
    assert storage._split(az)[:2] == ("abfs://acct.dfs.core.windows.net", "runs/searches")
    assert storage.from_fs_path(az, "runs/searches/x") == "abfs://runs@acct.dfs.core.windows.net/searches/x"
    hdfs = storage.check("hdfs://namenode:8020/user/s2ap", "storage")
    assert storage._split(hdfs)[:2] == ("hdfs://namenode:8020", "/user/s2ap")
    assert storage.from_fs_path(hdfs, "/user/s2ap/x") == "hdfs://namenode:8020/user/s2ap/x"
    assert storage.join(s3, "a", "b") == "s3://bucket/searches/a/b" and storage.parent(s3) == "s3://bucket"
    with pytest.raises(ConfigError):
        storage.check("abfs://runs:sup3rsecret@acct.dfs.core.windows.net/x", "storage")


def test_redact_blanks_user_info_and_secret_parameters_in_any_text() -> None:
    text = "failed on s3://KEY:SECRET@bucket/p?region=eu-west-1&secret_key=SECRET and gs://b/x"
    shown = storage.redact(text)
    assert "SECRET" not in shown and "KEY" not in shown
    assert "s3://***@bucket/p?region=eu-west-1&secret_key=***" in shown and "gs://b/x" in shown


# --------------------------------------------------------------------------- files


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])  # s3: moto, the slow tier
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "store")
    return storage.join(request.getfixturevalue("s3_bucket"), "prefix")


def test_files_round_trip_the_same_on_a_folder_and_on_s3(root: str) -> None:
    note = storage.join(root, "a", "note.json")
    assert not storage.exists(note) and storage.list_dir(storage.join(root, "a")) == []
    storage.write_json(note, {"x": 1})
    assert (
        storage.read_json(note) == {"x": 1}
        and storage.is_file(note)
        and storage.is_dir(storage.join(root, "a"))
    )
    storage.append_line(storage.join(root, "a", "log.jsonl"), "one")
    storage.append_line(storage.join(root, "a", "log.jsonl"), "two")
    assert storage.read_text(storage.join(root, "a", "log.jsonl")) == "one\ntwo\n"
    assert storage.list_dir(storage.join(root, "a")) == ["log.jsonl", "note.json"]
    table = pa.table({"trial_id": ["t1", "t2"], "acc": [0.5, 0.75]})
    where = storage.write_table(table, storage.join(root, "trials.parquet"))
    assert storage.read_table(where).equals(table)
    with storage.open_input(where) as stream:
        assert pd.read_parquet(stream)["acc"].tolist() == [0.5, 0.75]
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(root, "missing"))
    storage.delete(note)
    storage.delete(note)  # absent: nothing happens
    assert not storage.exists(note)
    assert storage.name(where) == "trials.parquet" and storage.parent(where) == root


def test_an_s3_table_reads_back_through_plain_pyarrow_fs(s3_bucket: str) -> None:
    where = storage.write_table(pa.table({"a": [1, 2, 3]}), storage.join(s3_bucket, "x", "t.parquet"))
    fs, path = pafs.FileSystem.from_uri(where)  # AWS_ENDPOINT_URL from the environment
    assert path == "s2ap-test/x/t.parquet"
    import pyarrow.parquet as pq

    assert pq.read_table(path, filesystem=fs).column("a").to_pylist() == [1, 2, 3]


# --------------------------------------------------------------------------- probing


def test_probe_passes_a_reachable_bucket(s3_bucket: str) -> None:
    storage.probe(storage.join(s3_bucket, "any", "prefix"), "storage")
    storage.probe("/nonexistent/local/folder", "storage")  # created on demand


def test_probe_names_a_missing_bucket(s3_endpoint: str) -> None:
    with pytest.raises(ConfigError) as err:
        storage.probe("s3://no-such-bucket/prefix", "storage")
    assert err.value.field == "storage"
    assert err.value.message == "bucket 'no-such-bucket' of 's3://no-such-bucket/prefix' does not exist"


def test_probe_names_an_unreachable_endpoint_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()  # a port nothing listens on
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    with pytest.raises(ConfigError) as err:
        storage.probe("s3://bucket/prefix", "storage", timeout=2)
    assert err.value.field == "storage"
    assert err.value.message.startswith(
        f"cannot reach the store of 's3://bucket/prefix' at endpoint http://127.0.0.1:{port}: "
    )
    assert "testing-secret" not in str(err.value)


# --------------------------------------------------------------------------- the pretraining cache


def test_two_concurrent_users_of_an_s3_cache_pretrain_once(s3_bucket: str) -> None:
    """Two trials want the same pretrained model at once: one takes the lease and computes,
    the other waits until the entry exists, then loads the same bytes."""
    import torch

    cache = storage.join(s3_bucket, "cache")
    entry = storage.join(cache, "pretrain-k.pt")
    lease_at = storage.join(cache, "pretrain-k.lease")
    computed: list[str] = []
    loaded: dict[str, dict[str, torch.Tensor]] = {}
    start = threading.Barrier(2)

    def user(name: str) -> None:
        lease = pretrain_cache.Lease(lease_at, ttl=30, beat=0.2)
        start.wait()
        while True:
            if storage.exists(entry):
                break
            if lease.try_take(settle=0.3):
                computed.append(name)
                time.sleep(1.0)  # "pretraining", while the heartbeat keeps the lease alive
                pretrain_cache.save(entry, {"w": torch.full((3,), 7.0)})
                lease.release()
                break
            time.sleep(0.1)
        state = pretrain_cache.load(entry)
        assert state is not None
        loaded[name] = state

    threads = [threading.Thread(target=user, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(computed) == 1, computed
    assert set(loaded) == {"a", "b"} and all(
        torch.equal(s["w"], torch.full((3,), 7.0)) for s in loaded.values()
    )
    assert not storage.exists(lease_at)  # released: the lease object is gone


def test_a_dead_holders_lease_is_taken_over_after_it_stops_moving(s3_bucket: str) -> None:
    where = storage.join(s3_bucket, "cache", "pretrain-k.lease")
    dead = pretrain_cache.Lease(where, ttl=30, beat=30)
    assert dead.try_take(settle=0.0)
    dead._stop.set()  # the holder dies: its lease stops beating, the object stays
    waiter = pretrain_cache.Lease(where, ttl=0.5, beat=0.2)
    assert not waiter.try_take(settle=0.0)  # alive as far as it knows
    time.sleep(0.7)
    assert waiter.try_take(settle=0.0)  # unchanged for longer than the ttl: taken over
    assert storage.read_json(where)["owner"] == waiter.owner
    waiter.release()


def test_the_local_cache_keeps_its_flock(tmp_path: Path) -> None:
    from s2ap.pretrain_cache import _try_flock

    first = _try_flock(str(tmp_path), "k")
    assert first is not None
    assert _try_flock(str(tmp_path), "k") is None  # held
    import os

    os.close(first)  # the process (here: the descriptor) goes away, the lock with it
    again = _try_flock(str(tmp_path), "k")
    assert again is not None
    os.close(again)


def test_a_waiting_trial_wakes_when_the_entry_lands_without_polling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One process waits on the flock in the kernel: no sleep-and-look loop; it comes back
    with the cached entry (not the lock) once the trial that pretrained lets go."""
    import threading

    import torch

    from s2ap import pretrain_cache
    from s2ap.distributed import DistInfo
    from s2ap.experiment import from_dict, pretrain_key
    from tests.helpers.configs import tiny_run

    cfg = from_dict(tiny_run())
    cache = str(tmp_path / "cache")
    holder = pretrain_cache.PretrainLock.acquire(cfg, cache, DistInfo(), torch.device("cpu"))
    assert holder._fd is not None  # this one pretrains

    def no_polling(seconds: float) -> None:
        raise AssertionError(f"polled (slept {seconds}s)")

    monkeypatch.setattr(pretrain_cache.time, "sleep", no_polling)
    got: list[pretrain_cache.PretrainLock] = []
    waiter = threading.Thread(
        target=lambda: got.append(
            pretrain_cache.PretrainLock.acquire(cfg, cache, DistInfo(), torch.device("cpu"))
        )
    )
    waiter.start()
    waiter.join(timeout=0.5)
    assert waiter.is_alive() and not got  # blocked while pretraining runs
    pretrain_cache.save(pretrain_cache.entry(cache, cfg), {"w": torch.ones(1)})
    holder.release()
    waiter.join(timeout=30)
    assert got and got[0]._fd is None  # the cached entry, no lock taken
    assert pretrain_key(cfg) in pretrain_cache.entry(cache, cfg)
