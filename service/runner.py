"""The one object that talks to Ray: submit, status, stop, logs, nodes.

It speaks Ray's job submission API (the dashboard's HTTP API), never ``ray.init``: the
service process holds no Ray driver and runs no training, and jobs live on the cluster,
so they outlive the service. Anything else that fits :class:`Runner` can replace it
(tests of the HTTP layer that must not start trainings use a stub).

Two Ray behaviours shape this module (seen with Ray 2.60):

* token authentication is on for local clusters, and the job client only sends the
  cluster's token (``~/.ray/auth_token``, ``RAY_AUTH_TOKEN_PATH`` or ``RAY_AUTH_TOKEN``)
  when ``RAY_AUTH_MODE=token`` is set; without it the dashboard answers "Missing
  authentication token". :func:`enable_token_auth` sets it when a token exists.
* a duplicate submission id is refused with an HTTP 500 wrapped in a ``RuntimeError``.
  :meth:`RayJobRunner.submit` asks for the job first and matches the refusal, so
  resubmitting a job (reconciling after a crash) is a no-op instead of an error.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

log = logging.getLogger(__name__)

# Ray's job states, and what the service calls them.
RAY_TO_STATUS = {
    "PENDING": "queued",
    "RUNNING": "running",
    "SUCCEEDED": "succeeded",
    "FAILED": "failed",
    "STOPPED": "cancelled",
}


class ClusterUnavailable(RuntimeError):
    """The Ray cluster (its dashboard) cannot be reached or refused a request."""


@dataclass(frozen=True)
class RayJobState:
    """Ray's view of one job, in plain values (seconds since the epoch)."""

    status: str  # PENDING | RUNNING | SUCCEEDED | FAILED | STOPPED
    message: str | None = None
    start_time: float | None = None
    end_time: float | None = None

    @property
    def terminal(self) -> bool:
        return self.status in ("SUCCEEDED", "FAILED", "STOPPED")


class Runner(Protocol):
    """What the service needs from a cluster."""

    address: str

    def submit(self, job_id: str, entrypoint: str, env: Mapping[str, str] | None = None) -> bool:
        """Start ``entrypoint`` as job ``job_id``; False when the cluster already has it."""
        ...

    def state(self, job_id: str) -> RayJobState | None:
        """The job's state, or None when the cluster has never heard of it."""
        ...

    def stop(self, job_id: str) -> bool:
        """Ask the cluster to stop the job; False when it had already ended (or is unknown)."""
        ...

    def logs(self, job_id: str) -> str:
        """The job driver's whole log so far ('' for an unknown job)."""
        ...

    def ping(self) -> bool:
        """Whether the cluster answers at all (cheap, bounded by a short timeout)."""
        ...

    def nodes(self) -> list[dict[str, float]] | None:
        """Resources of each alive node, or None when the cluster cannot say."""
        ...

    def close(self) -> None: ...


