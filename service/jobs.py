"""Jobs: what the routes call. Ties the store (truth the API serves), the runner (Ray's
view) and the results folder (progress) together.

Reads never touch Ray: a poller thread refreshes unfinished jobs every
``S2AP_POLL_INTERVAL_S`` and the API answers from SQLite, so status and listing requests
stay fast however slow the cluster is. The same refresh reconciles every unfinished job
when the service starts, which is what makes a restart lose nothing.

A submission is written ahead: the record (status ``queued``) is stored before the job is
handed to Ray, and removed again if Ray refuses it. A crash between the two leaves a
queued record Ray has never seen; reconciling submits it then (the job id is Ray's
submission id, so a job Ray did get is never started twice).
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from s2ap import storage
from s2ap.io import atomic_write_text
from service.cluster.runner import RAY_TO_STATUS, ClusterUnavailable, Runner, error_from_logs, tail
from service.errors import ApiError
from service.log_paths import server_paths
from service.progress import TABLES, config_keys, read_progress
from service.settings import JOBS_DIR, Settings
from service.specs import SpecProblem, ValidSpec, dump_yaml, parse_body, validate
from service.store import TERMINAL, DuplicateIdempotencyKey, JobRecord, JobStore

log = logging.getLogger(__name__)

_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # visible ASCII, as HTTP header values allow
_CURSOR = re.compile(r"^[1-9][0-9]{0,17}$")
SPEC_FILE = "spec.yaml"
SUBMIT_GRACE_S = 30.0  # a queued record younger than this may still be in its POST
RESULTS_DIR = "search"
CHUNK_BYTES = 1 << 20
LOST_MESSAGE = "the Ray cluster no longer knows this job (the cluster was restarted); results written before that are kept"


@dataclass(frozen=True)
class Submitted:
    job: JobRecord
    created: bool  # False: an Idempotency-Key replay of an earlier submission


def new_job_id() -> str:
    return f"s2ap-{secrets.token_hex(8)}"


class JobManager:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        runner: Runner,
        *,
        job_python: str,
        watchdog: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.runner = runner
        self.job_python = job_python
        self.watchdog = watchdog  # run before each poll round (restarts a dead embedded head)
        self.root = settings.data_root
        self.short_paths = server_paths(settings.data_dir, job_python, settings.storage)  # for logs
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # ------------------------------------------------------------------ submit

    def submit(self, body: bytes, content_type: str | None, idempotency_key: str | None) -> Submitted:
        request_hash = hashlib.sha256(body).hexdigest()
        if idempotency_key is not None:
            if not _KEY.match(idempotency_key):
                raise ApiError(
                    422,
                    "invalid_request",
                    "Idempotency-Key must be 1-255 visible ASCII characters",
                    "header.idempotency-key",
                )
            earlier = self.store.get_by_key(idempotency_key)
            if earlier is not None:
                return self._replay(earlier, request_hash)
        job_id = new_job_id()
        try:
            valid = validate(
                parse_body(body, content_type),
                self.root,
                nodes=self._nodes(),
                max_grid_cells=self.settings.max_grid_cells,
                storage=self.settings.storage,
                job_storage=self.job_storage(job_id),
            )
        except SpecProblem as exc:
            # One line like the CLI's: "base.prune.sparsity: must be in (0, 1), got 2.0".
            raise ApiError(422, exc.code, str(exc), exc.field or "body") from None

        job_dir = self.settings.jobs_dir / job_id
        try:
            return self._create(job_id, job_dir, valid, request_hash, idempotency_key)
        except BaseException:
            # Whatever failed (a refused insert, Ray, a bug): no folder without a record.
            if self.store.get(job_id) is None:
                shutil.rmtree(job_dir, ignore_errors=True)
            raise

    def _create(
        self, job_id: str, job_dir: Path, valid: ValidSpec, request_hash: str, idempotency_key: str | None
    ) -> Submitted:
        job_dir.mkdir(parents=True)
        spec_path = atomic_write_text(job_dir / SPEC_FILE, dump_yaml(valid.resolved))
        record = JobRecord(
            id=job_id,
            name=valid.name,
            status="queued",
            submitted_at=time.time(),
            trials_total=valid.trials_total,
            trials={"done": 0, "ok": 0, "stopped": 0, "errored": 0},
            spec=valid.resolved,
            spec_path=str(spec_path),
            results_dir=str(valid.spec.search_dir),  # <job storage>/<name>: the spec says it
            request_hash=request_hash,
            idempotency_key=idempotency_key,
        )
        try:
            self.store.insert(record)
        except DuplicateIdempotencyKey:
            # A concurrent retry with the same key won the insert: answer with its job.
            shutil.rmtree(job_dir, ignore_errors=True)
            earlier = self.store.get_by_key(idempotency_key or "")
            assert earlier is not None
            return self._replay(earlier, request_hash)
        try:
            self.runner.submit(job_id, self.entrypoint(record))
        except BaseException as exc:
            self.store.delete(job_id)
            if isinstance(exc, ClusterUnavailable):
                raise ApiError(503, "cluster_unavailable", f"the job was not created: {exc}") from None
            raise
        log.info("job %s (%s, %d trials) submitted", job_id, valid.name, valid.trials_total)
        current = self.store.get(job_id)
        assert current is not None
        if current.status == "cancelled":  # a cancel slipped in between insert and submit
            self._stop_quietly(job_id)
        return Submitted(current, True)

    def _replay(self, earlier: JobRecord, request_hash: str) -> Submitted:
        if earlier.request_hash != request_hash:
            raise ApiError(
                409,
                "idempotency_key_reused",
                f"this Idempotency-Key was used for job {earlier.id} with a different body; use a new key",
                "header.idempotency-key",
            )
        return Submitted(earlier, False)

    def job_storage(self, job_id: str) -> str:
        """The ``storage`` of a job's stored spec, so its search writes to ``<this>/<name>``:
        under ``S2AP_STORAGE`` (a folder or an object store URI) when set, else in the job's
        folder in the data directory. The submitted spec's own ``storage`` is only checked."""
        if self.settings.storage is not None:
            return storage.join(self.settings.storage, JOBS_DIR, job_id, RESULTS_DIR)
        return str(self.settings.jobs_dir / job_id / RESULTS_DIR)

    def entrypoint(self, job: JobRecord) -> str:
        """Exactly the CLI a user would run: ``python -m s2ap.tune SPEC``, the spec naming
        where it writes (``--out DIR`` only for a job stored before specs did); with the
        embedded Ray head the data is on this machine, so the search checks its data sets and
        models before any trial (``--preflight``) though the job joins a cluster."""
        command = [self.job_python, "-m", "s2ap.tune", job.spec_path]
        spec_dir = storage.join(str(job.spec.get("storage", "")), str(job.spec.get("name", "")))
        if job.results_dir != spec_dir:
            command += ["--out", job.results_dir]
        return shlex.join(command + (["--preflight"] if self.settings.ray_address is None else []))

    def _nodes(self) -> list[dict[str, float]] | None:
        try:
            return self.runner.nodes()
        except ClusterUnavailable:
            return None

    # ------------------------------------------------------------------ read

    def get(self, job_id: str) -> JobRecord:
        job = self.store.get(job_id)
        if job is None:
            raise ApiError(404, "job_not_found", f"no job with id {job_id!r}", "path.job_id")
        return job

    def page(
        self, limit: int | None, cursor: str | None, status: str | None
    ) -> tuple[list[JobRecord], str | None]:
        size = self.settings.page_size if limit is None else limit
        if size > self.settings.max_page_size:
            raise ApiError(
                422, "invalid_request", f"limit must be at most {self.settings.max_page_size}", "query.limit"
            )
        before = None
        if cursor is not None:
            if not _CURSOR.match(cursor):
                raise ApiError(
                    422,
                    "invalid_request",
                    "cursor must be a next_cursor value from a previous page",
                    "query.cursor",
                )
            before = int(cursor)
        items = self.store.page(size + 1, before, status)
        more = len(items) > size
        items = items[:size]
        return items, (str(items[-1].seq) if more and items else None)

    def results(self, job_id: str, table: str) -> Iterator[bytes]:
        """The table's bytes, streamed from wherever the job writes (a folder or an object
        store) in chunks. The search replaces a table whole (a rename locally, one PUT on a
        store), and the stream reads the one version it opened, never half of one."""
        job = self.get(job_id)
        where = storage.join(job.results_dir, TABLES[table])
        try:
            stream = storage.open_input(where)
        except FileNotFoundError:
            raise ApiError(
                409,
                "results_not_ready",
                f"job {job_id} is {job.status} and has no {table} table yet: it appears when the first trial ends",
                "query.table",
            ) from None

        def chunks() -> Iterator[bytes]:
            try:
                while chunk := stream.read(CHUNK_BYTES):
                    yield bytes(chunk)
            finally:
                stream.close()

        return chunks()

    def logs(self, job_id: str, lines: int | None) -> str:
        job = self.get(job_id)
        count = self.settings.log_tail_lines if lines is None else lines
        if count > self.settings.max_log_tail_lines:
            raise ApiError(
                422,
                "invalid_request",
                f"lines must be at most {self.settings.max_log_tail_lines}",
                "query.lines",
            )
        try:
            return self.short_paths(tail(self.runner.logs(job.id), count))
        except ClusterUnavailable as exc:
            raise ApiError(503, "cluster_unavailable", str(exc)) from None

    # ------------------------------------------------------------------ cancel

    def cancel(self, job_id: str, wait_s: float = 15.0) -> JobRecord:
        job = self.get(job_id)
        if job.status == "cancelled":
            return job
        if job.finished:
            raise ApiError(409, "job_finished", f"job {job_id} already {job.status}; nothing to cancel")
        try:
            stopped = self.runner.stop(job_id)
            state = None if stopped else self.runner.state(job_id)
        except ClusterUnavailable as exc:
            raise ApiError(503, "cluster_unavailable", f"the job was not cancelled: {exc}") from None
        if state is not None and state.terminal and state.status != "STOPPED":
            # It ended on its own before the stop arrived: record what really happened.
            self.refresh(job)
            done = self.get(job_id)
            raise ApiError(409, "job_finished", f"job {job_id} already {done.status}; nothing to cancel")
        now = time.time()
        self.store.update(job_id, status="cancelled", finished_at=now, ray_status="STOPPED")
        self._update_progress(self.get(job_id), allow_terminal=True)
        log.info("job %s cancelled", job_id)
        self._await_stopped(job_id, wait_s)
        return self.get(job_id)

    def _await_stopped(self, job_id: str, wait_s: float) -> None:
        """Ray stops a job asynchronously (SIGTERM, then SIGKILL after a few seconds): wait,
        so that a client that sees "cancelled" can rely on the job no longer running."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                state = self.runner.state(job_id)
            except ClusterUnavailable:
                return
            if state is None or state.terminal:
                return
            time.sleep(0.2)
        log.warning("job %s: Ray has not confirmed the stop after %.0fs", job_id, wait_s)

    def _stop_quietly(self, job_id: str) -> None:
        try:
            self.runner.stop(job_id)
        except ClusterUnavailable as exc:
            log.warning("could not stop job %s: %s", job_id, exc)

    # ------------------------------------------------------------------ refresh

    def refresh(self, job: JobRecord) -> None:
        """Bring one unfinished job in line with Ray and its results folder."""
        if job.finished:
            return
        try:
            state = self.runner.state(job.id)
        except ClusterUnavailable as exc:
            log.debug("refresh %s: %s", job.id, exc)
            return
        if state is None:
            if job.status == "queued" and time.time() - job.submitted_at < SUBMIT_GRACE_S:
                return  # its POST may still be handing it to Ray
            if job.status == "queued" and Path(job.spec_path).is_file():
                # Accepted, but the service stopped before Ray got it: submit it now.
                log.info("job %s never reached the cluster; submitting it", job.id)
                try:
                    self.runner.submit(job.id, self.entrypoint(job))
                except ClusterUnavailable as exc:
                    log.warning("could not submit job %s: %s", job.id, exc)
                return
            log.warning("job %s is unknown to the cluster: marking it failed", job.id)
            self.store.update(job.id, status="failed", finished_at=time.time(), error=LOST_MESSAGE)
            return
        status = RAY_TO_STATUS.get(state.status, job.status)
        changes: dict[str, object] = {}
        if state.status != job.ray_status:
            changes["ray_status"] = state.status
        if status != job.status:
            changes["status"] = status
        now = time.time()
        if status == "running" and job.started_at is None:
            changes["started_at"] = now
        if status in TERMINAL:
            if job.started_at is None:
                changes["started_at"] = state.start_time or now
            changes["finished_at"] = state.end_time or now
            if status == "failed":
                changes["error"] = self._failure_reason(job.id, state.message)
        progress = read_progress(job.results_dir, config_keys(job.spec), job.results_version)
        if progress is not None:
            changes.update(trials=progress.trials, best=progress.best, results_version=progress.version)
        if changes:
            self.store.update(job.id, **changes)
            if "status" in changes:
                log.info("job %s: %s -> %s", job.id, job.status, status)

    def _update_progress(self, job: JobRecord, *, allow_terminal: bool = False) -> None:
        progress = read_progress(job.results_dir, config_keys(job.spec), job.results_version)
        if progress is not None:
            self.store.update(
                job.id,
                allow_terminal=allow_terminal,
                trials=progress.trials,
                best=progress.best,
                results_version=progress.version,
            )

    def _failure_reason(self, job_id: str, message: str | None) -> str | None:
        try:
            text = self.runner.logs(job_id)
        except ClusterUnavailable:
            text = ""
        reason = error_from_logs(text, message)
        return None if reason is None else self.short_paths(reason)

    def reconcile(self) -> int:
        """Refresh every unfinished job once; the number looked at."""
        jobs = self.store.unfinished()
        for job in jobs:
            try:
                self.refresh(job)
            except Exception:  # one bad record must not stop the others (or the service)
                log.exception("could not refresh job %s", job.id)
        return len(jobs)

    def cleanup_orphans(self) -> None:
        """Job folders without a record: a crash between writing the spec and storing the row."""
        if not self.settings.jobs_dir.is_dir():
            return
        known = self.store.ids()
        for path in self.settings.jobs_dir.iterdir():
            if path.is_dir() and path.name not in known:
                log.info("removing %s: no job record", path)
                shutil.rmtree(path, ignore_errors=True)

    # ------------------------------------------------------------------ poller

    def start_polling(self) -> None:
        self._stop.clear()
        self._poller = threading.Thread(target=self._poll, name="s2ap-job-poller", daemon=True)
        self._poller.start()

    def stop_polling(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=10)
            self._poller = None

    def _poll(self) -> None:
        while not self._stop.wait(self.settings.poll_interval_s):
            if self.watchdog is not None:
                try:
                    self.watchdog()
                except Exception:  # keep polling: the next round tries again
                    log.exception("cluster watchdog failed")
            self.reconcile()


def default_job_python(settings: Settings) -> str:
    """The embedded head runs jobs with this interpreter (same venv); a cluster with its own."""
    if settings.job_python:
        return settings.job_python
    return sys.executable if settings.embedded_ray else "python"
