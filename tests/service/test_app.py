"""The app without a cluster (a fake runner): startup rules, auth, the OpenAPI schema, and
the HTTP shape of results, over a real uvicorn server on a loopback port."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from service import Settings, create_app
from service.__main__ import main as service_main
from service.app import DataDirBusy, open_services
from service.settings import SettingsError
from tests.helpers.service import FakeRunner, ThreadedServer
from tests.helpers.specs import tiny_search

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "app-test-token"
SPEC = tiny_search()


@pytest.fixture
def fake() -> FakeRunner:
    return FakeRunner()


@pytest.fixture
def server(tmp_path: Path, fake: FakeRunner) -> Iterator[ThreadedServer]:
    app = create_app(Settings(api_token=TOKEN, data_dir=tmp_path, poll_interval_s=0.1), runner=fake)
    with ThreadedServer(app) as srv:
        yield srv


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_no_token_means_no_start_unless_local_only(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="S2AP_API_TOKEN"):
        Settings.from_env({"S2AP_DATA_DIR": str(tmp_path)})
    assert Settings.from_env({"S2AP_DATA_DIR": str(tmp_path)}, local_only=True).auth_required is False
    with pytest.raises(SettingsError, match="S2AP_PAGE_SIZE"):
        Settings.from_env({"S2AP_API_TOKEN": "x", "S2AP_PAGE_SIZE": "lots"})
    with pytest.raises(SettingsError, match="RAY_ADDRESS"):
        Settings.from_env({"S2AP_API_TOKEN": "x", "RAY_ADDRESS": "ray-head:6379"})


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ([], {}, "S2AP_API_TOKEN is not set"),
        (["--local-only", "--host", "0.0.0.0"], {}, "loopback only"),
        (["--port", "0"], {"S2AP_API_TOKEN": "x"}, "--port"),
    ],
)
def test_cli_refuses_unsafe_starts(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    # The CLI's main() in this process; test_the_command_refuses_to_start_without_a_token runs it.
    for key in list(os.environ):
        if key.startswith(("S2AP_", "RAY_ADDRESS")):
            monkeypatch.delenv(key)
    for key, value in {"S2AP_DATA_DIR": str(tmp_path), **env}.items():
        monkeypatch.setenv(key, value)

    def serve(*_: object, **__: object) -> None:
        raise AssertionError("the service started")

    monkeypatch.setattr("uvicorn.run", serve)
    status = service_main(args)
    err = capsys.readouterr().err
    assert status == 2
    assert message in err and err.startswith("error: ") and err.strip().count("\n") == 0, err


@pytest.mark.slow  # a python -m service subprocess
def test_the_command_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("S2AP_", "RAY_ADDRESS"))}
    done = subprocess.run(
        [sys.executable, "-m", "service"],
        env={**base_env, "S2AP_DATA_DIR": str(tmp_path)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "S2AP_API_TOKEN is not set" in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr
    assert "Traceback" not in done.stderr


def test_local_only_without_token_serves_without_auth(tmp_path: Path, fake: FakeRunner) -> None:
    app = create_app(Settings(data_dir=tmp_path, local_only=True), runner=fake)
    with ThreadedServer(app) as srv:
        assert httpx.get(f"{srv.url}/jobs").status_code == 200


def test_one_service_per_data_dir(tmp_path: Path, fake: FakeRunner, server: ThreadedServer) -> None:
    del server  # holds the lock on its own tmp_path
    settings = Settings(api_token=TOKEN, data_dir=tmp_path)
    with pytest.raises(DataDirBusy):
        open_services(settings, fake)


def test_every_endpoint_is_in_the_schema_and_needs_the_token(server: ThreadedServer) -> None:
    schema = httpx.get(f"{server.url}/openapi.json", headers=auth()).json()
    ops = {(m.upper(), p): op for p, item in schema["paths"].items() for m, op in item.items()}
    assert set(ops) == {
        ("GET", "/healthz"),
        ("POST", "/jobs"),
        ("GET", "/jobs"),
        ("GET", "/jobs/{job_id}"),
        ("POST", "/jobs/{job_id}/cancel"),
        ("GET", "/jobs/{job_id}/results"),
        ("GET", "/jobs/{job_id}/logs"),
    }
    for key, op in ops.items():
        assert ("security" in op) == (key != ("GET", "/healthz")), key
    body = ops[("POST", "/jobs")]["requestBody"]["content"]
    assert {"application/json", "application/yaml"} <= set(body)
    assert (
        "application/vnd.apache.parquet"
        in ops[("GET", "/jobs/{job_id}/results")]["responses"]["200"]["content"]
    )


def test_submit_follow_and_fetch_results_over_http(
    server: ThreadedServer, fake: FakeRunner, tmp_path: Path
) -> None:
    pd = pytest.importorskip("pandas")
    from s2ap import results
    from s2ap.tune.results import epochs_schema, predictions_schema, to_table

    with httpx.Client(base_url=server.url, headers=auth(), timeout=30) as c:
        r = c.post("/jobs", json=SPEC)
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        assert c.get(f"/jobs/{job_id}/results", params={"table": "epochs"}).status_code == 409
        detail = c.get(f"/jobs/{job_id}").json()
        rows = [
            {
                "trial_id": "t1",
                "search": "tiny",
                "grid_cell": 0,
                "global_epoch": 1,
                "search_epoch": 0,
                "config_hash": "h",
                "seed": 0,
                "code_version": "v",
                "phase": "pretrain",
                "epoch": 0,
            }
        ]
        # The stored spec names where the search writes: its storage, then its name.
        out = Path(detail["spec"]["storage"]) / detail["spec"]["name"] / "epochs.parquet"
        results.write_table(to_table(rows, epochs_schema()), out)
        r = c.get(f"/jobs/{job_id}/results", params={"table": "epochs"})
        assert r.status_code == 200 and r.headers["content-type"] == "application/vnd.apache.parquet"
        assert list(pd.read_parquet(io.BytesIO(r.content))["trial_id"]) == ["t1"]
        # The per-point outcomes download the same way.
        assert c.get(f"/jobs/{job_id}/results", params={"table": "predictions"}).status_code == 409
        point = {"trial_id": "t1", "search": "tiny", "grid_cell": 0, "config_hash": "h", "seed": 0}
        point |= {"code_version": "v", "index": 0, "label": 3, "clean": True, "pgd": False}
        results.write_table(to_table([point], predictions_schema()), out.parent / "predictions.parquet")
        r = c.get(f"/jobs/{job_id}/results", params={"table": "predictions"})
        assert r.status_code == 200 and list(pd.read_parquet(io.BytesIO(r.content))["pgd"]) == [False]
        assert c.get(f"/jobs/{job_id}/logs").text == f"fake log of {job_id}\n"
        fake.finish(job_id)
        for _ in range(100):
            if c.get(f"/jobs/{job_id}").json()["status"] == "succeeded":
                break
            time.sleep(0.05)
        assert c.get(f"/jobs/{job_id}").json()["status"] == "succeeded"
        yaml_r = c.post("/jobs", content=yaml.safe_dump(SPEC), headers={"Content-Type": "application/yaml"})
        assert yaml_r.status_code == 201


def test_healthz_reports_an_unreachable_cluster_without_failing(
    server: ThreadedServer, fake: FakeRunner
) -> None:
    fake.reachable = False
    r = httpx.get(f"{server.url}/healthz")
    assert r.status_code == 200 and r.json()["ray"]["reachable"] is False
