"""The job service end to end: a real ``python -m service`` on a loopback port, a real HTTP
client, a real SQLite file, and the real local Ray head the service starts itself.

The service runs as on a fresh machine: ``HOME`` is an empty folder (no ``~/.ray``) and no
``RAY_AUTH_TOKEN*`` variable is set, so it must make its own Ray token (a machine where an
earlier Ray left ``~/.ray/auth_token`` once hid that it could not). One service (and so one
Ray head) is shared by the module; the restart test replaces the service process mid-job and
the new one re-attaches to the same head. Teardown stops the service, then the head, and
checks no Ray process of it is left.
"""

from __future__ import annotations

import copy
import io
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

pd = pytest.importorskip("pandas")
pytest.importorskip("ray")

from service.cluster.ray_cluster import ClusterToken  # noqa: E402
from service.cluster.ray_head import EmbeddedRayHead, session_members  # noqa: E402
from tests.helpers.service import ServiceProcess, running_service  # noqa: E402

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-token-7c1d"
BODY_CAP = 64 * 1024


# --------------------------------------------------------------------------- specs


def _set(mapping: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        mapping = mapping.setdefault(part, {})
    mapping[leaf] = value


def smallest_quickstart(name: str = "quickstart") -> dict[str, Any]:
    """``search_spaces/quickstart.yaml`` at its smallest: both grid cells once, 1-2 epochs
    per phase, 8x8 digits, 128 training points, one attack step, no AutoAttack."""
    spec = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    base = spec["base"]
    for key, value in {
        "data.image_size": 8,
        "data.train_limit": 128,
        "data.test_limit": 64,
        "data.batch_size": 64,
        "attack.steps": 1,
        "pretrain.epochs": 1,
        "prune.epochs": 2,
        "prune.probe_after": [1],  # the quickstart's probe rung, within the 2 pruning epochs
        "finetune.epochs": 1,
        "s2ap.warmup_epochs": 1,
        "eval.autoattack": False,
        "eval.pgd_steps": 1,
        "eval.val_pgd_steps": 1,
        "eval.val_limit": 32,
    }.items():
        _set(base, key, value)
    if "s2ap.warmup_epochs" in spec.get("search", {}):
        spec["search"]["s2ap.warmup_epochs"] = {"type": "int", "low": 0, "high": 1}
    spec["scheduler"] = {"type": "fifo"}
    spec["num_samples"] = 1
    spec["name"] = name
    return spec


def spec_yaml(spec: dict[str, Any]) -> bytes:
    return yaml.safe_dump(spec, sort_keys=False).encode()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service-data")


@pytest.fixture(scope="module")
def fresh_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The service's HOME: empty, like a new machine's (no ``~/.ray/auth_token``)."""
    return tmp_path_factory.mktemp("fresh-home")


@pytest.fixture(scope="module")
def service(data_dir: Path, fresh_home: Path) -> Iterator[ServiceProcess]:
    # The head's session keeps the default CPU weight here (autogroup nice 0): these tests
    # check behaviour, and on a shared machine a lighter session makes the trials crawl.
    env: dict[str, str | None] = {
        "HOME": str(fresh_home),
        "RAY_AUTH_TOKEN": None,
        "RAY_AUTH_TOKEN_PATH": None,
        "RAY_AUTH_MODE": None,
        "S2AP_POLL_INTERVAL_S": "0.5",
        "S2AP_MAX_BODY_BYTES": str(BODY_CAP),
        "S2AP_RAY_AUTOGROUP_NICE": "0",
    }
    with running_service(data_dir, token=TOKEN, env=env) as svc:
        yield svc


@pytest.fixture
def client(service: ServiceProcess) -> Iterator[httpx.Client]:
    with service.client() as c:
        yield c


def wait_for(client: httpx.Client, job_id: str, statuses: set[str], timeout_s: float = 400) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = client.get(f"/jobs/{job_id}")
        assert r.status_code == 200, r.text
        job = r.json()
        if job["status"] in statuses:
            return job
        time.sleep(0.5)
    logs = client.get(f"/jobs/{job_id}/logs", params={"lines": 40}).text
    raise AssertionError(f"job {job_id} still {job.get('status')} after {timeout_s}s:\n{logs}")


def db_rows(data_dir: Path) -> int:
    with sqlite3.connect(f"file:{data_dir / 'jobs.sqlite3'}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])


def job_dirs(data_dir: Path) -> set[str]:
    jobs = data_dir / "jobs"
    return {p.name for p in jobs.iterdir()} if jobs.is_dir() else set()


def head_token(data_dir: Path) -> ClusterToken:
    """The token the service's Ray head runs with (the file its record names)."""
    record = EmbeddedRayHead(data_dir / "ray").record()
    assert record is not None and record.token_path is not None
    token = record.token()
    assert token is not None and token.path == Path(record.token_path)
    return token


def ray_job_status(data_dir: Path, job_id: str) -> str:
    """Ray's own view of the job, from its dashboard (not through the service)."""
    head = json.loads((data_dir / "ray" / "head.json").read_text())
    r = httpx.get(
        f"{head['dashboard_url']}/api/jobs/{job_id}", headers=head_token(data_dir).headers(), timeout=10
    )
    assert r.status_code == 200, r.text
    return str(r.json()["status"])


# --------------------------------------------------------------------------- tests


def test_healthz_needs_no_token_and_sees_ray(service: ServiceProcess) -> None:
    r = httpx.get(f"{service.url}/healthz", timeout=10)
    assert r.status_code == 200
    assert r.json()["ray"] == {"reachable": True, "embedded": True}


def _bad_requests() -> list[Any]:
    spec = smallest_quickstart()
    bad_value = copy.deepcopy(spec)
    bad_value["base"]["prune"]["sparsity"] = 1.5
    unknown_key = {**copy.deepcopy(spec), "bogus": 1}
    outside = copy.deepcopy(spec)
    outside["base"]["data"]["root"] = "../../etc"
    outside_storage = {**copy.deepcopy(spec), "storage": "/tmp"}
    yaml_ct = {"Content-Type": "application/yaml"}
    json_ct = {"Content-Type": "application/json"}
    p = pytest.param
    return [
        p(
            "POST",
            "/jobs",
            {"content": b"name: x\nbase: {data: [1,", "headers": yaml_ct},
            422,
            "malformed_yaml",
            "body",
            id="malformed-yaml",
        ),
        p(
            "POST",
            "/jobs",
            {"content": b'{"name": "x", "base": {', "headers": json_ct},
            422,
            "malformed_json",
            "body",
            id="malformed-json",
        ),
        p(
            "POST",
            "/jobs",
            {"content": b"!!python/object/apply:os.system ['touch /tmp/pwned']", "headers": yaml_ct},
            422,
            "malformed_yaml",
            "body",
            id="yaml-python-tag",
        ),
        p("POST", "/jobs", {"content": b"", "headers": yaml_ct}, 422, "empty_body", "body", id="empty-body"),
        p(
            "POST",
            "/jobs",
            {"content": b"- a\n- b\n", "headers": yaml_ct},
            422,
            "invalid_spec",
            "spec",
            id="not-a-mapping",
        ),
        p(
            "POST",
            "/jobs",
            {"content": spec_yaml(bad_value), "headers": yaml_ct},
            422,
            "invalid_spec",
            "base.prune.sparsity",
            id="invalid-value",
        ),
        p(
            "POST",
            "/jobs",
            {"content": json.dumps(unknown_key).encode(), "headers": json_ct},
            422,
            "invalid_spec",
            "bogus",
            id="unknown-key",
        ),
        p(
            "POST",
            "/jobs",
            {"content": spec_yaml(outside), "headers": yaml_ct},
            422,
            "path_outside_data_dir",
            "base.data.root",
            id="path-escape",
        ),
        p(
            "POST",
            "/jobs",
            {"content": spec_yaml(outside_storage), "headers": yaml_ct},
            422,
            "path_outside_data_dir",
            "storage",
            id="storage-outside",
        ),
        p(
            "POST",
            "/jobs",
            {"content": b"a: " + b"x" * BODY_CAP, "headers": yaml_ct},
            413,
            "body_too_large",
            None,
            id="body-over-cap",
        ),
        p(
            "POST",
            "/jobs",
            {"content": spec_yaml(spec), "headers": {**yaml_ct, "Authorization": ""}},
            401,
            "unauthorized",
            "header.authorization",
            id="missing-token",
        ),
        p(
            "POST",
            "/jobs",
            {"content": spec_yaml(spec), "headers": {**yaml_ct, "Authorization": "Bearer nope"}},
            401,
            "unauthorized",
            "header.authorization",
            id="wrong-token",
        ),
        p(
            "GET",
            "/jobs",
            {"headers": {"Authorization": "Basic dXNlcjpwYXNz"}},
            401,
            "unauthorized",
            "header.authorization",
            id="basic-auth",
        ),
        p("GET", "/jobs/s2ap-0000000000000000", {}, 404, "job_not_found", "path.job_id", id="unknown-job"),
        p(
            "POST",
            "/jobs/s2ap-0000000000000000/cancel",
            {},
            404,
            "job_not_found",
            "path.job_id",
            id="cancel-unknown",
        ),
        p(
            "GET",
            "/jobs/s2ap-0000000000000000/results",
            {},
            404,
            "job_not_found",
            "path.job_id",
            id="results-unknown",
        ),
        p(
            "GET",
            "/jobs/s2ap-0000000000000000/logs",
            {},
            404,
            "job_not_found",
            "path.job_id",
            id="logs-unknown",
        ),
        p("GET", "/jobs", {"params": {"limit": 0}}, 422, "invalid_request", "query.limit", id="limit-zero"),
        p(
            "GET",
            "/jobs",
            {"params": {"limit": 10_000}},
            422,
            "invalid_request",
            "query.limit",
            id="limit-big",
        ),
        p(
            "GET",
            "/jobs",
            {"params": {"cursor": "abc"}},
            422,
            "invalid_request",
            "query.cursor",
            id="bad-cursor",
        ),
        p(
            "GET",
            "/jobs",
            {"params": {"status": "done"}},
            422,
            "invalid_request",
            "query.status",
            id="bad-status",
        ),
        p("GET", "/nowhere", {}, 404, "not_found", None, id="unknown-route"),
    ]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "code", "field"), _bad_requests())
