"""Parse once: a spec checks each experiment config it derives once, parses each storage
location once, and its accessors and consumers never validate again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from s2ap import coerce, experiment, storage
from s2ap.config import ExperimentConfig
from s2ap.tune.spec import load_spec, spec_to_dict

QUICKSTART = Path(__file__).resolve().parents[2] / "search_spaces" / "quickstart.yaml"


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The hash of every config :func:`s2ap.experiment.check` validates."""
    seen: list[str] = []
    real = experiment.check

    def counting(cfg: ExperimentConfig) -> ExperimentConfig:
        seen.append(cfg.hash())
        return real(cfg)

    monkeypatch.setattr(experiment, "check", counting)
    return seen


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The field of every location :mod:`s2ap.storage` parses."""
    seen: list[str] = []
    real = storage._parse

    def counting(text: str, field: str) -> str:
        seen.append(field)
        return real(text, field)

    monkeypatch.setattr(storage, "_parse", counting)
    return seen


def test_loading_the_quickstart_spec_checks_each_distinct_config_once(checks: list[str]) -> None:
    spec = load_spec(QUICKSTART, nodes=None)
    # The base, the grid's cells and every cell's corners: each distinct one checked once.
    assert checks and len(checks) == len(set(checks))
    assert spec.base.hash() in checks
    assert {cfg.hash() for cfg in spec.corner_configs} <= set(checks)
    loaded = len(checks)
    # The accessors the search and the service use derive from what was checked.
    assert spec.max_warmup() >= 1 and spec.max_search_epochs() > spec.grace_period() >= 1
    assert spec.num_trials() == 6 and len(spec.cells()) == 2
    assert len(checks) == loaded


def test_a_spec_location_is_parsed_once_and_passes_through_after(parsed: list[str]) -> None:
    spec = load_spec(QUICKSTART, nodes=None)
    assert sorted(parsed) == ["pretrain_cache", "storage"]
    assert isinstance(spec.storage, storage.Location) and Path(spec.storage).is_absolute()
    assert storage.check(spec.storage, "storage") is spec.storage and len(parsed) == 2
    # Written out as plain strings (a spec.yaml the service stores and the CLI reads back).
    out: Any = yaml.safe_load(yaml.safe_dump(spec_to_dict(spec)))
    assert out["storage"] == str(spec.storage) and type(coerce.to_dict(spec.storage)) is str


def test_the_service_decides_a_jobs_storage_once_and_the_cli_needs_no_out(
    parsed: list[str], tmp_path: Path
) -> None:
    """A submitted storage is confined (the refusal users rely on) and then replaced by the
    job's folder before the spec is parsed: each location parsed once, and the stored spec
    alone tells the CLI where to write."""
    from service.jobs import JobManager
    from service.settings import Settings
    from service.store import JobStore
    from tests.helpers.service import FakeRunner
    from tests.helpers.specs import tiny_search

    settings = Settings(api_token="t", data_dir=tmp_path, poll_interval_s=0.05)
    runner = FakeRunner()
    manager = JobManager(settings, JobStore(settings.db_path), runner, job_python="python")
    job = manager.submit(yaml.safe_dump(tiny_search(storage="mine")).encode(), "application/yaml", None).job
    assert sorted(parsed) == ["pretrain_cache", "storage"]
    stored: Any = yaml.safe_load(Path(job.spec_path).read_text())
    assert load_spec(stored, nodes=None).search_dir == job.results_dir
    assert "--out" not in runner.entrypoints[job.id]
