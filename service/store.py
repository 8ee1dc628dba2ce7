"""Job records in one SQLite file in the data directory.

Every write is one transaction, so a record is either there whole or not at all: a bad
request never reaches :meth:`JobStore.insert`, and a submission Ray refuses is rolled
back with :meth:`JobStore.delete`. Terminal states are sticky: once a job is succeeded,
failed or cancelled no refresh can move it back (a late poll racing a cancel loses).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
STATUSES: tuple[str, ...] = get_args(JobStatus)
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
UNFINISHED = tuple(s for s in STATUSES if s not in TERMINAL)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ({", ".join(repr(s) for s in STATUSES)})),
    submitted_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    trials_total INTEGER NOT NULL,
    trials_json TEXT NOT NULL DEFAULT '{{}}',
    best_json TEXT,
    error TEXT,
    spec_json TEXT NOT NULL,
    spec_path TEXT NOT NULL,
    results_dir TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    request_hash TEXT NOT NULL,
    ray_status TEXT,
    results_version TEXT,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
"""
_SCHEMA_VERSION = 1


# Every column but spec_json, for listings.
_LIST_COLUMNS = (
    "seq, id, name, status, submitted_at, started_at, finished_at, trials_total, trials_json, best_json, error, "
    "spec_path, results_dir, idempotency_key, request_hash, ray_status, results_version, updated_at"
)


class DuplicateIdempotencyKey(Exception):
    """Another submission already holds this ``Idempotency-Key``."""


@dataclass
class JobRecord:
    id: str
    name: str
    status: str
    submitted_at: float
    trials_total: int
    spec: dict[str, Any]
    spec_path: str
    results_dir: str
    request_hash: str
    idempotency_key: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    trials: dict[str, int] = field(default_factory=dict)
    best: dict[str, Any] | None = None
    error: str | None = None
    ray_status: str | None = None
    results_version: str | None = None
    seq: int | None = None
    updated_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


# Columns stored as JSON text, and their attribute names.
_JSON_COLUMNS = {"spec_json": "spec", "trials_json": "trials", "best_json": "best"}
_UPDATABLE = {
    "status",
    "started_at",
    "finished_at",
    "trials",
    "best",
    "error",
    "ray_status",
    "results_version",
}


class JobStore:
    """Thread-safe access to the jobs table: one writer connection and one reader
    connection, each behind a lock (writes are rare and reads take microseconds, so a pool
    would only add failure modes)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a job accepted is a job kept
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        # Reads get their own connection: in WAL mode they never wait for a write (a poller
        # update fsyncing) and always see the last commit.
        self._read_lock = threading.Lock()
        self._rdb = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._rdb.row_factory = sqlite3.Row
        self._rdb.execute("PRAGMA query_only=ON")

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._db.close()
            self._rdb.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ------------------------------------------------------------------ writes

    def insert(self, record: JobRecord) -> JobRecord:
        """Store a new job whole, or raise :class:`DuplicateIdempotencyKey` and store nothing."""
        now = time.time()
        row = {
            "id": record.id,
            "name": record.name,
            "status": record.status,
            "submitted_at": record.submitted_at,
            "started_at": record.started_at,
            "finished_at": record.finished_at,
            "trials_total": record.trials_total,
            "trials_json": json.dumps(record.trials),
            "best_json": None if record.best is None else json.dumps(record.best),
            "error": record.error,
            "spec_json": json.dumps(record.spec),
            "spec_path": record.spec_path,
            "results_dir": record.results_dir,
            "idempotency_key": record.idempotency_key,
            "request_hash": record.request_hash,
            "ray_status": record.ray_status,
            "results_version": record.results_version,
            "updated_at": now,
        }
        cols = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        try:
            with self._tx() as db:
                cur = db.execute(f"INSERT INTO jobs ({cols}) VALUES ({marks})", row)
        except sqlite3.IntegrityError as exc:
            if "idempotency_key" in str(exc):
                raise DuplicateIdempotencyKey(record.idempotency_key) from None
            raise
        record.seq, record.updated_at = cur.lastrowid, now
        return record

    def update(self, job_id: str, *, allow_terminal: bool = False, **changes: Any) -> bool:
        """Change fields of an unfinished job (any job with ``allow_terminal``).

        Returns whether a row changed: False when the job is gone or already finished, so a
        refresh racing a cancel cannot resurrect the job.
        """
        unknown = set(changes) - _UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        if not changes:
            return False
        values: dict[str, Any] = {}
        for key, value in changes.items():
            if key in ("trials", "best"):
                values[f"{key}_json"] = None if value is None else json.dumps(value)
            else:
                values[key] = value
        values["updated_at"] = time.time()
        sets = ", ".join(f"{k} = :{k}" for k in values)
        where = "id = :job_id"
        if not allow_terminal:
            where += " AND status IN (" + ", ".join(repr(s) for s in UNFINISHED) + ")"
        with self._tx() as db:
            cur = db.execute(f"UPDATE jobs SET {sets} WHERE {where}", {**values, "job_id": job_id})
        return cur.rowcount > 0

    def delete(self, job_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    # ------------------------------------------------------------------ reads

    def get(self, job_id: str) -> JobRecord | None:
        return self._one("SELECT * FROM jobs WHERE id = ?", (job_id,))

    def get_by_key(self, key: str) -> JobRecord | None:
        return self._one("SELECT * FROM jobs WHERE idempotency_key = ?", (key,))

    def page(self, limit: int, before_seq: int | None = None, status: str | None = None) -> list[JobRecord]:
        """Newest first; ``before_seq`` continues after the last job of the previous page."""
        clauses, params = [], []
        if before_seq is not None:
            clauses.append("seq < ?")
            params.append(before_seq)
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        # Listings never show the spec: leave its JSON (the largest column) unread.
        return self._many(
            f"SELECT {_LIST_COLUMNS} FROM jobs {where} ORDER BY seq DESC LIMIT ?", (*params, limit)
        )

    def unfinished(self) -> list[JobRecord]:
        marks = ", ".join("?" for _ in UNFINISHED)
        return self._many(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY seq", UNFINISHED)

    def ids(self) -> set[str]:
        with self._read_lock:
            return {r[0] for r in self._rdb.execute("SELECT id FROM jobs")}

    def count(self) -> int:
        with self._read_lock:
            return int(self._rdb.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])

    def _one(self, sql: str, params: tuple[Any, ...]) -> JobRecord | None:
        with self._read_lock:
            row = self._rdb.execute(sql, params).fetchone()
        return None if row is None else _record(row)

    def _many(self, sql: str, params: tuple[Any, ...]) -> list[JobRecord]:
        with self._read_lock:
            rows = self._rdb.execute(sql, params).fetchall()
        return [_record(r) for r in rows]


def _record(row: sqlite3.Row) -> JobRecord:
    data = dict(row)
    for column, attr in _JSON_COLUMNS.items():
        raw = data.pop(column, None)
        data[attr] = None if raw is None else json.loads(raw)
    data["trials"] = data["trials"] or {}
    data["spec"] = data["spec"] or {}
    return JobRecord(**data)
