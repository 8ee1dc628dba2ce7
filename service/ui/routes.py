"""``/ui``: the web page for people who run searches.

Server-rendered (Jinja2, autoescaped) pages over the same job manager the JSON API uses:
the jobs list, a submit form, one job with its trials, figures, Orig.-vs-S2AP table and log,
cancel, downloads. Sign-in trades the service token for a session cookie
(:mod:`service.ui.session`); every page but the sign-in form declares it as a dependency
(:data:`SignedIn`) and redirects there without one,
and every form that changes state carries the session's CSRF token (403 without it). The
pages work without JavaScript (a running job's pages then reload themselves); with it, a few
lines of the project's own script fetch the page again and swap in the parts that changed,
so the reader keeps their place. Nothing loads from another host (the
Content-Security-Policy allows this origin and inline ``data:`` images only).
"""

from __future__ import annotations

import io
import logging
import secrets
import tempfile
import zipfile
from pathlib import Path
from typing import Annotated, Any

import jinja2
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.datastructures import UploadFile

from s2ap import storage
from s2ap.report.load import ReportError
from service.body_limit import BodyTooLarge
from service.errors import ApiError
from service.jobs import JobManager
from service.progress import TRIALS_FILE
from service.settings import Settings
from service.specs import dump_yaml
from service.store import JobRecord
from service.throttle import client_address, throttle_of, too_many_message
from service.ui import forms as ui_forms
from service.ui import plots as ui_plots
from service.ui import session as ui_session
from service.ui import views as ui_views

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
REFRESH_S = 5
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
PARQUET = "application/vnd.apache.parquet"

router = APIRouter(prefix="/ui", include_in_schema=False)
templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
    )
)


def install(app: FastAPI) -> None:
    """Add the page, its static files and its session table to the app."""
    app.state.ui_sessions = ui_session.Sessions()
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")
    app.add_exception_handler(SignInFirst, _sign_in_first)
    app.include_router(router)


# --------------------------------------------------------------------------- helpers


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _jobs(request: Request) -> JobManager:
    return request.app.state.jobs


def _sessions(request: Request) -> ui_session.Sessions:
    return request.app.state.ui_sessions


def _session(request: Request) -> ui_session.Session | None:
    return _sessions(request).get(request.cookies.get(ui_session.COOKIE))


class SignInFirst(Exception):
    """A page asked for without a session: it answers with the sign-in form."""


async def _signed_in(request: Request) -> ui_session.Session:
    session = _session(request)
    if session is None:
        raise SignInFirst
    return session


async def _sign_in_first(request: Request, exc: Exception) -> Response:
    return _to_login(request)


# A page's signed-in session; without one the page redirects to the sign-in form (and back
# to this page afterwards; a refused form: back to the jobs).
SignedIn = Annotated[ui_session.Session, Depends(_signed_in)]


