"""``GET /openapi.json`` behind the token, and the schema made to say what the service does.

The API description is public only when ``S2AP_PUBLIC_DOCS`` says so (or when no token is
set, on loopback): otherwise it needs the bearer token like every endpoint but
``/healthz``, and the browser pages (``/docs``) are off, since a browser cannot send it.
Limits that come from settings (largest page, most log lines) are written into the
schema when the app is built, so a client generated from it sends what is accepted, and
every error response is described as the JSON it is.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from service.deps import Authorized
from service.settings import Settings

router = APIRouter(dependencies=[Authorized])
ERROR_BODY_REF = "#/components/schemas/ErrorBody"


@router.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


def describe(app: FastAPI, settings: Settings) -> None:
    """Have ``app.openapi()`` state the settings' maxima for ``limit`` and ``lines``, and
    every error as the JSON it is (FastAPI files a route's error responses under its
    success media type: ``text/plain`` for ``/logs``)."""
    maxima = {
        ("/jobs", "limit"): settings.max_page_size,
        ("/jobs/{job_id}/logs", "lines"): settings.max_log_tail_lines,
    }
    build = app.openapi

    def schema() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            for (path, name), maximum in maxima.items():
                for parameter in document["paths"][path]["get"].get("parameters", []):
                    if parameter["name"] == name:
                        _set_maximum(parameter["schema"], maximum)
            for item in document["paths"].values():
                for operation in item.values():
                    _errors_as_json(operation.get("responses", {}))
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = schema  # type: ignore[method-assign]


def _set_maximum(schema: dict[str, Any], maximum: int) -> None:
    """On the integer branch of ``schema`` (an optional parameter is ``anyOf: [int, null]``)."""
    for branch in schema.get("anyOf", [schema]):
        if branch.get("type") == "integer":
            branch["maximum"] = maximum


def _errors_as_json(responses: dict[str, Any]) -> None:
    for status, response in responses.items():
        content = response.get("content", {})
        refs = {media.get("schema", {}).get("$ref") for media in content.values()}
        if status[0] in "45" and refs == {ERROR_BODY_REF}:
            response["content"] = {"application/json": {"schema": {"$ref": ERROR_BODY_REF}}}
