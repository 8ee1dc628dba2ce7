"""What the service needs from a cluster: the :class:`Runner` protocol and plain values.

The jobs layer sees a cluster only through a :class:`Runner`: submit, status, stop, logs,
nodes. :class:`service.cluster.ray_cluster.RayJobRunner` is the one on Ray (and the only part of
the service that imports it); anything else that fits can replace it (tests of the HTTP
layer that must not start trainings use :class:`tests.helpers.service.FakeRunner`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

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
