"""The OpenAPI schema fuzzed with schemathesis: no request, however odd, gets a 5xx, and
every answer is what the description says (schemathesis' checks, all of them: status codes,
media types, bodies and headers as documented, auth enforced, valid data accepted).

The server is the real app under uvicorn on a loopback port with a real SQLite store, but
with a fake runner: fuzzing generates *valid* specs too (``{"base": {}}`` is one, with 100
pretraining epochs), and the HTTP layer's robustness must not cost real trainings. The
Ray-backed path is covered by ``test_end_to_end.py``.

The cases come from schemathesis' strategies driven by hypothesis directly (one pytest test
per API operation), not from schemathesis' pytest plugin: the plugin reaches into pytest
internals that pytest releases change (pytest 9.2 broke it), while ``as_strategy`` is its
stable, documented API.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import CHECKS, load_all_checks  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from service import Settings, create_app  # noqa: E402
from tests.helpers.service import FakeRunner, ThreadedServer  # noqa: E402

TOKEN = "fuzz-token"


def _app(data_dir: Path) -> Any:
    return create_app(
        # The wrong-token checks below send more wrong tokens than the throttle's default
        # budget (tests/service/test_throttle.py tests the throttle itself).
        Settings(
            api_token=TOKEN,
            data_dir=data_dir,
            max_body_bytes=64 * 1024,
            auth_failures=10**6,
            auth_failures_total=10**6,
        ),
        runner=FakeRunner(),
    )


def _schema_document() -> dict[str, Any]:
    """The app's OpenAPI document, read without starting a server (collection time)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return _app(Path(tmp)).openapi()


SCHEMA = schemathesis.openapi.from_dict(_schema_document())
OPERATIONS = {op.ok().label: op.ok() for op in SCHEMA.get_all_operations()}
load_all_checks()
ALL_CHECKS = CHECKS.get_all()
# A spec the JSON Schema accepts can still break a rule between fields or name a file that
# is not there, which no schema can say: POST /jobs answers those 422 naming the field,
# where schemathesis expects schema-valid data to be taken. Every other check applies.
SEMANTIC = {"POST /jobs": [positive_data_acceptance]}


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    with ThreadedServer(_app(tmp_path_factory.mktemp("fuzz-data"))) as srv:
        yield srv


def content_type(response: Any) -> str:
    values = response.headers.get("content-type") or [""]
    return values[0] if isinstance(values, list) else str(values)


def test_every_operation_is_fuzzed() -> None:
    paths = {label.split(" ", 1)[1] for label in OPERATIONS}
    assert {"/healthz", "/jobs", "/jobs/{job_id}", "/jobs/{job_id}/cancel"} <= paths


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_no_request_gets_a_server_error(label: str, live_server: ThreadedServer) -> None:
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=OPERATIONS[label].as_strategy())
    def check(case: Any) -> None:
        response = case.call_and_validate(
            base_url=live_server.url,
            headers={"Authorization": f"Bearer {TOKEN}"},
            checks=ALL_CHECKS,
            excluded_checks=SEMANTIC.get(label, []),
            timeout=60,
        )
        assert response.status_code < 500, (
            f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text}"
        )
        if response.status_code >= 400:
            assert content_type(response).startswith("application/json"), response.text
            assert set(response.json()["error"]) == {"code", "message", "field"}
        if response.status_code == 422:
            assert response.json()["error"]["field"], response.text  # says what to fix

    check()


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_without_a_token_only_healthz_answers(label: str, live_server: ThreadedServer) -> None:
    @settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=OPERATIONS[label].as_strategy())
    def check(case: Any) -> None:
        response = case.call(base_url=live_server.url, headers={"Authorization": "Bearer wrong"}, timeout=60)
        if case.path == "/healthz":
            assert response.status_code == 200
        else:
            assert response.status_code in (401, 404, 405, 413, 422), response.text  # never 2xx, never 5xx
            assert response.status_code != 401 or response.json()["error"]["code"] == "unauthorized"

    check()


def test_the_fuzzed_server_left_a_consistent_store(live_server: ThreadedServer, tmp_path: Path) -> None:
    import httpx

    with httpx.Client(base_url=live_server.url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        page = c.get("/jobs", params={"limit": 100}).json()
        for item in page["items"]:
            assert c.get(f"/jobs/{item['id']}").status_code == 200
