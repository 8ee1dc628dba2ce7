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


KEY_COLUMNS = ("Trial", "γ", "Status", "Val. PGD", "Test robust")
# The headers (all of them, or those named) that are not wholly in view: hidden, or past the
# right edge of the window or of the box the table scrolls in.
_OUT_OF_VIEW = """([sel, names]) => {
  const table = document.querySelector(sel);
  const box = table.parentElement.getBoundingClientRect();
  const right = Math.min(box.right, window.innerWidth);
  return [...table.querySelectorAll("thead th")]
    .filter(th => !names.length || names.includes(th.textContent.trim()))
    .filter(th => { const r = th.getBoundingClientRect();
                    return r.width === 0 || r.right > right + 0.5 || r.left < box.left - 0.5; })
    .map(th => th.textContent.trim());
}"""


def columns_out_of_view(page: Page, selector: str, names: tuple[str, ...] = ()) -> list[str]:
    headers = page.eval_on_selector_all(f"{selector} thead th", "ths => ths.map(th => th.textContent.trim())")
    missing = [n for n in names if n not in headers]
    assert headers and not missing, f"{selector}: headers {headers}, none named {missing}"
    return list(page.evaluate(_OUT_OF_VIEW, [selector, list(names)]))


# Every figure as shown: the SVG its <picture> chose (currentSrc) and the size it is shown at.
_FIGURE_BOXES = """() => [...document.querySelectorAll("figure img")].map(img => {
  const r = img.getBoundingClientRect();
  return {src: img.currentSrc, width: r.width, height: r.height, alt: img.alt.slice(0, 40)};
})"""
# Each figure's SVG laid out inline at that size (in a blank page: the job page's CSP would
# rightly refuse the SVG's inline styles), and each text's font size and height in CSS px.
_FIGURE_TEXT = r"""(boxes) => {
  const out = [];
  for (const box of boxes) {
    const b64 = box.src.slice(box.src.indexOf(",") + 1);
    const svgText = new TextDecoder().decode(Uint8Array.from(atob(b64), c => c.charCodeAt(0)));
    const holder = document.createElement("div");
    holder.innerHTML = svgText.slice(svgText.indexOf("<svg"));
    const svg = holder.querySelector("svg");
    svg.setAttribute("width", box.width); svg.setAttribute("height", box.height);
    document.body.appendChild(holder);
    const scale = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
    for (const t of svg.querySelectorAll("text")) {
      if (!t.textContent.trim()) continue;
      const size = parseFloat(getComputedStyle(t).fontSize) * scale;
      const r = t.getBoundingClientRect();
      const turned = /rotate\(-?90\)/.test(t.getAttribute("transform") || "");  // an axis label
      out.push({text: t.textContent.trim(), px: size, height: turned ? r.width : r.height, figure: box.alt});
    }
    holder.remove();
  }
  return out;
}"""


def smallest_figure_text(page: Page) -> list[dict[str, Any]]:
    """The figures' texts smaller than 10 CSS px as shown (none expected), after checking
    that there are texts and that they were measured at the size the page shows them."""
    boxes = page.evaluate(_FIGURE_BOXES)
    assert len(boxes) == 3 and all(b["width"] > 100 and b["src"].startswith("data:") for b in boxes), boxes
    blank = page.context.new_page()
    try:
        blank.set_content("<!doctype html><body style='margin:0'></body>")
        texts = blank.evaluate(_FIGURE_TEXT, boxes)
    finally:
        blank.close()
    assert len(texts) > 20, f"the figures hold only {len(texts)} texts"
    return [t for t in texts if t["px"] < 10 - 1e-6 or t["height"] < 10 - 1e-6]


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
    trials = page.locator("#trials tbody tr[data-trial]")  # each trial; a narrow screen adds a line
    expect(trials).to_have_count(len(service.trial_ids))
    expect(page.locator("#trials tbody tr.best-row")).to_have_count(2)
    expect(trials.filter(has_text="t4-s2ap")).to_contain_text("early (ASHA)")
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

    # A phone-width window: the page itself never scrolls sideways; the key columns fit.
    page.set_viewport_size(PHONE)
    page.reload()
    expect(page.locator("#trials")).to_be_visible()
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"the page is {overflow}px wider than a phone"
    assert not columns_out_of_view(page, "#trials", KEY_COLUMNS)
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


# --------------------------------------------------------------------------- a real search

ROOT = Path(__file__).resolve().parents[3]
DOCS = ROOT / "docs"  # the README's screenshots, rewritten by every run of the test below
REAL_TOKEN = "ui-live-token-51c2"


