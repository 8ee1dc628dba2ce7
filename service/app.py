"""``create_app(settings)``: the FastAPI app, its routers, error handlers and lifespan.

Startup (before the port accepts requests): lock the data directory (one service per
directory: the poller and SQLite assume it), find the cluster (``RAY_ADDRESS``, else the
embedded head, started or re-attached), open the store, reconcile every unfinished job
with Ray, then poll. Shutdown stops polling and, for the embedded head, stops it only when
no job is unfinished: jobs outlive the service, and the next start attaches to them.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from s2ap import __version__
from service import errors
from service.body_limit import BodyLimit, form_limit
from service.cluster.ray_cluster import RayJobRunner
from service.cluster.ray_head import EmbeddedRayHead
from service.cluster.runner import Runner
from service.jobs import JobManager, default_job_python
from service.routes import docs, health, jobs
from service.settings import Settings
from service.store import JobStore
from service.throttle import CredentialThrottle
from service.ui import routes as ui

log = logging.getLogger(__name__)


class DataDirBusy(RuntimeError):
    """Another service process already serves this data directory."""


@dataclass
class Services:
    """What the lifespan opens and must close, in one place."""

    settings: Settings
    runner: Runner
    store: JobStore
    jobs: JobManager
    lock: IO[str]
    head: EmbeddedRayHead | None = None
    owns_runner: bool = True
    notes: list[str] = field(default_factory=list)

    def close(self) -> None:
        self.jobs.stop_polling()
        if self.head is not None:
            unfinished = self.store.unfinished()
            if unfinished:
                record = self.head.record()
                log.warning(
                    "keeping the embedded Ray head (pid %s) for %d unfinished job(s); the next service start "
                    "attaches to it, `python -m service --stop-ray` stops it",
                    record.pid if record else "?",
                    len(unfinished),
                )
            else:
                self.head.stop()
        if self.owns_runner:
            self.runner.close()
        self.store.close()
        fcntl.flock(self.lock, fcntl.LOCK_UN)
        self.lock.close()


def lock_data_dir(settings: Settings) -> IO[str]:
    settings.data_root.mkdir(parents=True, exist_ok=True)
    handle = open(settings.lock_path, "a+")  # noqa: SIM115 - held for the app's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DataDirBusy(f"another service is using {settings.data_root}") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def open_services(settings: Settings, runner: Runner | None = None) -> Services:
    """Everything blocking the service needs before it serves (seconds: Ray may start)."""
    lock = lock_data_dir(settings)
    head = None
    watchdog = None
    try:
        owns_runner = runner is None
        if runner is None:
            if settings.embedded_ray:
                head = EmbeddedRayHead(
                    settings.ray_dir, settings.ray_num_cpus, settings.ray_autogroup_nice, settings.storage
                )
                record = head.ensure()
                ray_runner = RayJobRunner(record.dashboard_url, token=record.token())
                watchdog = _head_watchdog(head, ray_runner)
                runner = ray_runner
            else:
                assert settings.ray_address is not None
                runner = RayJobRunner(settings.ray_address)
        store = JobStore(settings.db_path)
        manager = JobManager(
            settings, store, runner, job_python=default_job_python(settings), watchdog=watchdog
        )
        manager.cleanup_orphans()
        count = manager.reconcile()
        log.info("reconciled %d unfinished job(s) with the cluster", count)
        _warm_validator(settings.data_root)
        manager.start_polling()
    except BaseException:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
        raise
    return Services(settings, runner, store, manager, lock, head, owns_runner)


def _head_watchdog(head: EmbeddedRayHead, runner: RayJobRunner) -> Callable[[], None]:
    """Restart the embedded head if it died, and point the runner at the new one. Jobs it
    ran are then unknown to Ray, and the next reconcile marks them failed with the reason."""

    def check() -> None:
        if not head.is_running():
            log.warning("the embedded Ray head is gone; starting a new one")
            record = head.ensure()
            runner.retarget(record.dashboard_url, record.token())

    return check


def _warm_validator(root: Path) -> None:
    """The first validation imports torch, the data sets and the model registry (seconds on
    a busy machine): pay that at startup, not in the first submitter's request."""
    from s2ap.tune.spec import load_spec

    try:
        load_spec({"name": "warm-up", "base": {}}, nodes=None, base_dir=root)
    except Exception:  # only a warm-up: a real submission reports any problem itself
        log.debug("validator warm-up failed", exc_info=True)


def _body_limits(settings: Settings) -> Callable[[str, str], int]:
    """Bytes a request body may have: a spec (``S2AP_MAX_BODY_BYTES``) everywhere, the web
    page's submit form room for an uploaded and a pasted one."""
    cap = settings.max_body_bytes

    def limit_for(method: str, path: str) -> int:
        return form_limit(cap) if path == "/ui/submit" else cap

    return limit_for


def create_app(settings: Settings | None = None, *, runner: Runner | None = None) -> FastAPI:
    """The service. ``runner`` replaces the Ray runner (tests that must not start trainings)."""
    settings = settings.check() if settings is not None else Settings.from_env()  # from_env checks

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await run_in_threadpool(open_services, settings, runner)
        app.state.runner = services.runner
        app.state.jobs = services.jobs
        try:
            yield
        finally:
            await run_in_threadpool(services.close)

    public_docs = settings.public_docs or not settings.auth_required
    app = FastAPI(
        title="s2ap job service",
        version=__version__,
        summary="Submit S2AP searches to a Ray cluster, follow them, fetch Parquet results.",
        lifespan=lifespan,
        # Closed by default: the schema is served by docs.router behind the token, and the
        # browser pages (which cannot send it) only when S2AP_PUBLIC_DOCS opens them.
        openapi_url="/openapi.json" if public_docs else None,
        docs_url="/docs" if public_docs else None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.throttle = CredentialThrottle(
        settings.auth_failures, settings.auth_failures_total, settings.auth_window_s
    )
    errors.install(app)
    app.add_middleware(BodyLimit, limit_for=_body_limits(settings))
    app.include_router(health.router)
    app.include_router(jobs.router)
    if not public_docs:
        app.include_router(docs.router)
    ui.install(app)  # the web page, /ui
    docs.describe(app, settings)
    return app
