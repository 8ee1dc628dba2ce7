import os
from collections.abc import Iterator

import pytest
import torch

from tests.helpers.net import free_port

# Two torch processes that both use every core slow each other down badly on small
# machines; tests run single-threaded unless told otherwise.
torch.set_num_threads(int(os.environ.get("S2AP_TEST_THREADS", "1")))


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
