"""The service's one door to Ray: every ``import ray`` and every Ray-specific detail lives here.

* :class:`ClusterToken`, :func:`find_token`, :func:`own_token`: the token Ray's token
  authentication wants, found where Ray looks for it or made for the embedded head.
* :class:`RayJobRunner`: the :class:`~service.cluster.runner.Runner` on Ray's job submission API.
* :func:`head_launch`, :func:`head_environment`, :func:`is_head_command`, :func:`head_ready`:
  the ``ray start --head`` the embedded head runs, and how to tell it is up.

The service speaks Ray's job submission API (the dashboard's HTTP API), never ``ray.init``:
it holds no Ray driver and runs no training, and jobs live on the cluster, so they outlive
the service. Ray behaviours that shape this module (seen with Ray 2.60):

* token authentication: ``ray start --head`` with ``RAY_AUTH_MODE=token`` dies unless a
  token is found (``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH`` names, or
  ``~/.ray/auth_token``), and it never creates one. A fresh machine has none, so the
  service makes its own for the embedded head (``DATA_DIR/ray/auth_token``, mode 0600,
  never in the user's home) and hands the head its path. Ray's clients read the token
  through a process-wide cache keyed on ``RAY_AUTH_MODE`` at import time; the service
  passes it as an explicit ``Authorization`` header instead, which Ray's clients keep.
* a duplicate submission id is refused with an HTTP 500 wrapped in a ``RuntimeError``.
  :meth:`RayJobRunner.submit` asks for the job first and matches the refusal, so
  resubmitting a job (reconciling after a crash) is a no-op instead of an error.
* ``RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0`` skips a 30 s drain (meant for Serve) when the
  head is stopped; every port of the head is given, so it never collides with another Ray.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from s2ap.errors import error_line
from s2ap.io import atomic_write
from service.cluster.head_env import allowed_environment
from service.cluster.runner import ClusterUnavailable, RayJobState

log = logging.getLogger(__name__)

TOKEN_FILE = "auth_token"
# `ray start --node-ip-address 127.0.0.1` alone is not loopback: Ray swaps a loopback node
# address for the machine's outward one, and a node not on loopback serves on every
# interface. Ray keeps loopback where it runs no multi-node clusters (macOS, Windows), and
# this variable says so on Linux too; every process of the node inherits it.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
OBJECT_STORE_BYTES = 1 << 30  # trials exchange files, not objects: keep /dev/shm for others
_PORT_FLAGS = (
    "--port",
    "--dashboard-port",
    "--ray-client-server-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
    "--node-manager-port",
    "--object-manager-port",
)


# --------------------------------------------------------------------------- the token


@dataclass(frozen=True)
class ClusterToken:
    """A Ray cluster token: its value, and the file it lives in (None: ``RAY_AUTH_TOKEN``)."""

    value: str = field(repr=False)
    path: Path | None = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.value}"}

    def environment(self) -> dict[str, str]:
        """What a Ray process needs to run in token mode with this token."""
        env = {"RAY_AUTH_MODE": "token"}
        if self.path is not None:
            env["RAY_AUTH_TOKEN_PATH"] = str(self.path)
        return env


def read_token(path: str | Path) -> ClusterToken | None:
    path = Path(path).expanduser()
    try:
        value = path.read_text().strip()
    except OSError:
        return None
    return ClusterToken(value, path) if value else None


def find_token(environ: Mapping[str, str] | None = None) -> ClusterToken | None:
    """The token a Ray client on this machine would use, looked up in Ray's own order:
    ``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH`` names, ``~/.ray/auth_token``."""
    env = os.environ if environ is None else environ
    if env.get("RAY_AUTH_TOKEN", "").strip():
        return ClusterToken(env["RAY_AUTH_TOKEN"].strip())
    if env.get("RAY_AUTH_TOKEN_PATH") and (token := read_token(env["RAY_AUTH_TOKEN_PATH"])):
        return token
    home = env.get("HOME")
    return read_token(Path(home or Path.home()) / ".ray" / TOKEN_FILE)


def own_token(state_dir: Path, environ: Mapping[str, str] | None = None) -> ClusterToken:
    """An existing token (:func:`find_token`) or the service's own in ``state_dir``, made once:
    32 random bytes in hex (what ``ray get-auth-token --generate`` makes), readable by the
    owner only. Nothing is ever written to the user's home."""
    found = find_token(environ)
    if found is not None:
        return found
    path = Path(state_dir) / TOKEN_FILE
    existing = read_token(path)
    if existing is not None:
        return existing

    def write(tmp: Path) -> None:
        tmp.chmod(0o600)  # before the secret goes in
        tmp.write_text(secrets.token_hex(32))

    atomic_write(path, write)
    log.info("no Ray token on this machine: made one for the embedded head in %s", path)
    token = read_token(path)
    assert token is not None
    return token


