"""The web page in a real headless Chromium (Debian's ``chromium``, driven by Playwright's
Python API; no browser is downloaded): sign in, read a finished job's trials and figures,
cancel a running job after confirming, sign out, with no console error on the way, on a
desktop and on a phone-width window.

Screenshots of the job page are written to the test's temporary folder and, when
``S2AP_ARTIFACTS`` names a folder, copied there (``job-page-desktop.png``,
``job-page-phone.png``, ``jobs-list.png``).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("S2AP_CHROMIUM", "/usr/bin/chromium"))
if not CHROMIUM.is_file():
    pytest.skip(
        f"no chromium at {CHROMIUM}: install Debian's package (apt-get install chromium; .ci/run does) "
        "or point S2AP_CHROMIUM at a binary",
        allow_module_level=True,
    )

from playwright.sync_api import (  # noqa: E402
    Browser,
    ConsoleMessage,
    Page,
    Request,
    Response,
    expect,
    sync_playwright,
)

Service = Any  # tests/service/ui/conftest.py's Service
DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


class Problems:
    """Everything the page complained about: console errors and warnings, uncaught
    exceptions, failed requests and error responses, except the error status a step
    expects (a refused token answers 401, a refused spec 422: Chromium then logs "Failed
    to load resource" for that page, and only that message is let through)."""

    def __init__(self, page: Page) -> None:
        self.seen: list[str] = []
        self.allowed: set[int] = set()
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.seen.append(f"page error: {exc}"))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)

    @contextmanager
    def expecting(self, status: int) -> Iterator[None]:
        self.allowed.add(status)
        try:
            yield
        finally:
            self.allowed.discard(status)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type not in ("error", "warning"):
            return
        if any(f"responded with a status of {s} " in message.text for s in self.allowed):
            return
        self.seen.append(f"console {message.type}: {message.text}")

    def _failed(self, request: Request) -> None:
        # A page that reloads itself (a running job) can be left by a click in the same
        # moment: the browser then aborts the reload, which is no fault of the page.
        if request.is_navigation_request() and request.failure == "net::ERR_ABORTED":
            return
        self.seen.append(f"request failed: {request.url} {request.failure}")

    def _response(self, response: Response) -> None:
        if response.status >= 400 and response.status not in self.allowed:
            self.seen.append(f"HTTP {response.status}: {response.url}")