def live_spec() -> dict[str, Any]:
    """The quickstart's two grid cells at a small size, with enough pruning epochs that a
    trial runs for a while after its first one (so its row is seen running)."""
    import yaml

    spec = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    base = spec["base"]
    base["data"].update({"train_limit": 384, "test_limit": 96})
    base["attack"]["steps"] = 2
    base["pretrain"]["epochs"] = 4  # a model that has learnt something, for the screenshots
    base["prune"]["epochs"] = 20  # ~10-20 s: several of the page's 5 s updates
    base["finetune"]["epochs"] = 1
    base["s2ap"]["warmup_epochs"] = 1
    base["eval"].update({"pgd_steps": 2, "val_pgd_steps": 1, "val_limit": 64, "autoattack": False})
    return {**spec, "name": "ui-live", "scheduler": {"type": "fifo"}, "num_samples": 1}


@pytest.fixture(scope="module")
def real_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.helpers.service import running_service

    data_dir = tmp_path_factory.mktemp("ui-live-data")
    env = {"S2AP_POLL_INTERVAL_S": "0.5", "HOME": str(tmp_path_factory.mktemp("home"))}
    with running_service(data_dir, token=REAL_TOKEN, env=env) as svc:
        yield svc


def _signed_in_page(browser: Browser, service: Any, start: str, viewport: dict[str, int]) -> tuple[Any, Page]:
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    page.goto(service.url + start)
    page.fill("#token", service.token)
    page.click("button[type=submit]")
    expect(page).to_have_url(service.url + start)
    return context, page


def test_a_real_search_followed_live_then_read_at_desktop_and_phone_width(
    real_service: Any, browser: Browser
) -> None:
    """One real search: a trial's row appears ``running`` (with its epochs and validation
    figures) before it ends and turns ``ok`` in place; then, at 1280 and 390 px, every
    header of both tables in view (phone: the key ones), figure text >= 10 CSS px, the jobs
    list's columns on a phone, no server path in the log; the README's screenshots."""
    import httpx

    with real_service.client() as api:
        r = api.post("/jobs", json=live_spec())
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
    context, page = _signed_in_page(
        browser, real_service, f"/ui/jobs/{job_id}", {"width": 1280, "height": 900}
    )
    problems = Problems(page)
    page.evaluate("window.__notReloaded = true")  # gone if the page reloads instead of updating

    # A running trial, seen before it ends, with epochs so far and a validation figure with n.
    running = page.locator("#trials tbody tr[data-status=running]").filter(has_text="n=")
    expect(running.first).to_be_visible(timeout=240_000)
    trial = running.first.get_attribute("data-trial")
    assert trial
    row = page.locator(f"#trials tbody tr[data-trial='{trial}']")
    assert int(row.locator("td").nth(5).inner_text()) >= 0  # its search epochs so far
    with httpx.Client(base_url=real_service.url, timeout=30) as c:  # the jobs list meanwhile
        c.post("/ui/login", data={"token": real_service.token, "next": "/ui"})
        listing = c.get("/ui").text
    assert re.search(r"\d+ running</span>", listing) or "succeeded" in listing

    # The same row turns ok, on the same page (updated in place, not reloaded).
    expect(row).to_have_attribute("data-status", "ok", timeout=300_000)
    expect(page.locator("#job-status")).to_have_text(re.compile(r"\s*succeeded\s*"), timeout=300_000)
    expect(page.locator("#compare")).to_be_visible(timeout=30_000)
    assert page.evaluate("window.__notReloaded === true"), "the page reloaded instead of updating"
    expect(page.locator("#trials tbody tr[data-status=ok]")).to_have_count(2)
    expect(page.locator("figure img")).to_have_count(3, timeout=30_000)

    # 1280 px: no header of either table hidden; the figures' text readable.
    page.reload()
    assert not columns_out_of_view(page, "#trials"), "a trials column is hidden at 1280 px"
    assert not columns_out_of_view(page, "#compare"), "a comparison column is hidden at 1280 px"
    assert not smallest_figure_text(page)
    log_text = page.locator("#log").inner_text()
    assert str(real_service.data_dir) not in log_text and "/tmp/" not in log_text
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "ui-job-desktop.png"), full_page=True)

    # 390 px: the key columns in view, the figures drawn for the phone, the jobs list readable.
    page.set_viewport_size(PHONE)
    page.reload()
    page.screenshot(path=str(DOCS / "ui-job-phone.png"), full_page=True)
    assert not columns_out_of_view(page, "#trials", KEY_COLUMNS)
    assert not smallest_figure_text(page)
    assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 1
    page.goto(f"{real_service.url}/ui")
    for label in ("Best so far (%)", "Submitted"):
        cell = page.locator(f"table.jobs td[data-label='{label}']").first
        expect(cell).to_be_visible()
        box = cell.bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"] + 0.5, label
    context.close()
    assert not problems.seen, "\n".join(problems.seen)
