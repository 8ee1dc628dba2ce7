"""One JSON error shape for every failure: ``{"error": {"code", "message", "field"}}``.

Clients branch on ``code`` (stable, snake_case), show ``message`` (one line that says what
was wrong and what is allowed) and point at ``field`` (dotted path into the spec, or
``query.limit`` / ``header.authorization`` style for the request itself). Bad input is
always a 4xx; only a bug or an unreachable cluster gives a 5xx.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class ApiError(Exception):
    """An expected failure with its HTTP status; raised anywhere, rendered by the handler."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers

    def __reduce__(self) -> tuple[type[ApiError], tuple[Any, ...]]:
        return ApiError, (self.status, self.code, self.message, self.field, self.headers)


def error_response(
    status: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(code=code, message=message, field=field))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


# Codes for the statuses Starlette raises itself (unknown route, wrong method, ...).
_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_attempts",
    503: "unavailable",
}

# Documented in the OpenAPI schema of every route that can answer with it.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or wrong bearer token"},
    404: {"model": ErrorBody, "description": "Unknown job id"},
    409: {"model": ErrorBody, "description": "Not possible in the job's current state"},
    413: {"model": ErrorBody, "description": "Request body over the size cap"},
    422: {"model": ErrorBody, "description": "Invalid request or spec; `field` names what is wrong"},
    429: {
        "model": ErrorBody,
        "description": "Too many wrong tokens from this address (or from all): retry after `Retry-After` seconds",
    },
    503: {"model": ErrorBody, "description": "The Ray cluster cannot be reached"},
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: ERROR_RESPONSES[s] for s in statuses}


def _field_of(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts) or "body"


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.field, exc.headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no such endpoint: {request.method} {request.url.path}"
    return error_response(exc.status_code, code, message, None, getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    field = _field_of(first.get("loc", ()))
    message = f"{field}: {first.get('msg', 'invalid')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return error_response(422, "invalid_request", message, field)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # A bug, not bad input: keep the traceback in the log, not in the response.
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal", "internal error; see the service log")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
