"""The requests a probe of the live service once answered badly, sent again over HTTP: each
gets its 4xx, and the service's memory, database and jobs folder are unharmed after it.

The server is the real app under uvicorn on a loopback port with a real SQLite store and a
fake runner (no request here may start a training). Memory is Python's own allocations in
this process, server threads included, traced with ``tracemalloc``.
"""

from __future__ import annotations

import sqlite3
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from service import Settings, create_app
from tests.helpers.service import FakeRunner, ThreadedServer

TOKEN = "probe-token"
YAML = {"Content-Type": "application/yaml"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadedServer]:
    app = create_app(Settings(api_token=TOKEN, data_dir=tmp_path, poll_interval_s=0.1), runner=FakeRunner())
    with ThreadedServer(app) as srv:
        yield srv


@pytest.fixture
def client(server: ThreadedServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as c:
        yield c


def state(data_dir: Path) -> dict[str, Any]:
    """What a bad request must leave as it was: the rows, the tables, the job folders."""
    with sqlite3.connect(f"file:{data_dir / 'jobs.sqlite3'}?mode=ro", uri=True) as db:
        return {
            "rows": db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0],
            "tables": {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")},
            "integrity": db.execute("PRAGMA integrity_check").fetchone()[0],
            "job_dirs": sorted(p.name for p in (data_dir / "jobs").glob("*")),
        }


def refused(
    client: httpx.Client, data_dir: Path, body: bytes, status: int, code: str, field: str | None
) -> dict[str, Any]:
    before = state(data_dir)
    r = client.post("/jobs", content=body, headers=YAML)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert (error["code"], error["field"]) == (code, field), error
    assert str(data_dir) not in error["message"]  # no resolved absolute path in the answer
    assert state(data_dir) == before
    assert before["integrity"] == "ok"
    return dict(error)


def still_serves(client: httpx.Client, spec: dict[str, Any]) -> None:
    r = client.post("/jobs", content=yaml.safe_dump(spec).encode(), headers=YAML)
    assert r.status_code == 201, r.text


# --------------------------------------------------------------------------- 1. memory


def alias_bomb(string_bytes: int = 100_000, aliases: int = 3_000) -> bytes:
    """The probe's body: one 100 KB string reused through 3,000 aliases (300 MB expanded)."""
    head = b'name: bomb\nbase: {}\ns: &s "' + b"x" * string_bytes + b'"\n'
    return head + b"pad: [" + b", ".join([b"*s"] * aliases) + b"]\n"


def test_a_yaml_alias_bomb_is_refused_without_expanding_it(
    client: httpx.Client, tmp_path: Path, tiny_spec: Callable[..., dict[str, Any]]
) -> None:
    body = alias_bomb()
    assert 100_000 < len(body) < 120_000
    client.get("/healthz")  # the server's first-request allocations are not the bomb's
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        error = refused(client, tmp_path, body, 422, "spec_too_complex", "body")
        growth = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    assert "aliases" in error["message"]
    # Expanded, the document is 300 MB (the unbounded service grew by about that much);
    # walked only up to the 4 MiB budget, the request costs a few times the body.
    assert growth < 20 * 2**20, f"peak memory grew by {growth / 2**20:.1f} MiB"
    still_serves(client, tiny_spec())


# --------------------------------------------------------------------------- 2. binary base


def test_a_binary_base_file_is_a_422_naming_base(client: httpx.Client, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"trial_id": ["t1"], "robust_acc": [0.5]})
    (tmp_path / "runs").mkdir()
    pq.write_table(table, tmp_path / "runs" / "trials.parquet")
    error = refused(client, tmp_path, b"name: x\nbase: runs/trials.parquet\n", 422, "invalid_spec", "base")
    assert "not UTF-8" in error["message"]
    # The probe's own file: a job's results table (now also refused as the service's state).
    job = client.post("/jobs", content=b"name: x\nbase: {}\n", headers=YAML)
    assert job.status_code == 201, job.text
    results = tmp_path / "jobs" / job.json()["id"] / "search"
    results.mkdir(parents=True)
    pq.write_table(table, results / "trials.parquet")
    body = f"name: x\nbase: jobs/{job.json()['id']}/search/trials.parquet\n".encode()
    refused(client, tmp_path, body, 422, "path_reserved", "base")


