"""Every request body is bounded as it streams: a chunked upload (no Content-Length) over
the limit is refused with 413 at the limit, on the API and on the web page's forms, and
the service's memory does not grow with the upload."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from service import Settings, create_app
from tests.helpers.net import free_port
from tests.helpers.service import FakeRunner, ThreadedServer

TOKEN = "body-limit-token-7c1e"
CAP = 64 * 1024  # S2AP_MAX_BODY_BYTES of the in-process service: small, so tests stay fast
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
BOUNDARY = "s2apboundary7f3a"


def chunked_post(
    port: int,
    path: str,
    headers: dict[str, str],
    prefix: bytes,
    filler: bytes,
    total: int,
    suffix: bytes = b"",
) -> tuple[int, str, int]:
    """POST ``prefix``, ``filler`` repeated to ``total`` bytes, then ``suffix``, with chunked
    transfer coding, the way an attacker streams; read the answer while sending. Returns the status,
    the answer's first bytes, and how many body bytes were sent before the service stopped
    listening (or all of them)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sent = 0

    def send() -> None:
        nonlocal sent
        try:
            sock.sendall(head.encode())
            size = len(prefix) + len(suffix)
            pieces = [prefix]
            while size < total:
                pieces.append(filler)
                size += len(filler)
            for piece in [*pieces, suffix]:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
            sock.sendall(b"0\r\n\r\n")
        except OSError:  # the service answered and closed: it read no further
            pass

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    answer = b""
    try:
        while data := sock.recv(65536):  # until the service closes the connection
            answer += data
    except OSError:
        pass
    sender.join(timeout=60)
    sock.close()
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    return status, answer.decode("latin-1", errors="replace"), sent


def multipart_prefix(csrf: str) -> bytes:
    """A submit form's CSRF field, then the start of a file part the filler continues."""
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="csrf"\r\n\r\n{csrf}\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.yaml"\r\n'
        "Content-Type: application/yaml\r\n\r\nname: x\n# "
    ).encode()


END = f"\r\n--{BOUNDARY}--\r\n".encode()  # the file part and the form end here


def signed_in(url: str) -> tuple[dict[str, str], str]:
    """A session cookie header and its CSRF token, as a browser holds them."""
    with httpx.Client(base_url=url, timeout=60) as c:
        assert c.post("/ui/login", data={"token": TOKEN, "next": "/ui"}).status_code == 303
        csrf = CSRF.search(c.get("/ui/submit").text)
        assert csrf is not None
        cookie = "; ".join(f"{k}={v}" for k, v in c.cookies.items())
    return {"Cookie": cookie}, csrf.group(1)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ThreadedServer]:
    settings = Settings(api_token=TOKEN, data_dir=tmp_path, poll_interval_s=0.05, max_body_bytes=CAP)
    with ThreadedServer(create_app(settings, runner=FakeRunner())) as srv:
        yield srv


def test_a_chunked_form_over_the_limit_is_refused_at_the_limit(served: ThreadedServer) -> None:
    cookie, csrf = signed_in(served.url)
    headers = {**cookie, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    total = 32 * 1000 * 1000  # more than socket buffers hold
    status, answer, sent = chunked_post(
        served.port, "/ui/submit", headers, multipart_prefix(csrf), b"x" * 8192, total, END
    )
    assert status == 413, answer[:500]
    assert "text/html" in answer and "limit" in answer
    assert sent < total  # the service stopped reading; the client could not send the rest


def test_a_chunked_spec_over_the_limit_is_refused_by_the_api(served: ThreadedServer) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/yaml"}
    total = 32 * 1000 * 1000
    status, answer, sent = chunked_post(served.port, "/jobs", headers, b"a: ", b"x" * 8192, total)
    assert status == 413, answer[:500]
    assert sent < total
    assert '"code":"body_too_large"' in answer


def test_a_chunked_sign_in_over_the_limit_is_refused(served: ThreadedServer) -> None:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    total = 32 * 1000 * 1000
    status, answer, sent = chunked_post(served.port, "/ui/login", headers, b"token=", b"x" * 8192, total)
    assert status in (400, 413), answer[:500]  # 400: the form parser's own 4 KB field limit came first
    assert sent < total


def test_a_declared_length_over_the_limit_is_refused_before_reading(served: ThreadedServer) -> None:
    cookie, csrf = signed_in(served.url)
    body = multipart_prefix(csrf) + b"x" * (3 * CAP) + END
    headers = {**cookie, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    r = httpx.post(f"{served.url}/ui/submit", content=body, headers=headers, timeout=60)
    assert r.status_code == 413 and "limit" in r.text


def test_a_form_within_the_limit_still_submits(served: ThreadedServer, tiny_spec) -> None:  # type: ignore[no-untyped-def]
    cookie, csrf = signed_in(served.url)
    spec = yaml.safe_dump(tiny_spec()).encode()
    files = {"file": ("spec.yaml", spec, "application/yaml")}
    r = httpx.post(f"{served.url}/ui/submit", data={"csrf": csrf}, files=files, headers=cookie, timeout=60)
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/jobs/s2ap-"), r.text[:500]


# --------------------------------------------------------------------------- memory

SERVE = """
import sys
from pathlib import Path

import uvicorn

from service import Settings, create_app
from tests.helpers.service import FakeRunner

token, data_dir, port = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
app = create_app(Settings(api_token=token, data_dir=data_dir), runner=FakeRunner())
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
"""


def peak_rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    assert found, status
    return int(found.group(1)) * 1024


def reset_peak(pid: int) -> None:
    """Linux: writing 5 to clear_refs resets VmHWM to the current resident size."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_a_60mb_chunked_upload_leaves_the_services_memory_bounded(tmp_path: Path) -> None:
    """The service (uvicorn, its own process, default limits) answers a 60 MB chunked upload
    to the submit form with 413, and its peak resident memory grows by less than 64 MB."""
    port = free_port()
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, TOKEN, str(tmp_path / "data"), str(port)],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the service did not start"
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        cookie, csrf = signed_in(url)
        reset_peak(proc.pid)
        before = peak_rss_bytes(proc.pid)
        headers = {**cookie, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
        total = 60 * 1000 * 1000
        status, answer, sent = chunked_post(
            port, "/ui/submit", headers, multipart_prefix(csrf), b"x" * 65536, total, END
        )
        grown = peak_rss_bytes(proc.pid) - before
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert status == 413, answer[:500]
    assert sent < total
    assert grown < 64 * 1024 * 1024, f"peak memory grew by {grown / 2**20:.1f} MiB"
