"""``GET /healthz``: liveness, and whether the Ray cluster answers. No token needed, so a
load balancer or ``docker compose`` health check can call it; it reveals no addresses."""

from __future__ import annotations

from fastapi import APIRouter

from s2ap import __version__
from service.deps import RunnerDep, SettingsDep
from service.models import Health, RayHealth

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness and Ray reachability")
def healthz(runner: RunnerDep, settings: SettingsDep) -> Health:
    # Always 200 while the process serves: an unreachable cluster is reported, not fatal.
    return Health(version=__version__, ray=RayHealth(reachable=runner.ping(), embedded=settings.embedded_ray))
