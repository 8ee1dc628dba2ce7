"""The OpenAPI schema fuzzed with schemathesis: no request, however odd, gets a 5xx.

The server is the real app under uvicorn on a loopback port with a real SQLite store, but
with a fake runner: fuzzing generates *valid* specs too (``{"base": {}}`` is one, with 100
pretraining epochs), and the HTTP layer's robustness must not cost real trainings. The
Ray-backed path is covered by ``test_service.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

from service import Settings, create_app  # noqa: E402
from service.testing import FakeRunner, ThreadedServer  # noqa: E402

TOKEN = "fuzz-token"


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    data_dir = tmp_path_factory.mktemp("fuzz-data")
    app = create_app(Settings(api_token=TOKEN, data_dir=data_dir, max_body_bytes=64 * 1024), runner=FakeRunner())
    with ThreadedServer(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def api_schema(live_server: ThreadedServer) -> object:
    return schemathesis.openapi.from_url(f"{live_server.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


def content_type(response: schemathesis.Response) -> str:
    values = response.headers.get("content-type") or [""]
    return values[0] if isinstance(values, list) else str(values)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error(case: schemathesis.Case) -> None:
    response = case.call(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert response.status_code < 500, f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text}"
    if response.status_code >= 400:
        assert content_type(response).startswith("application/json"), response.text
        assert set(response.json()["error"]) == {"code", "message", "field"}


@schema.parametrize()
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
def test_without_a_token_only_healthz_answers(case: schemathesis.Case) -> None:
    response = case.call(headers={"Authorization": "Bearer wrong"}, timeout=60)
    if case.path == "/healthz":
        assert response.status_code in (200, 405)  # 405: schemathesis also tries other methods
    else:
        assert response.status_code in (401, 404, 405, 413, 422), response.text  # never 2xx, never 5xx
        assert response.status_code != 401 or response.json()["error"]["code"] == "unauthorized"


def test_the_fuzzed_server_left_a_consistent_store(live_server: ThreadedServer, tmp_path: Path) -> None:
    import httpx

    with httpx.Client(base_url=live_server.url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        page = c.get("/jobs", params={"limit": 100}).json()
        for item in page["items"]:
            assert c.get(f"/jobs/{item['id']}").status_code == 200
