"""Job records: whole or absent, newest first, terminal states sticky, kept across reopen."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from service.store import DuplicateIdempotencyKey, JobRecord, JobStore


def record(job_id: str, key: str | None = None, status: str = "queued") -> JobRecord:
    return JobRecord(
        id=job_id,
        name="n",
        status=status,
        submitted_at=time.time(),
        trials_total=4,
        spec={"name": "n"},
        spec_path=f"/d/{job_id}/spec.yaml",
        results_dir=f"/d/{job_id}/search",
        request_hash="h",
        idempotency_key=key,
        trials={"done": 0},
    )


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs.sqlite3")


def test_pages_are_newest_first_and_continue_by_cursor(store: JobStore) -> None:
    for i in range(5):
        store.insert(record(f"j{i}", status="succeeded" if i % 2 else "running"))
    first = store.page(2)
    assert [j.id for j in first] == ["j4", "j3"]
    second = store.page(2, before_seq=first[-1].seq)
    assert [j.id for j in second] == ["j2", "j1"]
    assert [j.id for j in store.page(10, status="succeeded")] == ["j3", "j1"]
    assert [j.id for j in store.unfinished()] == ["j0", "j2", "j4"]


def test_a_duplicate_idempotency_key_stores_nothing(store: JobStore) -> None:
    store.insert(record("a", key="k"))
    with pytest.raises(DuplicateIdempotencyKey):
        store.insert(record("b", key="k"))
    assert store.count() == 1 and store.get("b") is None
    assert store.get_by_key("k").id == "a"  # type: ignore[union-attr]


def test_terminal_states_are_sticky(store: JobStore) -> None:
    store.insert(record("a"))
    assert store.update("a", status="cancelled", finished_at=1.0)
    assert not store.update("a", status="running")  # a late poll loses against the cancel
    assert store.get("a").status == "cancelled"  # type: ignore[union-attr]
    assert store.update("a", allow_terminal=True, trials={"done": 2})
    assert store.get("a").trials == {"done": 2}  # type: ignore[union-attr]


def test_records_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    first = JobStore(path)
    first.insert(record("a"))
    first.update("a", status="running", started_at=5.0, best={"trial_id": "t", "config": {"x": 1}})
    first.close()
    again = JobStore(path).get("a")
    assert again is not None
    assert (again.status, again.started_at, again.best) == (
        "running",
        5.0,
        {"trial_id": "t", "config": {"x": 1}},
    )
    assert again.spec == {"name": "n"} and again.trials_total == 4


def test_concurrent_writers_and_readers(store: JobStore) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(20):
                store.insert(record(f"w{n}-{i}"))
                store.update(f"w{n}-{i}", status="running")
                store.page(5)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.count() == 80
    assert len(store.unfinished()) == 80
