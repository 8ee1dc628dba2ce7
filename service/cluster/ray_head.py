"""The embedded default: a local Ray head the service starts when no ``RAY_ADDRESS`` is set.

The head is ``ray start --head --block`` in its own session, recorded in
``DATA_DIR/ray/head.json``. It is deliberately *not* tied to the service process: jobs
must outlive a service restart, so a new service attaches to the recorded head when it is
still alive, and the service stops the head on shutdown only when no job is unfinished.

Why these choices (Ray 2.60 on small machines):

* ``--block`` keeps one process that owns every Ray daemon; SIGTERM to it tears the whole
  node down (and with it each job's driver, which Ray kills when its supervisor dies).
  The command line and its environment come from :mod:`service.cluster.ray_cluster`, the one
  module that knows Ray.
* every port is picked free and the temp dir is private, so the head never collides with
  another Ray on the same machine (another user's ``ray.init()``, a test's cluster).
* every port listens on loopback only (GCS, raylet, dashboard and its agents, object
  manager, each worker's and each job driver's gRPC server): ``--node-ip-address
  127.0.0.1`` plus ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, without which Ray replaces
  the loopback address by the machine's outward one and binds all interfaces.
* once up, the head's session is weighted below the service's (autogroup nice 5,
  ``S2AP_RAY_AUTOGROUP_NICE``): trials use every idle cycle, but the service answers first.
  Not before it is up: on a loaded machine a starved raylet misses Ray's fixed 30 s
  registration deadline.
* token authentication is on (``RAY_AUTH_MODE=token``) with the machine's token or, on a
  fresh machine that has none, the service's own (``DATA_DIR/ray/auth_token``); the record
  names the token file, so a service re-attaching later sends the token the head has.
* logical CPUs are generous (default ``max(4, 2 x cores)``): trials oversubscribe a 2-core
  machine instead of deadlocking while they wait for each other's worker bundles.
* stopping never uses ``ray stop``: that kills every Ray process on the machine.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from s2ap.io import atomic_write_json
from service.cluster.ray_cluster import (
    ClusterToken,
    find_token,
    head_environment,
    head_launch,
    head_ready,
    is_head_command,
    own_token,
    read_token,
)

log = logging.getLogger(__name__)

_START_ATTEMPTS = 3
_SETTLE_S = 1.0  # the head must still run this long after it looked ready


@dataclass(frozen=True)
class HeadRecord:
    pid: int
    dashboard_url: str
    gcs_address: str
    temp_dir: str
    num_cpus: int
    started_at: float
    token_path: str | None = None  # None: RAY_AUTH_TOKEN (or a record from before tokens were kept)

    def token(self) -> ClusterToken | None:
        """The token this head runs with: its recorded file, else the one Ray would find."""
        recorded = read_token(self.token_path) if self.token_path else None
        return recorded or find_token()


def default_num_cpus() -> int:
    return max(4, 2 * (os.cpu_count() or 1))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def session_members(sid: int) -> list[int]:
    """Processes whose session is ``sid`` (the head and every daemon and worker it started)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name (which may hold spaces) start after the last ')'.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 3 and int(fields[3]) == sid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state = ""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        pass
    return state != "Z"


