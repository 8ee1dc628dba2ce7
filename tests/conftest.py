"""What every test shares: one torch thread, a fixed seed, moto's S3 server, and the two tiers.

Plain ``python -m pytest`` runs the fast tier: every test but those marked ``slow``. A test
is slow when it is marked so (multi-epoch training, subprocesses that import torch) or when
it starts something slow, which marks it by mechanism here, so new tests are sorted without
anyone remembering a mark: a test that starts Ray (``ray``: the Ray tests' shutdown fixture
or an explicit mark), drives chromium (``browser``: the ``browser`` fixture) or talks to
moto's S3 server (``s3``: the ``s3_endpoint`` fixture, under ``s3_bucket`` too) is also
``slow``. ``--all`` runs every test; a ``-m`` expression picks the tests itself (``-m slow``:
the slow tier alone; ``-m ray``: only the Ray tests), which is how ``.ci/run`` runs each
tier once after the README's commands.
"""

import os
from collections.abc import Iterator

import pytest
import torch

from tests.helpers.net import free_port

# Two torch processes that both use every core slow each other down badly on small
# machines; tests run single-threaded unless told otherwise.
torch.set_num_threads(int(os.environ.get("S2AP_TEST_THREADS", "1")))

# A fixture a test uses -> the mark it gets (each of these marks implies slow).
MARK_BY_FIXTURE = {"_ray_down": "ray", "browser": "browser", "s3_endpoint": "s3"}
SLOW_MARKS = ("ray", "browser", "s3")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--all",
        action="store_true",
        help="run every test: the fast tier and the slow one (Ray, browser, object store, training)",
    )


@pytest.hookimpl(tryfirst=True)  # before -m reads the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, mark in MARK_BY_FIXTURE.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(mark)
        if not item.get_closest_marker("slow") and any(item.get_closest_marker(m) for m in SLOW_MARKS):
            item.add_marker("slow")
        if item.get_closest_marker("gpu") and not torch.cuda.is_available():
            item.add_marker(
                pytest.mark.skip(reason="needs CUDA (benchmarks/bench_gpu_epoch.py --check runs it)")
            )
    if config.getoption("--all") or config.option.markexpr:
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        items[:] = [item for item in items if not item.get_closest_marker("slow")]
        config.hook.pytest_deselected(items=slow)
        config.stash[_SKIPPED_SLOW] = len(slow)


_SKIPPED_SLOW = pytest.StashKey[int]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    slow = config.stash.get(_SKIPPED_SLOW, 0)
    if slow:
        terminalreporter.write_line(
            f"fast tier: {slow} slow tests (Ray, browser, object store, training) not run; "
            "--all runs every test, -m slow only those"
        )


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's S3 server on loopback, and the standard AWS environment pointing at it (every
    process started from the test inherits it: Ray's workers too). Yields the endpoint URL."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    try:
        yield endpoint
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh bucket on the moto server: ``s3://<name>``."""
    import pyarrow.fs as pafs

    name = "s2ap-test"
    pafs.S3FileSystem(
        endpoint_override=s3_endpoint, scheme="http", region="us-east-1", allow_bucket_creation=True
    ).create_dir(name)
    return f"s3://{name}"
