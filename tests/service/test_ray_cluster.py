"""The service's one Ray module: where the cluster token comes from (and that a fresh machine
gets one without touching the user's home), and the environment the embedded head runs in."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import httpx
import pytest

from service.cluster.ray_cluster import ClusterToken, find_token, head_environment, own_token, read_token
from service.cluster.ray_head import EmbeddedRayHead, HeadRecord, session_members


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def ray_token_in(home: Path, value: str = "a" * 64) -> Path:
    path = home / ".ray" / "auth_token"
    path.parent.mkdir()
    path.write_text(value + "\n")
    return path


def test_a_fresh_machine_has_no_token(home: Path) -> None:
    assert find_token({"HOME": str(home)}) is None
    assert find_token({"HOME": str(home), "RAY_AUTH_TOKEN": " ", "RAY_AUTH_TOKEN_PATH": "/nowhere"}) is None


def test_tokens_are_found_in_rays_order(home: Path, tmp_path: Path) -> None:
    in_home = ray_token_in(home)
    named = tmp_path / "named"
    named.write_text("b" * 64)
    env = {"HOME": str(home)}
    assert find_token(env) == ClusterToken("a" * 64, in_home)
    assert find_token({**env, "RAY_AUTH_TOKEN_PATH": str(named)}) == ClusterToken("b" * 64, named)
    from_var = find_token({**env, "RAY_AUTH_TOKEN_PATH": str(named), "RAY_AUTH_TOKEN": "c" * 64})
    assert from_var == ClusterToken("c" * 64, None)


def test_without_a_token_the_service_makes_its_own_outside_home(home: Path, tmp_path: Path) -> None:
    state = tmp_path / "data" / "ray"
    env = {"HOME": str(home)}
    token = own_token(state, env)
    assert token.path == state / "auth_token"
    assert stat.S_IMODE(token.path.stat().st_mode) == 0o600
    assert len(token.value) == 64 and int(token.value, 16) >= 0
    assert list(home.iterdir()) == []  # never written to the user's home
    assert own_token(state, env) == token  # made once, then reused (a restarted head keeps it)
    assert [p.name for p in state.iterdir()] == ["auth_token"]  # no temporary file left


def test_an_existing_token_is_honoured(home: Path, tmp_path: Path) -> None:
    in_home = ray_token_in(home)
    state = tmp_path / "state"
    assert own_token(state, {"HOME": str(home)}).path == in_home
    assert own_token(state, {"HOME": str(home), "RAY_AUTH_TOKEN": "v" * 64}).value == "v" * 64
    assert not state.exists()


def test_the_head_runs_in_token_mode_with_the_token_file() -> None:
    token = ClusterToken("t" * 64, Path("/data/ray/auth_token"))
    base = {"RAY_ADDRESS": "http://elsewhere:8265", "RAY_AUTH_TOKEN": "", "PATH": "/bin"}
    env = head_environment(token, base)
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN_PATH"] == "/data/ray/auth_token"
    assert "RAY_AUTH_TOKEN" not in env and "RAY_ADDRESS" not in env and env["PATH"] == "/bin"
    from_var = head_environment(ClusterToken("v" * 64), {"RAY_AUTH_TOKEN": "v" * 64})
    assert from_var["RAY_AUTH_TOKEN"] == "v" * 64 and "RAY_AUTH_TOKEN_PATH" not in from_var
    assert "t" * 64 not in repr(token)  # a logged token object does not leak the secret


def test_a_record_from_before_tokens_were_kept_still_loads(tmp_path: Path) -> None:
    head = EmbeddedRayHead(tmp_path)
    old = {
        "pid": 1,
        "dashboard_url": "u",
        "gcs_address": "g",
        "temp_dir": "/t",
        "num_cpus": 4,
        "started_at": 0,
    }
    head.record_path.write_text(json.dumps(old))
    assert head.record() == HeadRecord(**old, token_path=None)
    (tmp_path / "tok").write_text("x" * 64)
    assert HeadRecord(**old, token_path=str(tmp_path / "tok")).token() == read_token(tmp_path / "tok")


@pytest.mark.ray
def test_a_real_head_uses_the_token_in_home(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("ray")
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    in_home = ray_token_in(home, "e" * 64)
    head = EmbeddedRayHead(tmp_path / "ray", num_cpus=1, autogroup_nice=0)
    record = head.ensure()
    try:
        assert record.token_path == str(in_home)
        assert not (tmp_path / "ray" / "auth_token").exists()
        jobs = f"{record.dashboard_url}/api/jobs/"
        assert httpx.get(jobs, timeout=10).status_code == 401
        assert httpx.get(jobs, headers={"Authorization": "Bearer " + "e" * 64}, timeout=10).status_code == 200
    finally:
        head.stop()
    assert session_members(record.pid) == []


HOLD_WORKERS = """
import ray, time
ray.init()

@ray.remote
class Holder:
    def ping(self):
        return 1