# --------------------------------------------------------------------------- the job client


def _is_not_found(exc: BaseException) -> bool:
    text = str(exc)
    return "status code 404" in text or "does not exist" in text


def _is_duplicate(exc: BaseException) -> bool:
    return "already exists" in str(exc)


def _reason(exc: BaseException) -> str:
    # Ray wraps server tracebacks: the last line is the actual reason.
    return error_line(exc) or type(exc).__name__


def _headers(token: ClusterToken | None) -> dict[str, str]:
    return {"Content-Type": "application/json", **(token.headers() if token else {})}


def _job_client(address: str, token: ClusterToken | None) -> Any:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address, headers=_headers(token))


def alive_nodes(address: str, token: ClusterToken | None, timeout_s: int = 10) -> list[dict[str, float]]:
    """Total resources of each alive node, through Ray's state API."""
    from ray.util.state import StateApiClient
    from ray.util.state.common import ListApiOptions, StateResource

    client = StateApiClient(address=address, headers=_headers(token))
    options = ListApiOptions(timeout=timeout_s, filters=[("state", "=", "ALIVE")])
    found = client.list(StateResource.NODES, options=options, raise_on_missing_output=False)
    return [{k: float(v) for k, v in (n.resources_total or {}).items()} for n in found]


def gcs_healthy(address: str, timeout_s: float = 2.0) -> bool:
    """The dashboard's public health endpoint: answers without the token, and fast."""
    try:
        r = httpx.get(f"{address}/api/gcs_healthz", timeout=timeout_s)
    except httpx.HTTPError:
        return False
    return r.status_code == 200


class RayJobRunner:
    """Ray job submission client with the service's error semantics.

    ``address`` is the dashboard URL (``http://127.0.0.1:8265``); ``token`` the cluster's
    (default: :func:`find_token`, for a cluster the service did not start). The client is
    created lazily and rebuilt after a connection failure, so a cluster that comes up after
    the service (docker compose) is picked up without a restart.
    """

    def __init__(
        self,
        address: str,
        *,
        token: ClusterToken | None = None,
        ping_timeout_s: float = 2.0,
        nodes_ttl_s: float = 30.0,
    ) -> None:
        self.address = address.rstrip("/")
        self.token = token if token is not None else find_token()
        self.ping_timeout_s = ping_timeout_s
        self.nodes_ttl_s = nodes_ttl_s
        self._client: Any = None
        self._lock = threading.Lock()
        self._nodes: tuple[float, list[dict[str, float]]] | None = None

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                try:
                    self._client = _job_client(self.address, self.token)
                except Exception as exc:  # ConnectionError, AuthenticationError, ...
                    raise ClusterUnavailable(
                        f"cannot reach the Ray cluster at {self.address}: {exc}"
                    ) from exc
            return self._client

    def _call(self, what: str, fn: str, *args: Any, **kwargs: Any) -> Any:
        client = self._get_client()
        try:
            return getattr(client, fn)(*args, **kwargs)
        except RuntimeError:
            raise  # an HTTP error answer: the caller decides what it means
        except Exception as exc:  # connection refused, timeouts, auth
            with self._lock:
                self._client = None
            raise ClusterUnavailable(
                f"{what}: the Ray cluster at {self.address} did not answer ({exc})"
            ) from exc

    def submit(self, job_id: str, entrypoint: str, env: Mapping[str, str] | None = None) -> bool:
        if self.state(job_id) is not None:
            return False
        runtime_env = {"env_vars": dict(env)} if env else None
        try:
            self._call(
                "submit", "submit_job", entrypoint=entrypoint, submission_id=job_id, runtime_env=runtime_env
            )
        except RuntimeError as exc:
            # Two submitters raced (or a retry after a lost answer): Ray refuses the
            # second with a 500 that says "already exists". Confirm rather than trust text.
            if _is_duplicate(exc) or self.state(job_id) is not None:
                log.info("job %s was already on the cluster", job_id)
                return False
            raise ClusterUnavailable(f"the Ray cluster refused job {job_id}: {_reason(exc)}") from exc
        return True

    def state(self, job_id: str) -> RayJobState | None:
        try:
            info = self._call("status", "get_job_info", job_id)
        except RuntimeError as exc:
            if _is_not_found(exc):
                return None
            raise ClusterUnavailable(f"job {job_id}: {_reason(exc)}") from exc
        status = getattr(info.status, "value", str(info.status))
        return RayJobState(
            status=str(status),
            message=info.message,
            start_time=info.start_time / 1000 if info.start_time else None,
            end_time=info.end_time / 1000 if info.end_time else None,
        )

    def stop(self, job_id: str) -> bool:
        try:
            return bool(self._call("stop", "stop_job", job_id))
        except RuntimeError as exc:
            if _is_not_found(exc):
                return False
            raise ClusterUnavailable(f"stop {job_id}: {_reason(exc)}") from exc

    def logs(self, job_id: str) -> str:
        try:
            return str(self._call("logs", "get_job_logs", job_id))
        except RuntimeError as exc:
            if _is_not_found(exc):
                return ""
            raise ClusterUnavailable(f"logs of {job_id}: {_reason(exc)}") from exc

    def ping(self) -> bool:
        return gcs_healthy(self.address, self.ping_timeout_s)  # the job client has no timeout

    def nodes(self) -> list[dict[str, float]] | None:
        now = time.monotonic()
        cached = self._nodes
        if cached is not None and now - cached[0] < self.nodes_ttl_s:
            return cached[1]
        try:
            nodes = alive_nodes(self.address, self.token, timeout_s=5)
        except Exception as exc:  # state API unavailable: skip the resource check, the job re-checks
            log.warning("could not list the cluster's nodes: %s", _reason(exc))
            return None
        self._nodes = (now, nodes)
        return nodes

    def retarget(self, address: str, token: ClusterToken | None) -> None:
        """Talk to a cluster at a new address from now on (a restarted embedded head)."""
        with self._lock:
            self.address = address.rstrip("/")
            self.token = token
            self._client = None
            self._nodes = None

    def close(self) -> None:
        with self._lock:
            self._client = None