# --------------------------------------------------------------------------- 3. huge integers


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        pytest.param({"num_samples": 10**20}, "num_samples", "2**53", id="num_samples-1e20"),
        pytest.param({"num_samples": 10**6}, "num_samples", "100000", id="num_samples-1e6"),
        pytest.param({"seed": 10**30}, "seed", "2**53", id="seed-1e30"),
        pytest.param({"seed": 10**9}, "seed", "1000000", id="seed-1e9"),
        pytest.param({"base.seed": 2**40}, "base.seed", "4294967295", id="base-seed"),
        pytest.param({"base.pretrain.epochs": 10**12}, "base.pretrain.epochs", "10000", id="epochs-1e12"),
        pytest.param({"base.prune.epochs": 10**5}, "base.prune.epochs", "10000", id="prune-epochs"),
        pytest.param({"max_concurrent": -(10**40)}, "max_concurrent", "2**53", id="negative-huge"),
    ],
)
def test_huge_integers_are_a_422_naming_the_field_and_leave_nothing(
    client: httpx.Client,
    tmp_path: Path,
    tiny_spec: Callable[..., dict[str, Any]],
    change: dict[str, int],
    field: str,
    says: str,
) -> None:
    spec = tiny_spec()
    for dotted, value in change.items():
        if dotted.startswith("base."):
            *parents, leaf = dotted.removeprefix("base.").split(".")
            target = spec["base"]
            for part in parents:
                target = target.setdefault(part, {})
            target[leaf] = value
        else:
            spec[dotted] = value
    error = refused(client, tmp_path, yaml.safe_dump(spec).encode(), 422, "invalid_spec", field)
    assert says in error["message"]
    still_serves(client, tiny_spec())


@pytest.mark.parametrize("media", ["application/yaml", "application/json"])
def test_an_integer_past_pythons_digit_limit_is_a_422(
    client: httpx.Client, tmp_path: Path, tiny_spec: Callable[..., dict[str, Any]], media: str
) -> None:
    body = b'{"name": "x", "base": {}, "num_samples": ' + b"9" * 5000 + b"}"
    before = state(tmp_path)
    r = client.post("/jobs", content=body, headers={"Content-Type": media})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "malformed_body"
    assert state(tmp_path) == before
    still_serves(client, tiny_spec())


# --------------------------------------------------------------------------- 5. own state


@pytest.mark.parametrize(
    ("change", "field"),
    [
        pytest.param({"optuna_storage": "sqlite:///jobs.sqlite3"}, "optuna_storage", id="optuna-in-db"),
        pytest.param({"optuna_storage": "sqlite:///jobs.sqlite3-wal"}, "optuna_storage", id="optuna-wal"),
        pytest.param({"storage": "jobs"}, "storage", id="storage-jobs"),
        pytest.param({"storage": "ray/tune"}, "storage", id="storage-ray"),
        pytest.param({"storage": "."}, "storage", id="storage-data-dir"),
        pytest.param({"pretrain_cache": "runs/../jobs/cache"}, "pretrain_cache", id="cache-dotdot"),
        pytest.param({"overrides": {"data.root": "ray"}}, "overrides.data.root", id="data-root-ray"),
        pytest.param({"base": "service.lock"}, "base", id="base-lock"),
        pytest.param({"base": "jobs.sqlite3"}, "base", id="base-db"),
    ],
)
def test_specs_cannot_point_at_the_services_own_state(
    client: httpx.Client,
    tmp_path: Path,
    tiny_spec: Callable[..., dict[str, Any]],
    change: dict[str, Any],
    field: str,
) -> None:
    body = yaml.safe_dump(tiny_spec(**change)).encode()
    error = refused(client, tmp_path, body, 422, "path_reserved", field)
    assert state(tmp_path)["tables"] == {"jobs", "sqlite_sequence"}  # no Optuna table in it
    assert "service's own state" in error["message"] or "not the directory itself" in error["message"]