def _secure(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


def _page(
    request: Request,
    template: str,
    session: ui_session.Session | None,
    status: int = 200,
    refresh: bool = False,
    **context: Any,
) -> Response:
    context = {
        "session": session,
        "csrf_field": ui_session.CSRF_FIELD,
        "auth_required": _settings(request).auth_required,
        "refresh": REFRESH_S if refresh else None,
        "phone_max": ui_plots.PHONE_MAX_CSS_PX,
        **context,
    }
    return _secure(templates.TemplateResponse(request, template, context, status_code=status))


def _to_login(request: Request) -> Response:
    """The sign-in form, and back to this page afterwards (a refused form: the jobs)."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.method != "GET":
        target = "/ui"
    return _secure(RedirectResponse(ui_session.login_url(target), status_code=303))


def _see(url: str) -> Response:
    return _secure(RedirectResponse(url, status_code=303))


def _error(request: Request, session: ui_session.Session | None, status: int, message: str) -> Response:
    return _page(request, "error.html", session, status=status, message=message)


async def _checked_form(request: Request, session: ui_session.Session) -> tuple[Any, Response | None]:
    """The form of a signed-in session's state-changing POST, or the response that refuses
    it: no or a wrong CSRF token -> 403."""
    cap = _settings(request).max_body_bytes
    try:
        form = await request.form(max_files=1, max_fields=16, max_part_size=cap + 1)
    except BodyTooLarge as exc:  # service.body_limit stopped the read at the limit
        return None, _error(request, session, 413, f"the form is over the {exc.limit}-byte limit")
    except Exception as exc:  # starlette refuses malformed or oversized multipart bodies
        return None, _error(request, session, 400, f"the form could not be read: {exc}")
    offered = form.get(ui_session.CSRF_FIELD)
    if not ui_session.csrf_matches(session, offered if isinstance(offered, str) else None):
        log.warning("refused a %s %s without a valid CSRF token", request.method, request.url.path)
        return (
            form,
            _error(
                request,
                session,
                403,
                "this form is missing its security token; reload the page and try again",
            ),
        )
    return form, None


def _job(request: Request, job_id: str) -> JobRecord | None:
    try:
        return _jobs(request).get(job_id)
    except ApiError:
        return None


# --------------------------------------------------------------------------- sign in / out


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str = "/ui") -> Response:
    if _session(request) is not None:
        return _see(ui_session.safe_next(next))
    return _page(request, "login.html", None, next=ui_session.safe_next(next), error=None)


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    form = await request.form(max_files=0, max_fields=8, max_part_size=4096)
    token, target = form.get("token"), form.get("next")
    target = ui_session.safe_next(target if isinstance(target, str) else None)
    throttle, client = throttle_of(request), client_address(request)
    if (wait := throttle.retry_after(client)) is not None:  # not even checked: no oracle
        page = _page(request, "login.html", None, status=429, next=target, error=too_many_message(wait))
        page.headers["Retry-After"] = str(wait)
        return page
    if not ui_session.token_matches(_settings(request), token if isinstance(token, str) else None):
        log.warning("web sign-in refused: wrong token (from %s)", client)
        throttle.failed(client)
        return _page(request, "login.html", None, status=401, next=target, error="wrong token")
    _sessions(request).drop(request.cookies.get(ui_session.COOKIE))
    cookie, _ = _sessions(request).create()
    response = _see(target)
    ui_session.set_cookie(response, request, cookie)
    return response


@router.post("/logout")
async def logout(request: Request, session: SignedIn) -> Response:
    _, refused = await _checked_form(request, session)
    if refused is not None:
        return refused
    _sessions(request).drop(request.cookies.get(ui_session.COOKIE))
    response = _see("/ui/login")
    ui_session.clear_cookie(response, request)
    return response


# --------------------------------------------------------------------------- jobs


@router.get("", response_class=HTMLResponse)
async def jobs_page(request: Request, session: SignedIn, cursor: str | None = None) -> Response:
    try:
        items, next_cursor = _jobs(request).page(None, cursor, None)
    except ApiError as exc:
        return _error(request, session, exc.status, exc.message)
    rows = await run_in_threadpool(lambda: [ui_views.job_row(j) for j in items])
    running = any(not j.finished for j in items)
    return _page(
        request,
        "jobs.html",
        session,
        refresh=running,
        rows=rows,
        next_cursor=next_cursor,
        best_rule=ui_views.BEST_RULE,
    )


@router.get("/submit", response_class=HTMLResponse)
async def submit_form(request: Request, session: SignedIn) -> Response:
    return _page(request, "submit.html", session, key=secrets.token_urlsafe(16), text="", error=None)


@router.post("/submit", response_class=HTMLResponse)
async def submit(request: Request, session: SignedIn) -> Response:
    form, refused = await _checked_form(request, session)
    if refused is not None:
        return refused
    upload = form.get("file")
    data, name = None, None
    if isinstance(upload, UploadFile) and upload.filename:
        data, name = await upload.read(), upload.filename
    pasted = form.get("spec")
    spec = ui_forms.spec_from_form(pasted if isinstance(pasted, str) else None, name, data)
    key = form.get("idempotency_key")
    key = key if isinstance(key, str) and key else secrets.token_urlsafe(16)
    if len(spec.body) > _settings(request).max_body_bytes:
        limit = _settings(request).max_body_bytes
        error = ui_forms.FormError("body_too_large", f"the spec is over {limit} bytes", "body")
        return _page(request, "submit.html", session, status=413, key=key, text=spec.text, error=error)
    try:
        submitted = await run_in_threadpool(_jobs(request).submit, spec.body, spec.content_type, key)
    except ApiError as exc:
        where = ui_forms.excerpt(spec.text, ui_forms.locate(spec.text, exc.field))
        message = exc.message.removeprefix(f"{exc.field}: ")  # the form names the field itself
        error = ui_forms.FormError(exc.code, message, exc.field, where)
        if exc.code == "idempotency_key_reused":  # the form was sent before with another spec
            key = secrets.token_urlsafe(16)
        return _page(request, "submit.html", session, status=exc.status, key=key, text=spec.text, error=error)
    return _see(f"/ui/jobs/{submitted.job.id}")


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(request: Request, job_id: str, session: SignedIn) -> Response:
    job = _job(request, job_id)
    if job is None:
        return _error(request, session, 404, f"no job with id {job_id!r}")
    read = await run_in_threadpool(ui_views.tables, job)  # once: the view and the figures share it
    view = await run_in_threadpool(ui_views.job_view, job, read)
    figures = await run_in_threadpool(ui_plots.cached_figures, read)
    log_text, log_error = await run_in_threadpool(_log_tail, _jobs(request), job)
    return _page(
        request,
        "job.html",
        session,
        refresh=not job.finished,
        view=view,
        figures=figures,
        log_text=log_text,
        log_error=log_error,
        # The resolved spec as the log shows it: the data directory and storage by short names.
        spec_text=_jobs(request).short_paths(dump_yaml(job.spec)),
    )


def _log_tail(jobs: JobManager, job: JobRecord) -> tuple[str, str | None]:
    try:
        return jobs.logs(job.id, None), None
    except ApiError as exc:
        return "", exc.message


@router.get("/jobs/{job_id}/cancel", response_class=HTMLResponse)
async def cancel_confirm(request: Request, job_id: str, session: SignedIn) -> Response:
    job = _job(request, job_id)
    if job is None:
        return _error(request, session, 404, f"no job with id {job_id!r}")
    return _page(request, "cancel.html", session, job=job, row=ui_views.job_row(job))


@router.post("/jobs/{job_id}/cancel")
async def cancel(request: Request, job_id: str, session: SignedIn) -> Response:
    _, refused = await _checked_form(request, session)
    if refused is not None:
        return refused
    try:
        await run_in_threadpool(_jobs(request).cancel, job_id)
    except ApiError as exc:
        return _error(request, session, exc.status, exc.message)
    return _see(f"/ui/jobs/{job_id}")


# --------------------------------------------------------------------------- downloads


@router.get("/jobs/{job_id}/{table}.parquet")
async def download_table(request: Request, job_id: str, table: str, session: SignedIn) -> Response:
    if table not in ("trials", "epochs", "predictions"):
        return _error(request, session, 404, f"no table {table!r}: trials, epochs or predictions")
    try:
        data = await run_in_threadpool(_jobs(request).results, job_id, table)
    except ApiError as exc:
        return _error(request, session, exc.status, exc.message)
    headers = {"Content-Disposition": f'attachment; filename="{job_id}-{table}.parquet"'}
    # Streamed in chunks from the job's storage (a folder or an object store; Starlette
    # iterates the synchronous generator in its thread pool).
    return _secure(StreamingResponse(data, media_type=PARQUET, headers=headers))


@router.get("/jobs/{job_id}/report.zip")
async def download_report(request: Request, job_id: str, session: SignedIn) -> Response:
    job = _job(request, job_id)
    if job is None:
        return _error(request, session, 404, f"no job with id {job_id!r}")
    try:
        data = await run_in_threadpool(_report_zip, job)
    except ReportError as exc:
        return _error(request, session, 409, f"no report yet: {exc}")
    headers = {"Content-Disposition": f'attachment; filename="{job_id}-report.zip"'}
    return _secure(Response(data, media_type="application/zip", headers=headers))


def _report_zip(job: JobRecord) -> bytes:
    """``python -m s2ap.report`` on the job's tables, zipped: Table 1 (and 5) as markdown,
    the figures, and a note of what was skipped and why."""
    from s2ap.report import build_report

    results = job.results_dir  # a local folder or a storage URI: the report reads either
    if not storage.is_file(storage.join(results, TRIALS_FILE)):
        raise ReportError("no trial has finished yet")
    with tempfile.TemporaryDirectory(prefix="s2ap-ui-report-") as tmp:
        report = build_report([results], Path(tmp) / "report")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in report.files:
                archive.write(path, f"{job.id}-report/{path.name}")
            skipped = "".join(f"- {s}\n" for s in report.skipped) or "- nothing\n"
            archive.writestr(f"{job.id}-report/SKIPPED.md", "# Skipped\n\n" + skipped)
    return buffer.getvalue()
