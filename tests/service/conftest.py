"""What the service's unit tests share: the smallest valid search spec, and a job manager
on a fake cluster (a real SQLite store in a temporary data directory)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.jobs import JobManager
from service.settings import Settings
from service.store import JobStore
from tests.helpers.service import FakeRunner
from tests.helpers.specs import GAMMA, tiny_search

SPEC: dict[str, Any] = tiny_search(
    grid={"prune.sparsity": [0.8, 0.9]}, search={"s2ap.gamma": GAMMA}, num_samples=2
)


@pytest.fixture
def tiny_spec() -> Callable[..., dict[str, Any]]:
    """``tiny_spec(**changes)``: a fresh copy of :data:`SPEC` (2 grid cells x ``num_samples``)
    with top-level keys replaced."""

    def make(**changes: Any) -> dict[str, Any]:
        spec = copy.deepcopy(SPEC)
        spec.update(changes)
        return spec

    return make


@pytest.fixture
def body(tiny_spec: Callable[..., dict[str, Any]]) -> bytes:
    """:data:`SPEC` as a YAML request body."""
    return yaml.safe_dump(tiny_spec()).encode()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(api_token="t", data_dir=tmp_path, poll_interval_s=0.05)


@pytest.fixture
def runner() -> FakeRunner:
    return FakeRunner()


@pytest.fixture
def manager(settings: Settings, runner: FakeRunner) -> JobManager:
    return JobManager(settings, JobStore(settings.db_path), runner, job_python="python")
