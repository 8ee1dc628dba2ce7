"""Helpers for tests and benchmarks: run the real service in a subprocess, or swap Ray out.

:class:`ServiceProcess` starts ``python -m service`` exactly as a user would (its own
process, a loopback port, the environment as settings), waits until it serves, and
stops it with a signal; :func:`stop_embedded_ray` then removes the embedded Ray head a
service keeps for unfinished jobs, and :func:`running_service` does all three for a test. :class:`FakeRunner` is a :class:`~service.cluster.runner.Runner`
that records jobs instead of running them, for checks of the HTTP layer (fuzzing) that
must never start a training.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from service.cluster.ray_head import EmbeddedRayHead, session_members
from service.cluster.runner import RayJobState
from tests.helpers.net import free_port


class ThreadedServer:
    """A real uvicorn server for ``app`` on a loopback port, in a background thread (for
    apps built in the test process, e.g. with a :class:`FakeRunner`)."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        import uvicorn

        self.port = port or free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


class ServiceProcess:
    """``python -m service`` on 127.0.0.1, its output in ``data_dir/service-N.log``; ``env``
    changes the inherited environment (a None value removes the variable)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        token: str | None,
        port: int | None = None,
        env: Mapping[str, str | None] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.token = token
        self.port = port or free_port()
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, timeout: float = 60.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def start(self, timeout_s: float = 300.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self.log_path = self.data_dir / f"service-{self.starts}.log"
        env = dict(os.environ)
        env.pop("RAY_ADDRESS", None)
        env["S2AP_DATA_DIR"] = str(self.data_dir)
        for key, value in self.env.items():  # None: unset (e.g. a token a fresh machine lacks)
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        if self.token:
            env["S2AP_API_TOKEN"] = self.token
        args = [sys.executable, "-m", "service", "--port", str(self.port)]
        if not self.token:
            args.append("--local-only")
        with open(self.log_path, "ab") as out:
            # Its own session, like a deployed service: no signal meant for the caller's
            # process group reaches it, and the scheduler weighs it apart from the caller.
            self.proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=Path(__file__).resolve().parents[2],  # the repository root
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"the service did not serve within {timeout_s:.0f}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int | None:
        """Signal the service (SIGTERM: graceful; SIGKILL: a crash) and wait for it."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        code = self.proc.returncode
        self.proc = None
        return code

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:] if self.log_path else ""
        except OSError:
            return ""


def stop_embedded_ray(data_dir: Path) -> list[int]:
    """Stop the Ray head recorded in ``data_dir`` and return the pids of its session still
    alive afterwards (empty when everything is gone)."""
    head = EmbeddedRayHead(Path(data_dir).resolve() / "ray")
    record = head.record()
    if record is None:
        return []
    head.stop()
    time.sleep(0.5)
    return session_members(record.pid)


@contextmanager
def running_service(
    data_dir: Path, *, token: str | None, env: Mapping[str, str | None] | None = None
) -> Iterator[ServiceProcess]:
    """A started :class:`ServiceProcess` on ``data_dir``; on leaving, the service is stopped,
    then the embedded Ray head it started, and an ``AssertionError`` names any process of the
    head's session still alive."""
    svc = ServiceProcess(data_dir, token=token, env=env)
    try:
        svc.start()
        yield svc
    finally:
        svc.stop()
        left = stop_embedded_ray(data_dir)
        assert not left, f"Ray processes left behind: {left}"


class FakeRunner:
    """Records submissions instead of running them; every job stays ``RUNNING`` until
    stopped. Thread-safe, since the poller and requests call it concurrently."""

    address = "fake://cluster"

    def __init__(self) -> None:
        self.jobs: dict[str, RayJobState] = {}
        self.entrypoints: dict[str, str] = {}
        self.reachable = True
        self._lock = threading.Lock()

    def submit(self, job_id: str, entrypoint: str, env: Mapping[str, str] | None = None) -> bool:
        with self._lock:
            if job_id in self.jobs:
                return False
            self.jobs[job_id] = RayJobState("RUNNING", start_time=time.time())
            self.entrypoints[job_id] = entrypoint
            return True

    def state(self, job_id: str) -> RayJobState | None:
        with self._lock:
            return self.jobs.get(job_id)

    def stop(self, job_id: str) -> bool:
        with self._lock:
            state = self.jobs.get(job_id)
            if state is None or state.terminal:
                return False
            self.jobs[job_id] = RayJobState("STOPPED", start_time=state.start_time, end_time=time.time())
            return True

    def finish(self, job_id: str, status: str = "SUCCEEDED", message: str | None = None) -> None:
        with self._lock:
            state = self.jobs[job_id]
            self.jobs[job_id] = RayJobState(status, message, state.start_time, time.time())

    def logs(self, job_id: str) -> str:
        with self._lock:
            return f"fake log of {job_id}\n" if job_id in self.jobs else ""

    def ping(self) -> bool:
        return self.reachable

    def nodes(self) -> list[dict[str, float]] | None:
        return [{"CPU": 4.0, "GPU": 0.0}]

    def close(self) -> None:
        pass


def listening_sockets(root_pid: int) -> list[tuple[int, str, str, int]]:
    """Every socket listening in ``root_pid``'s process tree and session (a Ray head: its
    daemons, workers and jobs' drivers): ``(pid, process name, address, port)``; TCP
    sockets in LISTEN, UDP sockets bound without a peer."""
    import psutil

    try:
        root = psutil.Process(root_pid)
        pids = {root_pid, *(p.pid for p in root.children(recursive=True)), *session_members(root_pid)}
    except psutil.NoSuchProcess:
        return []
    found = []
    for pid in sorted(pids):
        try:
            proc = psutil.Process(pid)
            name = proc.name()
            connections = proc.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for c in connections:
            listening = c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and not c.raddr)
            if listening and c.laddr:
                found.append((pid, name, c.laddr.ip, c.laddr.port))
    return found