class EmbeddedRayHead:
    """Start, find and stop the service's own Ray head (one per data directory)."""

    def __init__(
        self,
        state_dir: Path,
        num_cpus: int | None = None,
        autogroup_nice: int = 5,
        storage_location: str | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.storage_location = storage_location  # S2AP_STORAGE: an object store's credentials pass
        self.num_cpus = num_cpus or default_num_cpus()
        self.autogroup_nice = autogroup_nice
        self.record_path = self.state_dir / "head.json"
        self.log_path = self.state_dir / "head.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ state

    def record(self) -> HeadRecord | None:
        try:
            return HeadRecord(**json.loads(self.record_path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def is_running(self, record: HeadRecord | None = None) -> bool:
        """The recorded head is our ``ray start`` (not a reused pid) and still alive."""
        record = record or self.record()
        if record is None or not _alive(record.pid):
            return False
        return is_head_command(_cmdline(record.pid), record.temp_dir)

    # ------------------------------------------------------------------ lifecycle

    def ensure(self, timeout_s: float = 180.0) -> HeadRecord:
        """A live head: the recorded one if it still runs, else a new one. Its
        ``dashboard_url`` and ``token()`` are what a job client needs."""
        record = self.record()
        if record is not None and self.is_running(record):
            log.info("attaching to the embedded Ray head (pid %d) at %s", record.pid, record.dashboard_url)
            self._wait_ready(record, timeout_s)
            return record
        if record is not None:
            log.info("the recorded Ray head (pid %d) is gone; starting a new one", record.pid)
            self._cleanup(record)
        for attempt in range(1, _START_ATTEMPTS + 1):
            try:
                return self._start(timeout_s)
            except RuntimeError as exc:
                # On a loaded machine the raylet can miss Ray's fixed registration deadline;
                # a second start usually makes it.
                if attempt == _START_ATTEMPTS:
                    raise
                log.warning(
                    "the embedded Ray head failed to start (%s); trying again", str(exc).splitlines()[0]
                )
        raise AssertionError("unreachable")

    def _start(self, timeout_s: float) -> HeadRecord:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        token = own_token(self.state_dir)
        # Unix socket paths are limited to ~107 bytes: Ray's session dir must stay short.
        temp_dir = tempfile.mkdtemp(prefix="s2ap-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
        launch = head_launch(self.num_cpus, temp_dir)
        log.info("starting an embedded Ray head with %d logical CPUs (log: %s)", self.num_cpus, self.log_path)
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(
                launch.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=head_environment(token, storage_location=self.storage_location),
                start_new_session=True,
                close_fds=True,
            )
        record = HeadRecord(
            pid=self._proc.pid,
            dashboard_url=launch.dashboard_url,
            gcs_address=launch.gcs_address,
            temp_dir=temp_dir,
            num_cpus=self.num_cpus,
            started_at=time.time(),
            token_path=str(token.path) if token.path is not None else None,
        )
        atomic_write_json(self.record_path, asdict(record))
        try:
            self._wait_ready(record, timeout_s)
        except BaseException:
            self.stop()
            raise
        log.info("embedded Ray head up: dashboard %s, GCS %s", record.dashboard_url, record.gcs_address)
        if self.autogroup_nice:
            _set_autogroup_nice(record.pid, self.autogroup_nice)
        return record

    def _wait_ready(self, record: HeadRecord, timeout_s: float) -> None:
        """Until the node is registered and the job API answers, and the head then stays up.

        ``ray start`` gives up (taking everything down) if registering takes over 30 s; so
        readiness is an alive node, confirmed by the head still running a moment later.
        """
        token = record.token()
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        ready_since: float | None = None
        while time.monotonic() < deadline:
            if not _alive(record.pid):
                raise RuntimeError(
                    f"the embedded Ray head exited while starting; see {self.log_path}:\n"
                    + _tail(self.log_path)
                )
            try:
                if ready_since is None:
                    if head_ready(record.dashboard_url, token):
                        ready_since = time.monotonic()
                elif time.monotonic() - ready_since >= _SETTLE_S:
                    return
            except Exception as exc:  # not up yet
                last = exc
            time.sleep(0.5)
        raise RuntimeError(f"the embedded Ray head did not become ready in {timeout_s:.0f}s ({last})")

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the recorded head and everything it started; forget it."""
        record = self.record()
        if record is None:
            return
        if self.is_running(record):
            log.info("stopping the embedded Ray head (pid %d)", record.pid)
            try:
                os.kill(record.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if self._proc is not None and self._proc.pid == record.pid:
                    if self._proc.poll() is not None:
                        break
                elif not _alive(record.pid):
                    break
                time.sleep(0.2)
        self._cleanup(record)

    def _cleanup(self, record: HeadRecord) -> None:
        # Anything left in the head's session (a worker that ignored SIGTERM) goes now. Linux
        # never hands out a pid still used as a session id, so the session is the head's,
        # unless a new process now owns the pid: then the head is long gone, sweep nothing.
        owner_is_other = _alive(record.pid) and not self.is_running(record)
        for _ in range(0 if owner_is_other else 20):
            left = session_members(record.pid)
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log.warning("the Ray head (pid %d) did not exit", self._proc.pid)
            self._proc = None
        shutil.rmtree(record.temp_dir, ignore_errors=True)
        try:
            self.record_path.unlink()
        except FileNotFoundError:
            pass


def _set_autogroup_nice(pid: int, nice: int) -> None:
    """Weigh the head's whole session (daemons and trials) below the service's.

    With Linux autogroup scheduling CPU is shared between sessions, not processes, so a
    trial's own niceness (Ray starts workers at 15) does not help a service in another
    session; the session's weight does. Set only once the head is up: a starved raylet
    misses Ray's 30 s registration deadline. Best effort (no autogroups, no permission).
    """
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))
        log.info("embedded Ray head session weighted at autogroup nice %d", nice)
    except OSError as exc:
        log.debug("could not set the Ray head's autogroup nice: %s", exc)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
