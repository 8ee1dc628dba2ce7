"""Where a search keeps its files, shared by the workers that write them and the tables
that read them.

Under the search folder, a trial's checkpoints (each a folder with the epoch's ``state.pt``,
the epochs that counted so far, ``meta.json`` and, once the trial has finished, its
``final.parquet`` row) are Tune's, in ``trial_<trial_id>/checkpoint_*`` (one-worker trials),
or Train's, in ``train/<trial_id>/checkpoint_*`` (DDP trials). ``trials/<trial_id>/`` holds
which workers ran where (``workers/*.json``, one per worker start), a line per reported epoch
(``epochs.jsonl``: when, by which process), when the driver saw the trial start and end
(``times.json``) and the divergence note.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from s2ap.io import atomic_write_json

DIVERGED = "diverged.json"
META = "meta.json"
STATE = "state.pt"
EPOCHS = "epochs.parquet"
FINAL = "final.parquet"
PROGRESS = "epochs.jsonl"
TIMES = "times.json"


def trial_store(search_dir: str | Path, trial_id: str) -> Path:
    return Path(search_dir) / "trials" / trial_id


def train_storage(search_dir: str | Path) -> Path:
    return Path(search_dir) / "train"


def checkpoint_roots(search_dir: str | Path, trial_id: str) -> list[Path]:
    """Where a trial's checkpoints may be: Tune's trial folder, Train's run folder."""
    return [Path(search_dir) / f"trial_{trial_id}", train_storage(search_dir) / trial_id]


def read_divergence(store: Path) -> str | None:
    """The reason a trial diverged, or None when it did not."""
    path = store / DIVERGED
    if not path.is_file():
        return None
    try:
        return str(json.loads(path.read_text()).get("reason", "training diverged"))
    except (OSError, ValueError):
        return "training diverged"


def write_divergence(store: Path, reason: str, rank: int) -> None:
    atomic_write_json(store / DIVERGED, {"reason": reason, "time": time.time(), "rank": rank})


def record_worker(store: Path, rank: int, world: int, node_id: str, resumed_from: str | None) -> None:
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
    atomic_write_json(store / "workers" / f"{time.time_ns()}-{rank}-{os.getpid()}.json", info)


def _process_start() -> float | None:
    """When this process started (a reused actor's is older than its trial)."""
    try:
        import psutil  # comes with Ray

        return float(psutil.Process().create_time())
    except Exception:  # noqa: BLE001 - only a timeline figure
        return None


def read_workers(store: Path) -> list[dict[str, Any]]:
    """Every recorded worker start of a trial, oldest first."""
    out = []
    for path in sorted((store / "workers").glob("*.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(out, key=lambda w: w.get("time", 0.0))


def record_epoch(store: Path, metrics: dict[str, Any]) -> None:
    """Append one line per reported epoch: when, by which process (a restarted trial's
    lines show which epochs it ran again, and that nothing ran after a stop)."""
    line = {
        "time": time.time(),
        "pid": os.getpid(),
        "phase": metrics.get("phase"),
        "epoch": metrics.get("epoch"),
        "global_epoch": metrics.get("global_epoch"),
    }
    store.mkdir(parents=True, exist_ok=True)
    with open(store / PROGRESS, "a") as f:
        f.write(json.dumps(line) + "\n")


def read_epochs(store: Path) -> list[dict[str, Any]]:
    """Every reported epoch of a trial, in order (a torn last line is skipped)."""
    path = store / PROGRESS
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def record_times(store: Path, *, started: float | None = None, ended: float | None = None) -> None:
    """The driver's view of a trial: its first start and its (latest) end, wall clock."""
    times = read_times(store)
    if started is not None:
        times.setdefault("started", started)
    if ended is not None:
        times["ended"] = ended
    atomic_write_json(store / TIMES, times)


def read_times(store: Path) -> dict[str, float]:
    try:
        return {k: float(v) for k, v in json.loads((store / TIMES).read_text()).items()}
    except (OSError, ValueError):
        return {}


def write_meta(folder: Path, metrics: dict[str, Any], final: bool) -> None:
    """A checkpoint's ``meta.json``: when it was written, whether the trial had finished, and
    the metrics it reported with it."""
    atomic_write_json(folder / META, {"time": time.time(), "final": final, "metrics": metrics})


def latest_checkpoint(*roots: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint kept for a trial under any of ``roots`` (by the time it was
    written, not its epoch): the state the trial ended in."""
    best: tuple[float, Path, dict[str, Any]] | None = None
    metas = [m for root in roots if root.is_dir() for m in root.glob(f"checkpoint_*/{META}")]
    for meta_path in metas:
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        stamp = float(meta.get("time", 0.0))
        if best is None or stamp > best[0]:
            best = (stamp, meta_path.parent, meta)
    return None if best is None else (best[1], best[2])
