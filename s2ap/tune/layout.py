"""Where a search keeps its files, shared by the workers that write them and the tables
that read them.

Under the search folder: ``train/<trial_id>/`` holds Train's checkpoints (each a folder with
the epoch's ``state.pt``, the epochs that counted so far, ``meta.json`` and, once the trial
has finished, its ``final.parquet`` row); ``trials/<trial_id>/`` holds which workers ran
where (``workers/*.json``, one per worker start) and the divergence note.
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


def trial_store(search_dir: str | Path, trial_id: str) -> Path:
    return Path(search_dir) / "trials" / trial_id


def train_storage(search_dir: str | Path) -> Path:
    return Path(search_dir) / "train"


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
        "rank": rank,
        "world": world,
        "node_id": node_id,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "resumed_from": resumed_from,
    }
    atomic_write_json(store / "workers" / f"{time.time_ns()}-{rank}-{os.getpid()}.json", info)


def read_workers(store: Path) -> list[dict[str, Any]]:
    """Every recorded worker start of a trial, oldest first."""
    out = []
    for path in sorted((store / "workers").glob("*.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(out, key=lambda w: w.get("time", 0.0))


def write_meta(folder: Path, metrics: dict[str, Any], final: bool) -> None:
    """A checkpoint's ``meta.json``: when it was written, whether the trial had finished, and
    the metrics it reported with it."""
    atomic_write_json(folder / META, {"time": time.time(), "final": final, "metrics": metrics})


def latest_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint Train kept for a trial (by the time it was written, not its
    epoch): the state the trial ended in."""
    best: tuple[float, Path, dict[str, Any]] | None = None
    if not run_dir.is_dir():
        return None
    for meta_path in run_dir.glob(f"checkpoint_*/{META}"):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        stamp = float(meta.get("time", 0.0))
        if best is None or stamp > best[0]:
            best = (stamp, meta_path.parent, meta)
    return None if best is None else (best[1], best[2])