def _artifact(path: Path) -> None:
    target = os.environ.get("S2AP_ARTIFACTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(target) / path.name)


def _sign_in(page: Page, problems: Problems, service: Service, start: str) -> None:
    page.goto(service.url + start)
    expect(page).to_have_url(f"{service.url}/ui/login?next={start}")
    expect(page.locator("h1")).to_have_text("Sign in")
    with problems.expecting(401):
        page.fill("#token", "not the token")
        page.click("button[type=submit]")
        expect(page.locator("#token-error")).to_have_text("wrong token")
    page.fill("#token", service.token)
    page.click("button[type=submit]")
    expect(page).to_have_url(service.url + start)


def _images_loaded(page: Page) -> list[int]:
    return page.eval_on_selector_all("figure img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")


def test_sign_in_read_a_finished_job_cancel_a_running_one_sign_out(
    service: Service, browser: Browser, tmp_path: Path
) -> None:
    finished = service.submit()
    service.finish(finished)
    running = service.submit(service.spec(name="still-running"))
    assert service.wait(running, lambda j: j["status"] == "running")["status"] == "running"
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    problems = Problems(page)
    with service.api() as api:
        total = api.get(f"/jobs/{finished}").json()["trials"]["total"]
    assert total == len(service.trial_ids)

    _sign_in(page, problems, service, "/ui")
    rows = page.locator("table.jobs tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("still-running")  # newest first
    expect(rows.nth(0)).to_contain_text("running")
    expect(rows.nth(1)).to_contain_text("succeeded")
    expect(rows.nth(1)).to_contain_text(f"{total}/{total}")
    expect(rows.nth(1)).to_contain_text("n=100")  # best so far with its point count
    page.screenshot(path=str(tmp_path / "jobs-list.png"), full_page=True)
    _artifact(tmp_path / "jobs-list.png")

    # The finished job: trials, figures, the comparison, downloads.
    page.click(f"a[href='/ui/jobs/{finished}']")
    expect(page).to_have_url(f"{service.url}/ui/jobs/{finished}")
    trials = page.locator("#trials tbody tr")
    expect(trials).to_have_count(len(service.trial_ids))
    expect(page.locator("#trials tbody tr.best-row")).to_have_count(2)
    expect(trials.filter(has_text="t4-s2ap")).to_contain_text("yes (ASHA)")
    expect(page.locator("#compare")).to_contain_text("one seed: no spread")
    expect(page.locator("figure img")).to_have_count(3)
    assert all(width > 0 for width in _images_loaded(page)), "a figure did not render"
    expect(page.locator("#log")).to_contain_text(f"fake log of {finished}")
    with page.expect_download() as download:
        page.click(f"a[href='/ui/jobs/{finished}/trials.parquet']")
    assert download.value.suggested_filename == f"{finished}-trials.parquet"
    shot = tmp_path / "job-page-desktop.png"
    page.screenshot(path=str(shot), full_page=True)
    _artifact(shot)

    # A phone-width window: the page itself never scrolls sideways; wide tables scroll in place.
    page.set_viewport_size(PHONE)
    page.reload()
    expect(page.locator("#trials")).to_be_visible()
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"the page is {overflow}px wider than a phone"
    assert page.eval_on_selector("#trials", "t => t.parentElement.scrollWidth > t.parentElement.clientWidth")
    phone = tmp_path / "job-page-phone.png"
    page.screenshot(path=str(phone), full_page=True)
    _artifact(phone)
    page.set_viewport_size(DESKTOP)

    # Cancel the running job, after confirming.
    page.goto(f"{service.url}/ui/jobs/{running}")
    page.click("#cancel-link")
    expect(page.locator("h1")).to_have_text("Cancel this job?")
    assert service.fake.jobs[running].status == "RUNNING"  # asking is not cancelling
    page.click("#confirm-cancel")
    expect(page).to_have_url(f"{service.url}/ui/jobs/{running}")
    expect(page.locator("#job-status")).to_have_text("cancelled")
    assert service.fake.jobs[running].status == "STOPPED"
    expect(page.locator("#cancel-link")).to_have_count(0)

    # Sign out: every page is the sign-in form again.
    page.click("text=Sign out")
    expect(page).to_have_url(f"{service.url}/ui/login")
    page.goto(f"{service.url}/ui/jobs/{finished}")
    expect(page.locator("#token")).to_be_visible()
    expect(page.locator("#trials")).to_have_count(0)
    context.close()
    assert not problems.seen, "\n".join(problems.seen)


def test_submit_shows_the_error_beside_the_field_then_makes_the_job(
    service: Service, browser: Browser
) -> None:
    import yaml

    context = browser.new_context(viewport=PHONE)
    page = context.new_page()
    problems = Problems(page)
    _sign_in(page, problems, service, "/ui/submit")
    bad = service.spec()
    bad["base"]["prune"]["sparsity"] = 1.5
    with problems.expecting(422):
        page.fill("#spec", yaml.safe_dump(bad, sort_keys=False))
        page.click("#submit-form button[type=submit]")
        error = page.locator("#spec-error")
        expect(error).to_contain_text("base.prune.sparsity")
        expect(error).to_contain_text("must be in (0, 1)")
        expect(error.locator(".hit")).to_contain_text("sparsity: 1.5")
    page.fill("#spec", yaml.safe_dump(service.spec(name="from-the-form"), sort_keys=False))
    page.click("#submit-form button[type=submit]")
    expect(page.locator("h1")).to_contain_text("from-the-form")
    expect(page.locator("#job-status")).to_have_text(re.compile(r"\s*(queued|running)\s*"))
    job_id = page.url.rsplit("/", 1)[1]
    with service.api() as api:
        assert api.get(f"/jobs/{job_id}").json()["name"] == "from-the-form"
    assert job_id in service.fake.jobs  # handed to the cluster
    context.close()
    assert not problems.seen, "\n".join(problems.seen)
