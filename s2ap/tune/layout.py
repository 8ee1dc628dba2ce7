"""Where a search keeps its files, shared by the workers that write them and the tables
that read them.

Under the search folder, a trial's checkpoints (each a folder with the epoch's ``state.pt``,
the epochs that counted so far, ``meta.json`` and, once the trial has finished, its
``final.parquet`` row) are Tune's, in ``trial_<trial_id>/checkpoint_*`` (one-worker trials),
or Train's, in ``train/<trial_id>/checkpoint_*`` (DDP trials). ``trials/<trial_id>/`` holds
which workers ran where (``workers/*.json``, one per worker start), a line per reported epoch
(``epochs.jsonl``: when, by which process), when the driver saw the trial start and end
(``times.json``) and the divergence note.

The search folder is a local folder or an object store URI: every note is read and written
through :mod:`s2ap.storage`, whichever it is.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from s2ap import storage
from s2ap.io import atomic_write_json

DIVERGED = "diverged.json"
META = "meta.json"
STATE = "state.pt"
PROGRESS = "epochs.jsonl"
TIMES = "times.json"

Where = str | Path  # a local folder or a storage URI (:mod:`s2ap.storage`)


def trial_store(search_dir: Where, trial_id: str) -> str:
    return storage.join(search_dir, "trials", trial_id)


def train_storage(search_dir: Where) -> str:
    return storage.join(search_dir, "train")


def checkpoint_roots(search_dir: Where, trial_id: str) -> list[str]:
    """Where a trial's checkpoints may be: Tune's trial folder, Train's run folder."""
    return [storage.join(search_dir, f"trial_{trial_id}"), storage.join(train_storage(search_dir), trial_id)]


def _json(where: str) -> Any:
    """A JSON note, or None when it is missing or unreadable."""
    try:
        return json.loads(storage.read_bytes(where))
    except (OSError, ValueError):
        return None


def read_divergence(store: Where) -> str | None:
    """The reason a trial diverged, or None when it did not."""
    path = storage.join(store, DIVERGED)
    if not storage.is_file(path):
        return None
    note = _json(path)
    return str(note.get("reason", "training diverged")) if isinstance(note, dict) else "training diverged"


def write_divergence(store: Where, reason: str, rank: int) -> None:
    storage.write_json(storage.join(store, DIVERGED), {"reason": reason, "time": time.time(), "rank": rank})


def record_worker(store: Where, rank: int, world: int, node_id: str, resumed_from: str | None) -> None:
    """One small file per worker start: where trials ran and how often they restarted."""
    info = {
        "time": time.time(),
        "process_started": _process_start(),
        "rank": rank,
        "world": world,
        "node_id": node_id,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "resumed_from": resumed_from,
    }
    storage.write_json(storage.join(store, "workers", f"{time.time_ns()}-{rank}-{os.getpid()}.json"), info)


def _process_start() -> float | None:
    """When this process started (a reused actor's is older than its trial)."""
    try:
        import psutil  # comes with Ray

        return float(psutil.Process().create_time())
    except Exception:  # noqa: BLE001 - only a timeline figure
        return None


def read_workers(store: Where) -> list[dict[str, Any]]:
    """Every recorded worker start of a trial, oldest first."""
    folder = storage.join(store, "workers")
    notes = [_json(storage.join(folder, n)) for n in storage.list_dir(folder) if n.endswith(".json")]
    return sorted((n for n in notes if isinstance(n, dict)), key=lambda w: w.get("time", 0.0))


def record_epoch(store: Where, metrics: dict[str, Any]) -> None:
    """Append one line per reported epoch: when, by which process (a restarted trial's
    lines show which epochs it ran again, and that nothing ran after a stop)."""
    line = {
        "time": time.time(),
        "pid": os.getpid(),
        "phase": metrics.get("phase"),
        "epoch": metrics.get("epoch"),
        "global_epoch": metrics.get("global_epoch"),
    }
    storage.append_line(storage.join(store, PROGRESS), json.dumps(line))


def read_epochs(store: Where) -> list[dict[str, Any]]:
    """Every reported epoch of a trial, in order (a torn last line is skipped)."""
    try:
        text = storage.read_text(storage.join(store, PROGRESS))
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def record_times(store: Where, *, started: float | None = None, ended: float | None = None) -> None:
    """The driver's view of a trial: its first start and its (latest) end, wall clock."""
    times = read_times(store)
    if started is not None:
        times.setdefault("started", started)
    if ended is not None:
        times["ended"] = ended
    storage.write_json(storage.join(store, TIMES), times)


def read_times(store: Where) -> dict[str, float]:
    note = _json(storage.join(store, TIMES))
    try:
        return {k: float(v) for k, v in note.items()} if isinstance(note, dict) else {}
    except (TypeError, ValueError):
        return {}


def write_meta(folder: Path, metrics: dict[str, Any], final: bool) -> None:
    """A checkpoint's ``meta.json`` (in the local folder handed to Ray): when it was written,
    whether the trial had finished, and the metrics it reported with it."""
    atomic_write_json(folder / META, {"time": time.time(), "final": final, "metrics": metrics})


def read_meta(checkpoint: Where) -> dict[str, Any] | None:
    """A checkpoint's ``meta.json`` (None when missing or unreadable)."""
    note = _json(storage.join(checkpoint, META))
    return note if isinstance(note, dict) else None


def latest_checkpoint(*roots: Where) -> tuple[str, dict[str, Any]] | None:
    """The newest checkpoint kept for a trial under any of ``roots`` (by the time it was
    written, not its epoch): the state the trial ended in."""
    best: tuple[float, str, dict[str, Any]] | None = None
    for root in roots:
        for name in storage.list_dir(root):
            if not name.startswith("checkpoint_"):
                continue
            folder = storage.join(root, name)
            meta = read_meta(folder)
            if meta is None:
                continue
            stamp = float(meta.get("time", 0.0))
            if best is None or stamp > best[0]:
                best = (stamp, folder, meta)
    return None if best is None else (best[1], best[2])