# --------------------------------------------------------------------------- the embedded head


@dataclass(frozen=True)
class HeadLaunch:
    """A ``ray start --head`` command line with every port picked free, and where it answers."""

    argv: list[str]
    dashboard_url: str
    gcs_address: str


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def head_launch(num_cpus: int, temp_dir: str, object_store_bytes: int = OBJECT_STORE_BYTES) -> HeadLaunch:
    """One process (``--block``) that owns every Ray daemon of a loopback-only head node;
    SIGTERM to it tears the whole node down, and with it each job's driver."""
    ports = {flag: _free_port() for flag in _PORT_FLAGS}
    argv = [
        sys.executable,
        "-c",
        "from ray.scripts.scripts import main; main()",
        "start",
        "--head",
        "--block",
        "--node-ip-address",
        "127.0.0.1",
        "--dashboard-host",
        "127.0.0.1",
        "--include-dashboard",
        "true",
        "--num-cpus",
        str(num_cpus),
        "--object-store-memory",
        str(object_store_bytes),
        "--temp-dir",
        temp_dir,
        "--disable-usage-stats",
    ]
    for flag, port in ports.items():
        argv += [flag, str(port)]
    return HeadLaunch(
        argv=argv,
        dashboard_url=f"http://127.0.0.1:{ports['--dashboard-port']}",
        gcs_address=f"127.0.0.1:{ports['--port']}",
    )


def is_head_command(cmdline: str, temp_dir: str) -> bool:
    """Whether a process's command line is the head :func:`head_launch` made for ``temp_dir``."""
    return "--head" in cmdline and temp_dir in cmdline


def head_environment(
    token: ClusterToken, base: Mapping[str, str] | None = None, storage_location: str | None = None
) -> dict[str, str]:
    """The head's environment: the allowlisted part of ``base`` (default: this process's;
    :mod:`service.cluster.head_env`, never the service's token) in token mode with ``token``.

    A token file is named by ``RAY_AUTH_TOKEN_PATH``, which every Ray process of the node
    (raylet, workers, each job's driver) inherits; an empty ``RAY_AUTH_TOKEN`` would shadow it.
    """
    env = allowed_environment(os.environ if base is None else base, storage_location)
    if token.path is not None:
        env.pop("RAY_AUTH_TOKEN", None)
    env.update(token.environment())
    env.update(RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0", RAY_USAGE_STATS_ENABLED="0", **LOOPBACK_ENV)
    return env


def head_ready(address: str, token: ClusterToken | None) -> bool:
    """Whether the head's job API answers (with the token) and a node has registered; raises
    while the head is still coming up. GCS and dashboard answer before the raylet registers."""
    httpx.get(f"{address}/api/gcs_healthz", timeout=2).raise_for_status()
    _job_client(address, token).list_jobs()
    return bool(alive_nodes(address, token))
