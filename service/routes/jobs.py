"""``/jobs``: submit a search spec, list and follow jobs, cancel, fetch results and logs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse, StreamingResponse
from starlette.requests import ClientDisconnect

from service.deps import Authorized, JobsDep, SettingsDep
from service.errors import ApiError, responses
from service.models import Job, JobDetail, JobPage
from service.store import JobStatus

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[Authorized], responses=responses(401, 429))

PARQUET = "application/vnd.apache.parquet"


def _spec_body_schema() -> dict[str, Any]:
    from s2ap.tune.spec import json_schema

    schema = json_schema()
    schema.pop("$schema", None)
    return {
        "required": True,
        "description": "A search spec, the same schema as `python -m s2ap.tune SPEC.yaml`",
        "content": {
            "application/json": {"schema": schema},
            "application/yaml": {"schema": {"type": "string", "description": "The spec as YAML text"}},
        },
    }


async def _capped_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` (before it is all read)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body_too_large", f"the body is {declared} bytes; at most {limit} are accepted")
    size = 0
    chunks: list[bytes] = []
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(
                    413, "body_too_large", f"the body is over {limit} bytes; at most {limit} are accepted"
                )
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(
            400, "client_disconnected", "the client went away before sending the whole body"
        ) from None
    return b"".join(chunks)


@router.post(
    "",
    status_code=201,
    response_model=Job,
    summary="Submit a search",
    responses={
        200: {"model": Job, "description": "An Idempotency-Key replay: the job the first request created"},
        **responses(409, 413, 422, 503),
    },
    openapi_extra={"requestBody": _spec_body_schema()},
)
async def submit_job(
    request: Request,
    response: Response,
    jobs: JobsDep,
    settings: SettingsDep,
    idempotency_key: Annotated[
        str | None,
        Header(alias="Idempotency-Key", description="Retrying with the same key returns the same job"),
    ] = None,
) -> Job:
    """Validate the spec (422 naming the field when it is wrong) and start it on the cluster
    as ``python -m s2ap.tune SPEC --out RESULTS``. Returns the job: 201 when created, 200
    with ``Idempotent-Replayed: true`` when an earlier request with the same
    ``Idempotency-Key`` and body created it."""
    body = await _capped_body(request, settings.max_body_bytes)
    submitted = await run_in_threadpool(
        jobs.submit, body, request.headers.get("content-type"), idempotency_key
    )
    response.headers["Location"] = f"/jobs/{submitted.job.id}"
    if not submitted.created:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return Job.of(submitted.job)


# Listing and status are async on purpose: they only read SQLite (microseconds, never
# blocked by a write in WAL mode), so they skip the thread pool hop that costs latency
# when a search keeps every core busy.
@router.get("", response_model=JobPage, summary="List jobs, newest first", responses=responses(422))
async def list_jobs(
    jobs: JobsDep,
    limit: Annotated[int | None, Query(ge=1, description="Page size (default S2AP_PAGE_SIZE)")] = None,
    cursor: Annotated[
        str | None,
        Query(pattern=r"^[1-9][0-9]{0,17}$", description="next_cursor of the previous page"),
    ] = None,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this state")] = None,
) -> JobPage:
    items, next_cursor = jobs.page(limit, cursor, status)
    return JobPage(items=[Job.of(j) for j in items], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobDetail, summary="One job", responses=responses(404))
async def get_job(job_id: str, jobs: JobsDep) -> JobDetail:
    """Status, times, trials done / total, best configuration and metric so far, error."""
    return JobDetail.of(jobs.get(job_id))


@router.post(
    "/{job_id}/cancel", response_model=Job, summary="Cancel a job", responses=responses(404, 409, 503)
)
def cancel_job(job_id: str, jobs: JobsDep) -> Job:
    """Stop the job on the cluster; its status becomes ``cancelled``. Cancelling a cancelled
    job is a no-op; a job that already succeeded or failed answers 409."""
    return Job.of(jobs.cancel(job_id))


@router.get(
    "/{job_id}/results",
    response_class=Response,
    summary="A result table as Parquet",
    responses={
        200: {
            "content": {PARQUET: {"schema": {"type": "string", "format": "binary"}}},
            "description": "The table; partial while the job runs",
        },
        **responses(404, 409, 422),
    },
)
def get_results(
    job_id: str,
    jobs: JobsDep,
    table: Annotated[Literal["trials", "epochs", "predictions"], Query(description="Which table")] = "trials",
) -> StreamingResponse:
    """``trials`` (one row per finished trial), ``epochs`` (one row per trial epoch) or
    ``predictions`` (one row per finished trial's headline test point: label and outcomes).
    Read it with ``pd.read_parquet(io.BytesIO(response.content))``. 409 until a trial ends."""
    return StreamingResponse(
        jobs.results(job_id, table),  # 404 / 409 raised before the first byte
        media_type=PARQUET,
        headers={"Content-Disposition": f'attachment; filename="{job_id}-{table}.parquet"'},
    )


@router.get(
    "/{job_id}/logs",
    response_class=PlainTextResponse,
    summary="The job's log tail",
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Log tail"},
        **responses(404, 422, 503),
    },
)
def get_logs(
    job_id: str,
    jobs: JobsDep,
    lines: Annotated[
        int | None, Query(ge=1, description="How many lines (default S2AP_LOG_TAIL_LINES)")
    ] = None,
) -> PlainTextResponse:
    return PlainTextResponse(jobs.logs(job_id, lines))