def test_a_symlink_into_the_services_state_is_refused(
    client: httpx.Client, tmp_path: Path, tiny_spec: Callable[..., dict[str, Any]]
) -> None:
    (tmp_path / "mine").symlink_to(tmp_path / "jobs")
    body = yaml.safe_dump(tiny_spec(storage="mine/tune")).encode()
    refused(client, tmp_path, body, 422, "path_reserved", "storage")


# --------------------------------------------------------------------------- 7. minor


def test_errors_name_paths_as_written_never_resolved(
    client: httpx.Client, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    outside = tmp_path_factory.mktemp("elsewhere")
    (tmp_path / "escape").symlink_to(outside)
    error = refused(
        client,
        tmp_path,
        b"name: x\nbase: {}\nstorage: escape/runs\n",
        422,
        "path_outside_data_dir",
        "storage",
    )
    assert "'escape/runs'" in error["message"] and str(outside) not in error["message"]
    error = refused(client, tmp_path, b"name: x\nbase: nowhere.yaml\n", 422, "invalid_spec", "base")
    assert error["message"] == "base: config file not found: 'nowhere.yaml'"


def test_the_api_description_needs_the_token_and_docs_are_off(server: ThreadedServer) -> None:
    assert httpx.get(f"{server.url}/openapi.json").status_code == 401
    r = httpx.get(f"{server.url}/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and "/jobs" in r.json()["paths"]
    assert "/openapi.json" not in r.json()["paths"]
    assert httpx.get(f"{server.url}/docs").status_code == 404
    assert httpx.get(f"{server.url}/redoc").status_code == 404


def test_public_docs_is_a_setting(tmp_path: Path) -> None:
    assert Settings.from_env({"S2AP_API_TOKEN": "x", "S2AP_PUBLIC_DOCS": "true"}).public_docs
    assert not Settings.from_env({"S2AP_API_TOKEN": "x"}).public_docs
    app = create_app(Settings(api_token=TOKEN, data_dir=tmp_path, public_docs=True), runner=FakeRunner())
    with ThreadedServer(app) as srv:
        assert httpx.get(f"{srv.url}/openapi.json").status_code == 200
        assert httpx.get(f"{srv.url}/docs").status_code == 200
        assert httpx.get(f"{srv.url}/jobs").status_code == 401  # the API itself stays closed


def test_the_description_states_the_limits_and_media_types(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    params = {
        (path, p["name"]): p["schema"]
        for path, item in schema["paths"].items()
        for op in item.values()
        for p in op.get("parameters", [])
    }
    lines = next(b for b in params[("/jobs/{job_id}/logs", "lines")]["anyOf"] if b.get("type") == "integer")
    limit = next(b for b in params[("/jobs", "limit")]["anyOf"] if b.get("type") == "integer")
    assert (lines["maximum"], limit["maximum"]) == (10_000, 100)
    logs = schema["paths"]["/jobs/{job_id}/logs"]["get"]["responses"]
    assert set(logs["200"]["content"]) == {"text/plain"}
    for status in ("401", "404", "422", "503"):
        assert set(logs[status]["content"]) == {"application/json"}, status
    submit = schema["paths"]["/jobs"]["post"]["responses"]
    assert {"200", "201"} <= set(submit)


def test_an_idempotent_replay_answers_200_the_first_creation_201(
    client: httpx.Client, tmp_path: Path, tiny_spec: Callable[..., dict[str, Any]]
) -> None:
    body = yaml.safe_dump(tiny_spec()).encode()
    headers = {**YAML, "Idempotency-Key": "once"}
    first = client.post("/jobs", content=body, headers=headers)
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    again = client.post("/jobs", content=body, headers=headers)
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"] and again.headers["location"] == first.headers["location"]
    assert state(tmp_path)["rows"] == 1
