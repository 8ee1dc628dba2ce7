"""The credential throttle: wrong tokens counted per client address and overall, 429 with
Retry-After past the budget (even for the right token, which would otherwise tell a guesser
it guessed right), the right token answered again once the window has passed, and one log
line per throttle episode."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service import Settings, create_app
from service.settings import SettingsError
from service.throttle import CredentialThrottle
from tests.helpers.service import FakeRunner, ThreadedServer

TOKEN = "throttle-token-5d0b"
BUDGET, TOTAL, WINDOW_S = 10, 100, 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def throttle_events(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("credential throttle")]


def test_a_client_past_its_budget_waits_for_the_window(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    throttle = CredentialThrottle(BUDGET, TOTAL, WINDOW_S, clock=clock)
    caplog.set_level(logging.WARNING, "service.throttle")
    for _ in range(BUDGET - 1):
        throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") is None  # within the budget
    throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == WINDOW_S
    assert throttle.retry_after("10.0.0.2") is None  # another address is not held back
    clock.now += 45
    assert throttle.retry_after("10.0.0.1") == 15
    throttle.failed("10.0.0.1")  # an attempt counted while throttled (e.g. a race): no new line
    assert len(throttle_events(caplog)) == 1 and "10.0.0.1" in throttle_events(caplog)[0]
    clock.now += 15.5
    assert throttle.retry_after("10.0.0.1") is None  # the oldest failures left the window


def test_failures_from_many_addresses_meet_the_overall_budget(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    throttle = CredentialThrottle(BUDGET, TOTAL, WINDOW_S, clock=clock)
    caplog.set_level(logging.WARNING, "service.throttle")
    for i in range(TOTAL):
        assert throttle.retry_after(f"10.0.{i}.1") is None
        throttle.failed(f"10.0.{i}.1")  # one guess each: no address reaches its own budget
    assert throttle.retry_after("192.168.1.1") == WINDOW_S  # everyone waits, a newcomer too
    assert [m for m in throttle_events(caplog) if "all clients" in m] == [throttle_events(caplog)[0]]
    clock.now += WINDOW_S + 1
    assert throttle.retry_after("192.168.1.1") is None


def test_addresses_remembered_are_bounded() -> None:
    throttle = CredentialThrottle(2, 10**9, WINDOW_S, clock=Clock(), max_clients=100)
    for i in range(1000):
        throttle.failed(f"10.{i // 256}.{i % 256}.1")
    throttle.failed("10.9.9.9")
    throttle.failed("10.9.9.9")
    assert throttle.retry_after("10.9.9.9") == WINDOW_S  # the newest are kept
    assert len(throttle._failures) <= 101


def test_the_budget_is_a_setting() -> None:
    env = {"S2AP_API_TOKEN": "t", "S2AP_AUTH_FAILURES": "3", "S2AP_AUTH_FAILURES_TOTAL": "7"}
    settings = Settings.from_env({**env, "S2AP_AUTH_WINDOW_S": "30"})
    assert (settings.auth_failures, settings.auth_failures_total, settings.auth_window_s) == (3, 7, 30.0)
    with pytest.raises(SettingsError, match="S2AP_AUTH_FAILURES must be >= 1"):
        Settings.from_env({**env, "S2AP_AUTH_FAILURES": "0"})


# --------------------------------------------------------------------------- over HTTP


@dataclass
class Served:
    url: str
    clock: Clock


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """The app on a real server, its throttle on a clock the test moves (no sleeping)."""
    settings = Settings(api_token=TOKEN, data_dir=tmp_path, poll_interval_s=0.05)
    app = create_app(settings, runner=FakeRunner())
    clock = Clock()
    app.state.throttle = CredentialThrottle(
        settings.auth_failures, settings.auth_failures_total, settings.auth_window_s, clock=clock
    )
    with ThreadedServer(app) as srv:
        yield Served(srv.url, clock)


def test_wrong_sign_ins_meet_429_and_the_right_token_works_after_the_window(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "service.throttle")
    with httpx.Client(base_url=served.url, timeout=60) as c:
        answers = [c.post("/ui/login", data={"token": f"guess-{i}", "next": "/ui"}) for i in range(300)]
        statuses = [r.status_code for r in answers]
        assert statuses == [401] * BUDGET + [429] * (300 - BUDGET)
        retry = answers[-1].headers["retry-after"]
        assert retry.isdigit() and 1 <= int(retry) <= WINDOW_S
        assert "try again in" in answers[-1].text
        right = c.post("/ui/login", data={"token": TOKEN, "next": "/ui"})
        assert right.status_code == 429 and "s2ap_session" not in right.cookies  # no oracle while held
        served.clock.now += int(retry)
        right = c.post("/ui/login", data={"token": TOKEN, "next": "/ui"})
        assert right.status_code == 303 and right.cookies.get("s2ap_session")
    assert len(throttle_events(caplog)) == 1  # once, not per refused attempt


def test_wrong_bearer_tokens_meet_429_and_the_right_token_works_after_the_window(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "service.throttle")
    with httpx.Client(base_url=served.url, timeout=60) as c:
        answers = [c.get("/jobs", headers={"Authorization": f"Bearer guess-{i}"}) for i in range(300)]
        assert [r.status_code for r in answers] == [401] * BUDGET + [429] * (300 - BUDGET)
        last = answers[-1]
        assert last.json()["error"]["code"] == "too_many_attempts"
        assert last.json()["error"]["field"] == "header.authorization"
        right = {"Authorization": f"Bearer {TOKEN}"}
        assert c.get("/jobs", headers=right).status_code == 429
        assert c.get("/healthz").status_code == 200  # needs no token: never throttled
        served.clock.now += int(last.headers["retry-after"])
        assert c.get("/jobs", headers=right).status_code == 200
    assert len(throttle_events(caplog)) == 1


def test_a_missing_token_is_not_a_guess(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=60) as c:
        assert {c.get("/jobs").status_code for _ in range(3 * BUDGET)} == {401}
        assert c.get("/jobs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
