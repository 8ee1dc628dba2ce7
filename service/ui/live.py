"""The trials a search is running now, read from what each trial has written, never from Ray.

A trial enters ``trials.parquet`` when it ends. While it runs, the search keeps its files
under the search folder (:mod:`s2ap.tune.layout`): ``trials/<id>/`` appears when a worker
starts it (``times.json`` gains ``ended`` when the driver sees it end), and each epoch it
reports leaves a checkpoint whose ``epochs.parquet`` holds every epoch so far, with the
validation accuracies and their point counts. Tune writes the trial's sampled values
beside its checkpoints (``trial_<id>/params.json``); a trial without it (yet) shows no γ.

Each running trial is read once per checkpoint (a small cache keyed by the checkpoint's
folder and the time its ``meta.json`` records), so a page that refreshes every few seconds
reads only the epochs that were added.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from s2ap import storage
from s2ap.results import EPOCHS_FILE
from s2ap.tune.layout import checkpoint_roots, latest_checkpoint, read_times, trial_store

log = logging.getLogger(__name__)

PARAMS = "params.json"  # Tune's note of a trial's sampled values, in trial_<id>/
_CACHE_SIZE = 256
_cache: OrderedDict[tuple[str, float], pd.DataFrame] = OrderedDict()
_lock = threading.Lock()


@dataclass(frozen=True)
class LiveTrial:
    """A started trial that has no row in ``trials.parquet`` yet."""

    trial_id: str
    params: dict[str, Any]  # Tune's sampled values: "cell", "s2ap.gamma", ... (empty: not written yet)
    epochs: pd.DataFrame  # its epochs so far, in epochs.parquet's columns (may be empty)
    ended: bool  # the driver saw it end; its row follows when the tables are rewritten

    @property
    def grid_cell(self) -> int | None:
        cell = self.params.get("cell")
        return int(cell) if isinstance(cell, int | float) and not isinstance(cell, bool) else None

    @property
    def search_epochs(self) -> int:
        if self.epochs.empty or "phase" not in self.epochs:
            return 0
        return int((self.epochs["phase"] != "pretrain").sum())


@dataclass(frozen=True)
class Live:
    trials: list[LiveTrial] = field(default_factory=list)
    key: str = ""  # changes whenever a running trial wrote something new

    @property
    def running(self) -> int:
        return sum(1 for t in self.trials if not t.ended)

    def epochs(self) -> pd.DataFrame | None:
        """Every running trial's epochs, in ``epochs.parquet``'s shape (for the figures)."""
        parts = [t.epochs for t in self.trials if not t.epochs.empty]
        return pd.concat(parts, ignore_index=True) if parts else None


def started_ids(search_dir: str) -> list[str]:
    """The trials a worker has started (each has its own folder under ``trials/``)."""
    return [n for n in storage.list_dir(storage.join(search_dir, "trials")) if not n.startswith(".")]


def running_count(search_dir: str, finished: int) -> int:
    """How many trials run now: those started less those in ``trials.parquet`` (one listing)."""
    try:
        return max(0, len(started_ids(search_dir)) - finished)
    except OSError:
        return 0


def live_trials(search_dir: str, finished_ids: Iterable[str]) -> Live:
    """The started trials not yet in ``trials.parquet``, with their epochs so far."""
    done = {str(t) for t in finished_ids}
    try:
        ids = [t for t in started_ids(search_dir) if t not in done]
    except OSError as exc:  # an unreachable store: the page shows the finished trials
        log.warning("could not list the running trials of %s: %s", storage.redact(search_dir), exc)
        return Live()
    trials, parts = [], []
    for tid in ids:
        try:
            trial, stamp = _read_trial(search_dir, tid)
        except (OSError, ValueError) as exc:
            log.warning("could not read running trial %s: %s", tid, exc)
            continue
        trials.append(trial)
        parts.append(f"{tid}@{stamp}:{trial.ended}:{bool(trial.params)}")
    return Live(trials, "|".join(parts))


def _read_trial(search_dir: str, tid: str) -> tuple[LiveTrial, float]:
    params = _params(storage.join(search_dir, f"trial_{tid}", PARAMS))
    ended = "ended" in read_times(trial_store(search_dir, tid))
    found = latest_checkpoint(*checkpoint_roots(search_dir, tid))
    if found is None:
        return LiveTrial(tid, params, pd.DataFrame(), ended), 0.0
    folder, meta = found
    stamp = float(meta.get("time", 0.0))
    key = (folder, stamp)
    with _lock:
        cached = _cache.get(key)
    if cached is None:
        where = storage.join(folder, EPOCHS_FILE)
        raw = storage.read_table(where).to_pandas() if storage.is_file(where) else pd.DataFrame()
        cached = epoch_rows(raw, tid, params)
        with _lock:
            _cache[key] = cached
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
    return LiveTrial(tid, params, cached, ended), stamp


def _params(where: str) -> dict[str, Any]:
    try:
        note = json.loads(storage.read_bytes(where))
    except (OSError, ValueError):
        return {}
    return note if isinstance(note, dict) else {}


def epoch_rows(raw: pd.DataFrame, trial_id: str, params: dict[str, Any]) -> pd.DataFrame:
    """A trial's own epoch records with the columns ``epochs.parquet`` adds when the trial
    ends: its id, grid cell, the running epoch count and the search's clock (0 while
    pretraining, then 1, 2, ... through pruning and finetuning, as
    :func:`s2ap.tune.clock.search_epoch` counts it: finetuning continues after the pruning
    epochs the trial ran)."""
    if raw.empty or "phase" not in raw or "epoch" not in raw:
        return pd.DataFrame()
    df = raw.reset_index(drop=True).copy()
    cell = params.get("cell")
    df["trial_id"] = trial_id
    df["grid_cell"] = int(cell) if isinstance(cell, int | float) and not isinstance(cell, bool) else 0
    df["global_epoch"] = range(1, len(df) + 1)
    pruned = int((df["phase"] == "prune").sum())
    epoch = df["epoch"].astype(int)
    df["search_epoch"] = [
        e + 1 if p == "prune" else pruned + e + 1 if p == "finetune" else 0
        for p, e in zip(df["phase"], epoch, strict=True)
    ]
    return df
