"""The API's response bodies (what the OpenAPI schema documents and clients parse)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from service.store import JobRecord, JobStatus


class TrialCounts(BaseModel):
    done: int = Field(description="Trials finished in any way (ok, stopped early or errored)")
    total: int = Field(description="Trials the search will run: grid cells x samples")
    ok: int = 0
    stopped: int = Field(0, description="Stopped early by ASHA")
    errored: int = 0


class BestTrial(BaseModel):
    trial_id: str
    metric: str = Field(description="What trials are ranked by (validation PGD accuracy)")
    value: float | None
    robust_acc: float | None = Field(None, description="Test robust accuracy of that trial")
    clean_acc: float | None = None
    # Each figure's points and 95% Wilson interval: no accuracy without its n.
    value_n: int | None = Field(None, description="Validation points behind value")
    value_lo: float | None = None
    value_hi: float | None = None
    robust_acc_n: int | None = Field(None, description="Test points behind robust_acc")
    robust_acc_lo: float | None = None
    robust_acc_hi: float | None = None
    robust_attack: str | None = Field(None, description="What robust_acc is: autoattack or pgd")
    clean_acc_n: int | None = None
    clean_acc_lo: float | None = None
    clean_acc_hi: float | None = None
    config: dict[str, Any] = Field(description="Its grid and searched values, by dotted key")


class Job(BaseModel):
    id: str
    name: str = Field(description="The spec's name")
    status: JobStatus
    submitted_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    trials: TrialCounts
    best: BestTrial | None = Field(None, description="Best finished trial so far")
    error: str | None = Field(None, description="Why the job failed")

    @classmethod
    def of(cls, job: JobRecord) -> Job:
        counts = {"done": 0, **job.trials, "total": job.trials_total}
        return cls(
            id=job.id,
            name=job.name,
            status=job.status,  # type: ignore[arg-type]
            submitted_at=_ts(job.submitted_at),  # type: ignore[arg-type]
            started_at=_ts(job.started_at),
            finished_at=_ts(job.finished_at),
            trials=TrialCounts(**counts),
            best=BestTrial(**job.best) if job.best else None,
            error=job.error,
        )


class JobDetail(Job):
    spec: dict[str, Any] = Field(description="The validated spec the job runs, paths resolved")

    @classmethod
    def of(cls, job: JobRecord) -> JobDetail:
        return cls(**Job.of(job).model_dump(), spec=job.spec)


class JobPage(BaseModel):
    items: list[Job]
    next_cursor: str | None = Field(None, description="Pass as ?cursor= for the next (older) page")


class RayHealth(BaseModel):
    reachable: bool
    embedded: bool = Field(description="The service started this Ray head itself")


class Health(BaseModel):
    status: str = "ok"
    version: str
    ray: RayHealth


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=UTC)
