"""Service settings, read once from the environment.

Everything a deployment changes lives here, so the app factory, the CLI and the tests
build the service from one frozen object instead of reading ``os.environ`` all over.

=========================  ===================================================  ==========
variable                   meaning                                              default
=========================  ===================================================  ==========
``S2AP_API_TOKEN``         bearer token every endpoint but ``/healthz`` needs   (required)
``S2AP_DATA_DIR``          job records, specs and results; spec paths must      ``./s2ap-data``
                           resolve inside it
``S2AP_STORAGE``           where job results (and the shared pretraining        the data dir
                           cache) go: a folder or an object store URI
                           (``s3://bucket/s2ap``; credentials from ``AWS_*``)
``RAY_ADDRESS``            dashboard URL of an existing Ray cluster             embedded head
                           (``http://ray-head:8265``); unset: the service
                           starts a local Ray head itself
``RAY_AUTH_TOKEN``         the Ray cluster's token (``RAY_AUTH_TOKEN_PATH``:    ``~/.ray/auth_token``;
                           a file holding it)                                   embedded: made in
                                                                                ``DATA_DIR/ray``
``S2AP_MAX_BODY_BYTES``    largest accepted request body                        1 MiB
``S2AP_AUTH_FAILURES``     wrong tokens (sign-ins on ``/ui/login``, bearer      10
                           tokens) one client address may send per window;
                           past it every token it sends is answered 429 with
                           ``Retry-After`` until the oldest leaves the window
``S2AP_AUTH_FAILURES_      the same budget for all clients together             100
TOTAL``
``S2AP_AUTH_WINDOW_S``     the window those budgets count in, seconds           60
``S2AP_PUBLIC_DOCS``       serve ``/openapi.json`` and ``/docs`` without the    false
                           token (false: the schema needs it, ``/docs`` is off)
``S2AP_PAGE_SIZE``         default page of ``GET /jobs``                        20
``S2AP_MAX_PAGE_SIZE``     largest page a client may ask for                    100
``S2AP_LOG_TAIL_LINES``    default lines of ``GET /jobs/{id}/logs``             200
``S2AP_POLL_INTERVAL_S``   how often unfinished jobs are refreshed from Ray     2
``S2AP_MAX_GRID_CELLS``    largest grid a submitted spec may span               10000
``S2AP_RAY_NUM_CPUS``      logical CPUs of the embedded head                    max(4, 2 x cores)
``S2AP_RAY_AUTOGROUP_NICE`` CPU weight of the embedded head's session (Linux      5
                           autogroups; 0 leaves it equal to the service's)
``S2AP_JOB_PYTHON``        interpreter that runs ``-m s2ap.tune`` on the        this one (embedded),
                           cluster                                              ``python`` (cluster)
``S2AP_ALLOWED_MODEL_      module prefixes (comma-separated) whose              none: import
MODULES``                  ``package.module:callable`` models specs may name    paths refused
                           (an import path runs code; read by model_policy)
``S2AP_ALLOWED_DATA_       module prefixes (comma-separated) whose              none: import
MODULES``                  ``package.module:callable`` data sets specs may name paths refused
=========================  ===================================================  ==========
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from s2ap import storage
from s2ap.errors import ConfigError

# The service's own state in the data directory: no spec path may point into it.
DB_FILE = "jobs.sqlite3"  # and its -wal, -shm, -journal companions
JOBS_DIR = "jobs"
RAY_DIR = "ray"
LOCK_FILE = "service.lock"
SERVICE_STATE = (DB_FILE, JOBS_DIR, RAY_DIR, LOCK_FILE)
MAX_LOG_TAIL_LINES = 10_000


class SettingsError(ValueError):
    """A setting that cannot work; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    api_token: str | None = None
    data_dir: Path = Path("s2ap-data")
    ray_address: str | None = None
    local_only: bool = False
    max_body_bytes: int = 1 << 20
    auth_failures: int = 10  # per client address and window (service.throttle)
    auth_failures_total: int = 100  # all clients together
    auth_window_s: float = 60.0
    page_size: int = 20
    max_page_size: int = 100
    log_tail_lines: int = 200
    max_log_tail_lines: int = MAX_LOG_TAIL_LINES
    poll_interval_s: float = 2.0
    max_grid_cells: int = 10_000
    ray_num_cpus: int | None = None
    ray_autogroup_nice: int = 5
    job_python: str | None = None
    public_docs: bool = False
    storage: str | None = None  # None: results in the data directory

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read the ``S2AP_*`` variables and ``RAY_ADDRESS``; keyword overrides win (CLI flags)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {
            "api_token": env.get("S2AP_API_TOKEN") or None,
            "data_dir": Path(env.get("S2AP_DATA_DIR") or "s2ap-data"),
            "ray_address": env.get("RAY_ADDRESS") or None,
            "local_only": _flag(env, "S2AP_LOCAL_ONLY"),
            "max_body_bytes": _int(env, "S2AP_MAX_BODY_BYTES", cls.max_body_bytes, low=1024),
            "auth_failures": _int(env, "S2AP_AUTH_FAILURES", cls.auth_failures, low=1),
            "auth_failures_total": _int(env, "S2AP_AUTH_FAILURES_TOTAL", cls.auth_failures_total, low=1),
            "auth_window_s": _float(env, "S2AP_AUTH_WINDOW_S", cls.auth_window_s, low=0.1),
            "page_size": _int(env, "S2AP_PAGE_SIZE", cls.page_size, low=1),
            "max_page_size": _int(env, "S2AP_MAX_PAGE_SIZE", cls.max_page_size, low=1),
            "log_tail_lines": _int(env, "S2AP_LOG_TAIL_LINES", cls.log_tail_lines, low=1),
            "poll_interval_s": _float(env, "S2AP_POLL_INTERVAL_S", cls.poll_interval_s, low=0.05),
            "max_grid_cells": _int(env, "S2AP_MAX_GRID_CELLS", cls.max_grid_cells, low=1),
            "ray_num_cpus": _int(env, "S2AP_RAY_NUM_CPUS", None, low=1),
            "ray_autogroup_nice": _int(env, "S2AP_RAY_AUTOGROUP_NICE", cls.ray_autogroup_nice, low=0),
            "job_python": env.get("S2AP_JOB_PYTHON") or None,
            "public_docs": _flag(env, "S2AP_PUBLIC_DOCS"),
            "storage": env.get("S2AP_STORAGE") or None,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values).check()

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def check(self) -> Settings:
        """These settings with ``S2AP_STORAGE`` parsed (a :class:`s2ap.storage.Location`) and
        probed, as a new instance (a frozen one stays as it was). Refuses settings that would
        expose the cluster: no token means local-only."""
        if not self.api_token and not self.local_only:
            raise SettingsError(
                "S2AP_API_TOKEN is not set: every endpoint but /healthz needs a bearer token. "
                "Set it, or pass --local-only to serve without one on 127.0.0.1 only"
            )
        if self.page_size > self.max_page_size:
            raise SettingsError(
                f"S2AP_PAGE_SIZE ({self.page_size}) must not exceed S2AP_MAX_PAGE_SIZE ({self.max_page_size})"
            )
        where: str | None = None
        if self.storage is not None:
            try:
                where = storage.check(self.storage, "S2AP_STORAGE")
                storage.probe(where, "S2AP_STORAGE")  # an unreachable store: one line at startup
            except ConfigError as exc:
                raise SettingsError(str(exc)) from None
        if self.ray_address and "://" not in self.ray_address:
            raise SettingsError(
                f"RAY_ADDRESS must be the Ray dashboard URL (http://host:8265) jobs are submitted to, "
                f"got {self.ray_address!r}"
            )
        return replace(self, storage=where)

    @property
    def data_root(self) -> Path:
        """The data directory as an absolute, symlink-free path: what spec paths must stay in."""
        return self.data_dir.expanduser().resolve()

    @property
    def db_path(self) -> Path:
        return self.data_root / DB_FILE

    @property
    def jobs_dir(self) -> Path:
        return self.data_root / JOBS_DIR

    @property
    def ray_dir(self) -> Path:
        return self.data_root / RAY_DIR

    @property
    def lock_path(self) -> Path:
        return self.data_root / LOCK_FILE

    @property
    def embedded_ray(self) -> bool:
        return self.ray_address is None

    @property
    def auth_required(self) -> bool:
        return bool(self.api_token)


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP: the only binds allowed without a token."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _int(env: Mapping[str, str], name: str, default: int | None, *, low: int) -> int | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < low:
        raise SettingsError(f"{name} must be >= {low}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, low: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not value >= low:
        raise SettingsError(f"{name} must be >= {low}, got {raw}")
    return value