holders = [Holder.remote() for _ in range(2)]
ray.get([h.ping.remote() for h in holders])
print("workers up", flush=True)
time.sleep(300)
"""


@pytest.mark.ray
def test_the_embedded_head_listens_on_loopback_only(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every socket of the head's process tree during a job (GCS, raylet, dashboard and its
    agents, the job's driver and its workers) is bound to a loopback address."""
    import ipaddress
    import shlex
    import sys
    import time

    pytest.importorskip("ray")
    from service.cluster.ray_cluster import RayJobRunner
    from tests.helpers.service import listening_sockets

    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    head = EmbeddedRayHead(tmp_path / "ray", num_cpus=2, autogroup_nice=0)
    record = head.ensure()
    try:
        runner = RayJobRunner(record.dashboard_url, token=record.token())
        assert runner.submit("sockets-1", shlex.join([sys.executable, "-c", HOLD_WORKERS]))
        deadline = time.monotonic() + 240
        while "workers up" not in runner.logs("sockets-1"):
            state = runner.state("sockets-1")
            assert state is not None and not state.terminal, runner.logs("sockets-1")
            assert time.monotonic() < deadline, runner.logs("sockets-1")
            time.sleep(0.5)
        sockets = listening_sockets(record.pid)
        runner.stop("sockets-1")
    finally:
        head.stop()
    names = {name for _, name, _, _ in sockets}
    assert len(sockets) > 10 and {"gcs_server", "raylet"} <= names, sockets  # the walk saw the node

    def loopback(ip: str) -> bool:
        address = ipaddress.ip_address(ip)
        mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
        return address.is_loopback or (mapped is not None and mapped.is_loopback)

    open_ = [s for s in sockets if not loopback(s[2])]
    assert open_ == [], f"{len(open_)} of {len(sockets)} sockets listen beyond loopback: {open_}"


def test_the_head_environment_is_an_allowlist() -> None:
    base = {
        "PATH": "/bin",
        "HOME": "/home/u",
        "PYTHONPATH": "/src",
        "OMP_NUM_THREADS": "1",
        "RAY_AUTH_TOKEN_PATH": "/t",
        "S2AP_API_TOKEN": "api-secret",
        "S2AP_ALLOWED_MODEL_MODULES": "mylab",
        "S2AP_STORAGE": "s3://bucket/s2ap",
        "AWS_SECRET_ACCESS_KEY": "aws-secret",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "GITHUB_TOKEN": "gh-secret",
        "DATABASE_URL": "postgres://u:p@db/x",
    }
    token = ClusterToken("t" * 64, Path("/data/ray/auth_token"))
    local = head_environment(token, base)
    assert {"PATH", "HOME", "PYTHONPATH", "OMP_NUM_THREADS", "RAY_AUTH_TOKEN_PATH"} <= set(local)
    assert not {"S2AP_API_TOKEN", "S2AP_ALLOWED_MODEL_MODULES", "GITHUB_TOKEN", "DATABASE_URL"} & set(local)
    assert not any(k.startswith(("AWS_", "S2AP_")) for k in local)  # no object store set: none of it
    on_store = head_environment(token, base, storage_location="s3://bucket/s2ap")
    assert (
        on_store["AWS_SECRET_ACCESS_KEY"] == "aws-secret" and on_store["S2AP_STORAGE"] == "s3://bucket/s2ap"
    )
    assert "S2AP_API_TOKEN" not in on_store and "GITHUB_TOKEN" not in on_store
    assert "AWS_SECRET_ACCESS_KEY" not in head_environment(token, base, storage_location="/srv/results")


SHOW_ENV = """
import os, ray, time
ray.init()

@ray.remote
class Holder:
    def seen(self):
        return os.environ.get("S2AP_API_TOKEN")

holders = [Holder.remote() for _ in range(2)]
print("seen=%s %s" % (ray.get([h.seen.remote() for h in holders]), os.environ.get("S2AP_API_TOKEN")))
print("ready:", 6 * 7, flush=True)  # the log repeats the script: look for what only running it prints
time.sleep(300)
"""


def _descendants(root: int) -> set[int]:
    """``root``, every process below it (by parent id), and its session's members."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[-1].split()[1])
    found = {root, *session_members(root)}
    while True:
        more = {pid for pid, parent in parents.items() if parent in found} - found
        if not more:
            return found
        found |= more


@pytest.mark.slow
@pytest.mark.ray
def test_no_ray_process_of_a_running_job_holds_the_api_token(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service's token and other secrets of its environment are in no process of the
    embedded head while a job runs: not the daemons, not the job's driver, not its workers."""
    import shlex
    import sys
    import time

    pytest.importorskip("ray")
    from service.cluster.ray_cluster import RayJobRunner

    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    secret = "api-token-that-must-stay-in-the-service-91c2"
    monkeypatch.setenv("S2AP_API_TOKEN", secret)
    monkeypatch.setenv("SOME_OTHER_SECRET", secret + "-other")
    head = EmbeddedRayHead(tmp_path / "ray", num_cpus=2, autogroup_nice=0)
    record = head.ensure()
    environs: dict[int, bytes] = {}
    try:
        runner = RayJobRunner(record.dashboard_url, token=record.token())
        assert runner.submit("env-1", shlex.join([sys.executable, "-c", SHOW_ENV]))
        deadline = time.monotonic() + 240
        while "ready: 42" not in runner.logs("env-1"):
            state = runner.state("env-1")
            assert state is not None and not state.terminal, runner.logs("env-1")
            assert time.monotonic() < deadline, runner.logs("env-1")
            time.sleep(0.5)
        for pid in _descendants(record.pid):
            try:
                environs[pid] = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
        log_text = runner.logs("env-1")
        runner.stop("env-1")
    finally:
        head.stop()
    drivers = [pid for pid, env in environs.items() if b"RAY_JOB_ID=" in env or b"RAY_SUBMISSION_ID" in env]
    assert len(environs) > 10 and drivers, f"the walk saw {len(environs)} processes"
    holding = [pid for pid, env in environs.items() if secret.encode() in env]
    assert holding == [], f"{len(holding)} of {len(environs)} Ray processes hold the API token"
    assert "seen=[None, None] None" in log_text  # neither the workers nor the driver see it
