"""Request dependencies, as ``Annotated`` aliases routes declare in their signatures.

They are ``async`` because they never block: FastAPI runs plain ``def`` dependencies in
its thread pool, a hop every request would pay.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.cluster.runner import Runner
from service.errors import ApiError
from service.jobs import JobManager
from service.settings import Settings
from service.throttle import client_address, throttle_of, too_many_message

# Declares the bearer scheme in the OpenAPI schema; the check itself is ours, so a missing
# or malformed header gets the same JSON 401 as a wrong token.
_bearer = HTTPBearer(auto_error=False, description="S2AP_API_TOKEN of the service")


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_jobs(request: Request) -> JobManager:
    return request.app.state.jobs


async def get_runner(request: Request) -> Runner:
    return request.app.state.runner


SettingsDep = Annotated[Settings, Depends(get_settings)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]
RunnerDep = Annotated[Runner, Depends(get_runner)]


async def require_token(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """``Authorization: Bearer <S2AP_API_TOKEN>``; skipped only for a local-only service
    started without a token (bound to loopback). Wrong tokens are counted; past the budget
    the client is answered 429 (:mod:`service.throttle`)."""
    if not settings.auth_required:
        return
    throttle, client = throttle_of(request), client_address(request)
    wait = throttle.retry_after(client)
    if wait is not None:
        raise ApiError(
            429,
            "too_many_attempts",
            too_many_message(wait),
            "header.authorization",
            {"Retry-After": str(wait)},
        )
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise ApiError(
            401,
            "unauthorized",
            "missing bearer token: send 'Authorization: Bearer <token>'",
            "header.authorization",
            challenge,
        )
    expected = (settings.api_token or "").encode()
    if not hmac.compare_digest(credentials.credentials.encode(), expected):
        throttle.failed(client)
        raise ApiError(401, "unauthorized", "wrong bearer token", "header.authorization", challenge)


Authorized = Depends(require_token)