def token_available(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    if env.get("RAY_AUTH_TOKEN"):
        return True
    path = env.get("RAY_AUTH_TOKEN_PATH")
    if path and Path(path).expanduser().is_file():
        return True
    return (Path.home() / ".ray" / "auth_token").is_file()


def enable_token_auth(force: bool = False) -> None:
    """Let Ray's client send the cluster token: always with ``force`` (a head we started in
    token mode), else when a token exists and no mode was chosen.

    Ray reads ``RAY_AUTH_MODE`` into its config when it is imported; if it already was
    (tests, notebooks), the config is re-read, as Ray's own ``ray.init`` does.
    """
    if os.environ.get("RAY_AUTH_MODE") == "token":
        return
    if not force and ("RAY_AUTH_MODE" in os.environ or not token_available()):
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    log.info("RAY_AUTH_MODE=token for the job client")
    if "ray._raylet" in sys.modules:
        try:
            from ray._raylet import Config

            Config.initialize("")
        except Exception:  # private API moved: only an already-imported Ray is affected
            log.warning("could not refresh Ray's config; set RAY_AUTH_MODE=token before importing ray")


def _is_not_found(exc: BaseException) -> bool:
    text = str(exc)
    return "status code 404" in text or "does not exist" in text


def _is_duplicate(exc: BaseException) -> bool:
    return "already exists" in str(exc)


class RayJobRunner:
    """Ray job submission client with the service's error semantics.

    ``address`` is the dashboard URL (``http://127.0.0.1:8265``). The underlying client is
    created lazily and rebuilt after a connection failure, so a cluster that comes up after
    the service (docker compose) is picked up without a restart.
    """

    def __init__(self, address: str, *, ping_timeout_s: float = 2.0, nodes_ttl_s: float = 30.0) -> None:
        self.address = address.rstrip("/")
        self.ping_timeout_s = ping_timeout_s
        self.nodes_ttl_s = nodes_ttl_s
        self._client: Any = None
        self._lock = threading.Lock()
        self._nodes: tuple[float, list[dict[str, float]]] | None = None
        enable_token_auth()

    # ------------------------------------------------------------------ plumbing

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                from ray.job_submission import JobSubmissionClient  # only the runner imports Ray

                try:
                    self._client = JobSubmissionClient(self.address)
                except Exception as exc:  # ConnectionError, AuthenticationError, ...
                    raise ClusterUnavailable(
                        f"cannot reach the Ray cluster at {self.address}: {exc}"
                    ) from exc
            return self._client

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
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

    # ------------------------------------------------------------------ Runner

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
            raise ClusterUnavailable(f"the Ray cluster refused job {job_id}: {_first_line(exc)}") from exc
        return True

    def state(self, job_id: str) -> RayJobState | None:
        try:
            info = self._call("status", "get_job_info", job_id)
        except RuntimeError as exc:
            if _is_not_found(exc):
                return None
            raise ClusterUnavailable(f"job {job_id}: {_first_line(exc)}") from exc
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
            raise ClusterUnavailable(f"stop {job_id}: {_first_line(exc)}") from exc

    def logs(self, job_id: str) -> str:
        try:
            return str(self._call("logs", "get_job_logs", job_id))
        except RuntimeError as exc:
            if _is_not_found(exc):
                return ""
            raise ClusterUnavailable(f"logs of {job_id}: {_first_line(exc)}") from exc

    def ping(self) -> bool:
        # A public endpoint: answers without the token, and fast (the job client has no timeout).
        try:
            r = httpx.get(f"{self.address}/api/gcs_healthz", timeout=self.ping_timeout_s)
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    def nodes(self) -> list[dict[str, float]] | None:
        now = time.monotonic()
        cached = self._nodes
        if cached is not None and now - cached[0] < self.nodes_ttl_s:
            return cached[1]
        try:
            from ray.util.state import list_nodes

            found = list_nodes(
                address=self.address,
                filters=[("state", "=", "ALIVE")],
                timeout=5,
                raise_on_missing_output=False,
            )
        except Exception as exc:  # state API unavailable: skip the resource check, the job re-checks
            log.warning("could not list the cluster's nodes: %s", _first_line(exc))
            return None
        nodes = [{k: float(v) for k, v in (n.resources_total or {}).items()} for n in found]
        self._nodes = (now, nodes)
        return nodes

    def retarget(self, address: str) -> None:
        """Talk to a cluster at a new address from now on (a restarted embedded head)."""
        with self._lock:
            self.address = address.rstrip("/")
            self._client = None
            self._nodes = None

    def close(self) -> None:
        with self._lock:
            self._client = None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # Ray wraps server tracebacks: the last line is the actual reason.
    return (lines[-1] if lines else type(exc).__name__)[:500]


def tail(text: str, lines: int) -> str:
    """The last ``lines`` lines of ``text``."""
    parts = text.splitlines(keepends=True)
    return "".join(parts[-lines:]) if lines < len(parts) else text


def error_from_logs(log_text: str, fallback: str | None, limit: int = 2000) -> str | None:
    """The reason a job failed, as a user reads it: the CLI's ``error:`` line if any."""
    errors = [line.strip() for line in log_text.splitlines() if line.strip().startswith("error:")]
    if errors:
        return errors[-1][:limit]
    lines: Sequence[str] = [line for line in log_text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line.strip()[:limit]
    return fallback[:limit] if fallback else None
