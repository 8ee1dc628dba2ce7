"""The pretraining cache: dense checkpoints shared by every trial (and later searches) that
needs the same pretrained model, in a local folder or on an object store.

An entry is ``pretrain-<key>.pt`` with ``key`` the content hash of everything pretraining
depends on (:func:`s2ap.experiment.pretrain_key`). Entries are written once, whole: locally
by rename, on an object store with one PUT (S3 and its kin show a reader the whole object or
nothing), so a reader never loads half a checkpoint.

Who pretrains (:class:`PretrainLock`):

* **local folder**: an exclusive ``flock`` on ``pretrain-<key>.lock``; the kernel drops it
  with the process, so a killed trial never leaves a stale lock. A one-process trial waits
  for it in the kernel and wakes the moment the holder lets go, right after the entry lands
  (a DDP trial's rank 0 polls, so its other ranks never sit long in a collective);
* **object store**: a *lease* object ``pretrain-<key>.lease`` naming its holder, rewritten by
  a heartbeat every :data:`HEARTBEAT_S`. A trial takes the lease when there is none, or when
  the one there has not changed for :data:`LEASE_TTL_S` on the trial's own clock (its holder
  died; no clocks are compared across nodes), then reads it back after
  :data:`SETTLE_S` and pretrains only if it still names it. Object stores offer no portable
  create-if-absent through ``pyarrow.fs``, so two trials can in a rare race both win; the
  lease only saves duplicate work, correctness does not rest on it: both compute the same
  content-addressed entry and each writes it with one PUT, the second replacing the first
  with an equivalent (on the same hardware identical) checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

import torch

from s2ap import storage
from s2ap.config import ExperimentConfig
from s2ap.distributed import DistInfo
from s2ap.experiment import phases, pretrain_key
from s2ap.io import on_cpu

log = logging.getLogger(__name__)

LOCK_POLL_S = 2.0
HEARTBEAT_S = 10.0
LEASE_TTL_S = 60.0
SETTLE_S = 1.0


def entry(cache: str, cfg: ExperimentConfig) -> str:
    """Where the pretrained checkpoint of ``cfg`` is (or will be) cached."""
    return storage.join(cache, f"pretrain-{pretrain_key(cfg)}.pt")


def load(where: str) -> dict[str, Any] | None:
    """A cached dense state dict, or None when there is none yet."""
    try:
        data = storage.read_bytes(where)
    except FileNotFoundError:
        return None
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def save(where: str, state: dict[str, Any]) -> None:
    """Write an entry whole (one PUT on an object store)."""
    buf = io.BytesIO()
    torch.save(on_cpu(state), buf)  # loads on a machine without the writer's device
    storage.write_bytes(where, buf.getvalue())


# --------------------------------------------------------------------------- the lease


class Lease:
    """Best-effort exclusive work on an object store (see the module docstring)."""

    def __init__(self, where: str, ttl: float = LEASE_TTL_S, beat: float = HEARTBEAT_S) -> None:
        self.where = where
        self.ttl = ttl
        self.beat = beat
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._seen: tuple[bytes | None, float] = (None, 0.0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> bytes | None:
        try:
            return storage.read_bytes(self.where)
        except FileNotFoundError:
            return None

    def _write(self, count: int) -> None:
        storage.write_json(self.where, {"owner": self.owner, "beat": count, "time": time.time()})

    def try_take(self, settle: float = SETTLE_S) -> bool:
        """Take the lease if it is free or stale; True when this process now holds it."""
        current = self._read()
        now = time.monotonic()
        if current is not None:
            if current != self._seen[0]:
                self._seen = (current, now)  # alive (or new to us): watch it for ttl seconds
                return False
            if now - self._seen[1] < self.ttl:
                return False
            log.warning("the lease %s has not moved for %.0f s: taking it over", self.where, self.ttl)
        self._write(0)
        time.sleep(settle)
        back = self._read()
        if back is None or json.loads(back).get("owner") != self.owner:
            self._seen = (back, time.monotonic())
            return False
        self._thread = threading.Thread(target=self._heartbeat, name="s2ap-lease", daemon=True)
        self._thread.start()
        return True

    def _heartbeat(self) -> None:
        count = 0
        while not self._stop.wait(self.beat):
            count += 1
            try:
                self._write(count)
            except Exception:  # noqa: BLE001 - a missed beat; the next one may succeed
                log.warning("could not renew the lease %s", self.where, exc_info=True)

    def release(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=self.beat + 5)
        self._thread = None
        with contextlib.suppress(Exception):
            storage.delete(self.where)


# --------------------------------------------------------------------------- the lock


class PretrainLock:
    """Held by rank 0 of the one trial that pretrains; released as soon as pretraining is
    over (first later epoch), or when the process dies (locally the kernel drops the
    ``flock``; on an object store the lease stops beating and goes stale)."""

    def __init__(self, fd: int | None = None, lease: Lease | None = None) -> None:
        self._fd = fd
        self._lease = lease

    @classmethod
    def acquire(
        cls, cfg: ExperimentConfig, cache: str | None, dist: DistInfo, device: torch.device
    ) -> PretrainLock:
        """Block until this trial may pretrain or the cached checkpoint exists. Every rank
        calls it: rank 0 polls and broadcasts the outcome with a cheap all-reduce, so no rank
        sits in a collective that could time out while another trial pretrains."""
        if cache is None or phases(cfg).pretrain == 0:
            return cls()
        cached = entry(cache, cfg)
        key = pretrain_key(cfg)
        lease = Lease(storage.join(cache, f"pretrain-{key}.lease")) if storage.is_remote(cache) else None
        fd: int | None = None
        waited = False
        while True:
            outcome = 0.0  # 0: wait, 1: this trial pretrains, 2: cached
            if dist.is_main:
                if storage.exists(cached):
                    outcome = 2.0
                elif lease is not None:
                    outcome = 1.0 if lease.try_take() else 0.0
                else:
                    # One process: sleep in the kernel until the holder lets go (it does once the
                    # entry is written), then look again; several ranks must not block there.
                    fd = _try_flock(cache, key, wait=dist.world == 1)
                    if fd is not None and storage.exists(cached):
                        fcntl.flock(fd, fcntl.LOCK_UN)
                        os.close(fd)
                        fd, outcome = None, 2.0
                    else:
                        outcome = 1.0 if fd is not None else 0.0
            outcome = dist.all_reduce_sum([outcome], device)[0]
            if outcome:
                if outcome == 1.0 and dist.is_main:
                    log.info("pretraining %s for every trial that shares it", key)
                return cls(fd, lease if outcome == 1.0 else None)
            if not waited:
                log.info("waiting for another trial to pretrain %s", key)
                waited = True
            time.sleep(LOCK_POLL_S)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._lease is not None:
            self._lease.release()
            self._lease = None


def _try_flock(cache: str, key: str, wait: bool = False) -> int | None:
    """The entry's lock, or None when another process holds it; ``wait`` blocks until it is free."""
    os.makedirs(cache, exist_ok=True)
    fd = os.open(os.path.join(cache, f"pretrain-{key}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