def test_bad_input_gets_a_json_error_and_creates_nothing(
    client: httpx.Client,
    data_dir: Path,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    code: str,
    field: str | None,
) -> None:
    rows, dirs = db_rows(data_dir), job_dirs(data_dir)
    headers = kwargs.pop("headers", {})
    request = client.build_request(method, path, **kwargs)
    for key, value in headers.items():
        if value == "":
            del request.headers[key]
        else:
            request.headers[key] = value
    r = client.send(request)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert error["field"] == field
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"
    assert db_rows(data_dir) == rows
    assert job_dirs(data_dir) == dirs
    assert not Path("/tmp/pwned").exists()


def test_results_before_any_exist_then_cancel_a_running_job(client: httpx.Client, data_dir: Path) -> None:
    r = client.post(
        "/jobs",
        content=spec_yaml(smallest_quickstart("to-cancel")),
        headers={"Content-Type": "application/yaml"},
    )
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    assert r.headers["location"] == f"/jobs/{job_id}"

    early = client.get(f"/jobs/{job_id}/results", params={"table": "trials"})
    assert early.status_code == 409
    assert early.json()["error"]["code"] == "results_not_ready"

    wait_for(client, job_id, {"running"}, timeout_s=240)
    assert ray_job_status(data_dir, job_id) == "RUNNING"
    r = client.post(f"/jobs/{job_id}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"
    assert r.json()["finished_at"] is not None
    assert ray_job_status(data_dir, job_id) == "STOPPED"  # cancel waits for Ray to confirm

    again = client.post(f"/jobs/{job_id}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    time.sleep(1.5)  # a few poller rounds: a terminal state is sticky
    assert client.get(f"/jobs/{job_id}").json()["status"] == "cancelled"
    assert client.get(f"/jobs/{job_id}/results", params={"table": "epochs"}).status_code == 409


def test_duplicate_submission_id_is_detected_not_an_error(data_dir: Path) -> None:
    from service.cluster.ray_cluster import RayJobRunner

    head = json.loads((data_dir / "ray" / "head.json").read_text())
    runner = RayJobRunner(head["dashboard_url"], token=head_token(data_dir))
    with sqlite3.connect(f"file:{data_dir / 'jobs.sqlite3'}?mode=ro", uri=True) as db:
        job_id = db.execute("SELECT id FROM jobs ORDER BY seq LIMIT 1").fetchone()[0]
    before = runner.state(job_id)
    assert before is not None
    assert runner.submit(job_id, "echo must-not-run") is False  # found by asking first

    # Two submitters racing both see "unknown" first: Ray then refuses the second with an
    # HTTP 500 wrapped in a RuntimeError, which must read as "already there", not an error.
    real_state, asked = runner.state, []

    def blind_once(jid: str) -> Any:
        asked.append(jid)
        return None if len(asked) == 1 else real_state(jid)

    runner.state = blind_once  # type: ignore[method-assign]
    assert runner.submit(job_id, "echo must-not-run") is False
    runner.state = real_state  # type: ignore[method-assign]
    assert runner.state(job_id) == before


@pytest.fixture(scope="module")
def quick_job(service: ServiceProcess) -> dict[str, Any]:
    """The smallest quickstart, submitted once with an Idempotency-Key."""
    with service.client() as c:
        body = spec_yaml(smallest_quickstart())
        headers = {"Content-Type": "application/yaml", "Idempotency-Key": "quick-1"}
        first = c.post("/jobs", content=body, headers=headers)
        assert first.status_code == 201, first.text
        retry = c.post("/jobs", content=body, headers=headers)
        assert retry.status_code == 200 and retry.json()["id"] == first.json()["id"]
        assert retry.headers["idempotent-replayed"] == "true"
        other = c.post("/jobs", content=body + b"\n# changed\n", headers=headers)
        assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
        return dict(first.json())


def test_restart_mid_job_keeps_the_job_and_its_outcome(
    service: ServiceProcess, data_dir: Path, quick_job: dict[str, Any]
) -> None:
    job_id = quick_job["id"]
    with service.client() as c:
        running = wait_for(c, job_id, {"running", "succeeded"}, timeout_s=240)
    assert running["status"] == "running", "the job ended before the restart: nothing tested"

    service.stop(signal.SIGKILL)  # a crash: no shutdown hook runs
    assert ray_job_status(data_dir, job_id) in ("RUNNING", "SUCCEEDED")  # the job lives on the cluster
    service.start()
    with service.client() as c:
        after = c.get(f"/jobs/{job_id}").json()
        assert after["id"] == job_id and after["status"] in ("running", "succeeded")
        assert after["submitted_at"] == quick_job["submitted_at"]
        assert after["trials"]["total"] == quick_job["trials"]["total"]
        done = wait_for(c, job_id, {"succeeded", "failed", "cancelled"})
    assert done["status"] == "succeeded", done


def test_job_succeeds_and_both_tables_load_in_pandas(
    client: httpx.Client, data_dir: Path, quick_job: dict[str, Any]
) -> None:
    job_id = quick_job["id"]
    job = wait_for(client, job_id, {"succeeded", "failed", "cancelled"})
    assert job["status"] == "succeeded", job
    assert job["started_at"] and job["finished_at"] and job["error"] is None
    total = job["trials"]["total"]
    assert total == 2  # the quickstart grid (S2AP off, on) x 1 sample
    assert job["trials"]["done"] == total
    best = job["best"]
    assert best is not None and best["metric"] == "final_val_pgd_acc"
    assert set(best["config"]) == {"s2ap.enabled", "s2ap.gamma", "s2ap.warmup_epochs"}

    trials_r = client.get(f"/jobs/{job_id}/results", params={"table": "trials"})
    assert trials_r.status_code == 200
    assert trials_r.headers["content-type"] == "application/vnd.apache.parquet"
    trials = pd.read_parquet(io.BytesIO(trials_r.content))
    assert len(trials) == total and set(trials["status"]) <= {"ok", "stopped", "error"}
    assert best["trial_id"] in set(trials["trial_id"])
    epochs = pd.read_parquet(io.BytesIO(client.get(f"/jobs/{job_id}/results?table=epochs").content))
    assert set(epochs["trial_id"]) == set(trials["trial_id"])
    assert {"pretrain", "prune", "finetune"} <= set(epochs["phase"])

    detail = client.get(f"/jobs/{job_id}").json()
    assert detail["spec"]["name"] == "quickstart"
    # The spec names where the search wrote (the job's folder), not the submitted runs/tune.
    assert detail["spec"]["storage"] == str(data_dir.resolve() / "jobs" / job_id / "search")
    logs = client.get(f"/jobs/{job_id}/logs", params={"lines": 50})
    assert logs.status_code == 200 and logs.headers["content-type"].startswith("text/plain")
    assert "trials" in logs.text
    whole = client.get(f"/jobs/{job_id}/logs", params={"lines": 10_000}).text
    assert "<data>/jobs/" in whole  # Ray's entrypoint line, with the data directory's short name
    assert str(data_dir.resolve()) not in whole and sys.executable not in whole

    page = client.get("/jobs", params={"limit": 1}).json()
    assert page["items"][0]["id"] == job_id  # newest first
    older = client.get("/jobs", params={"limit": 1, "cursor": page["next_cursor"]}).json()
    assert older["items"][0]["name"] == "to-cancel"
    assert client.get("/jobs", params={"status": "cancelled"}).json()["items"][0]["name"] == "to-cancel"
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 409


def test_a_job_whose_only_trial_fails_ends_failed_with_the_trials_error(client: httpx.Client) -> None:
    spec = smallest_quickstart("all-fail")
    spec["grid"] = {"s2ap.enabled": [False]}  # one cell, one trial
    _set(spec["base"], "finetune.lr", 1.0e30)  # its loss turns NaN in finetuning
    r = client.post("/jobs", content=spec_yaml(spec), headers={"Content-Type": "application/yaml"})
    assert r.status_code == 201, r.text
    job = wait_for(client, r.json()["id"], {"succeeded", "failed", "cancelled"})
    assert job["status"] == "failed", job
    assert job["trials"]["errored"] == 1 and job["trials"]["ok"] == 0
    assert job["error"].startswith("error: no trial finished: 1 of 1 trials failed; first error (trial ")
    assert "diverged" in job["error"]


def test_a_fresh_machine_gets_its_own_ray_token(
    service: ServiceProcess, data_dir: Path, fresh_home: Path, quick_job: dict[str, Any]
) -> None:
    """No token anywhere: the service made one in its data dir (owner-only), started the head
    with it, and its job client sends it (jobs were submitted, their logs come from Ray); the
    user's home is left untouched."""
    token = head_token(data_dir)
    assert token.path == data_dir.resolve() / "ray" / "auth_token"
    assert token.path.stat().st_mode & 0o777 == 0o600
    assert len(token.value) == 64
    assert not (fresh_home / ".ray").exists()
    record = EmbeddedRayHead(data_dir / "ray").record()
    assert record is not None
    environ = Path(f"/proc/{record.pid}/environ").read_bytes().split(b"\0")
    assert f"RAY_AUTH_TOKEN_PATH={token.path}".encode() in environ
    assert b"RAY_AUTH_MODE=token" in environ
    jobs = f"{record.dashboard_url}/api/jobs/"
    assert httpx.get(jobs, timeout=10).status_code == 401  # the head does check tokens
    assert httpx.get(jobs, headers=token.headers(), timeout=10).status_code == 200
    with service.client() as c:  # logs are read from Ray by the service's own job client
        logs = c.get(f"/jobs/{quick_job['id']}/logs")
    assert logs.status_code == 200 and "trials" in logs.text


def test_a_dead_embedded_head_is_replaced(service: ServiceProcess, data_dir: Path) -> None:
    """Ray's head crashing (here: killed) must not leave the service without a cluster."""
    old = json.loads((data_dir / "ray" / "head.json").read_text())
    os.kill(old["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 300
    health: dict[str, Any] = {}
    while time.monotonic() < deadline:
        health = httpx.get(f"{service.url}/healthz", timeout=10).json()
        try:
            record = json.loads((data_dir / "ray" / "head.json").read_text())
        except (OSError, ValueError):  # between the old record's removal and the new one
            record = {}
        if health["ray"]["reachable"] and record.get("pid") not in (None, old["pid"]):
            break
        time.sleep(1)
    assert health["ray"]["reachable"], service.log()
    assert session_members(old["pid"]) == []  # nothing of the dead head lingers
