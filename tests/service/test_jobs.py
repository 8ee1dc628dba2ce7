"""The job manager's promises with a fake cluster: write-ahead submission, reconciling after
a crash, rollback when Ray refuses, progress and best trial from ``trials.parquet``."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from s2ap import results
from s2ap.stats import wilson
from s2ap.tune.results import to_table, trials_schema
from service.cluster.runner import ClusterUnavailable, RayJobState
from service.errors import ApiError
from service.jobs import SUBMIT_GRACE_S, JobManager
from service.models import BestTrial
from service.progress import best_trial
from tests.helpers.service import FakeRunner


def test_submit_stores_the_resolved_spec_and_runs_the_cli(
    body: bytes, manager: JobManager, runner: FakeRunner
) -> None:
    job = manager.submit(body, "application/yaml", None).job
    assert job.status == "queued" and job.trials_total == 4
    spec_file = Path(job.spec_path)
    stored = yaml.safe_load(spec_file.read_text())
    # The stored spec names the folder the job writes to (the service decides it once); the
    # submitted storage (the default runs/tune) still places the shared pretraining cache.
    assert stored["storage"] == str(manager.settings.jobs_dir / job.id / "search")
    assert job.results_dir == str(Path(stored["storage"]) / stored["name"])
    assert stored["pretrain_cache"] == str(manager.root / "runs" / "tune" / "pretrain_cache")
    # The embedded Ray head runs on this machine: the search checks its data before any trial.
    assert runner.entrypoints[job.id] == f"python -m s2ap.tune {spec_file} --preflight"
    joined = JobManager(
        manager.settings.with_(ray_address="http://head:8265"), manager.store, runner, job_python="python"
    )
    assert not joined.entrypoint(job).endswith("--preflight")  # a cluster's data may be on its workers only
    manager.refresh(manager.get(job.id))
    assert manager.get(job.id).status == "running"


def test_a_refused_submission_leaves_no_record(body: bytes, manager: JobManager, runner: FakeRunner) -> None:
    def down(*args: Any, **kwargs: Any) -> bool:
        raise ClusterUnavailable("no cluster")

    runner.submit = down  # type: ignore[method-assign]
    with pytest.raises(ApiError) as info:
        manager.submit(body, "application/yaml", "key-1")
    assert info.value.status == 503
    assert manager.store.count() == 0
    assert not any(manager.settings.jobs_dir.iterdir())
    assert manager.store.get_by_key("key-1") is None  # the key is free for the retry


def test_a_store_that_refuses_the_row_leaves_no_job_folder(
    body: bytes, manager: JobManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What once left a folder without a row: SQLite refusing the insert (an integer past
    64 bits). Whatever fails after the folder is made, the folder goes with it."""

    def overflow(record: Any) -> Any:
        raise OverflowError("Python int too large to convert to SQLite INTEGER")

    monkeypatch.setattr(manager.store, "insert", overflow)
    with pytest.raises(OverflowError):
        manager.submit(body, "application/yaml", None)
    assert manager.store.count() == 0
    assert list(manager.settings.jobs_dir.iterdir()) == []


def test_a_job_that_never_reached_ray_is_submitted_on_reconcile(
    body: bytes, manager: JobManager, runner: FakeRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = manager.submit(body, "application/yaml", None).job
    del runner.jobs[job.id]  # as if the service died between storing and submitting
    manager.reconcile()
    assert job.id not in runner.jobs  # too young: its POST may still be submitting it
    monkeypatch.setattr(time, "time", lambda: job.submitted_at + SUBMIT_GRACE_S + 1)
    manager.reconcile()
    assert job.id in runner.jobs
    assert manager.get(job.id).status == "queued"


def test_a_job_the_cluster_forgot_fails_with_a_reason(
    body: bytes, manager: JobManager, runner: FakeRunner
) -> None:
    job = manager.submit(body, "application/yaml", None).job
    manager.refresh(manager.get(job.id))
    del runner.jobs[job.id]  # the cluster restarted
    manager.refresh(manager.get(job.id))
    lost = manager.get(job.id)
    assert lost.status == "failed" and "restarted" in (lost.error or "")


def test_failure_reason_comes_from_the_cli_error_line(
    body: bytes, manager: JobManager, runner: FakeRunner
) -> None:
    job = manager.submit(body, "application/yaml", None).job
    runner.finish(job.id, "FAILED", "Job entrypoint command failed with exit code 2")
    runner.logs = lambda job_id: "starting\nerror: resources.workers: do not fit this cluster\n"  # type: ignore[method-assign]
    manager.refresh(manager.get(job.id))
    failed = manager.get(job.id)
    assert failed.status == "failed"
    assert failed.error == "error: resources.workers: do not fit this cluster"
    assert failed.finished_at is not None and failed.started_at is not None


def test_cancel_after_the_job_ended_on_its_own_is_a_conflict(
    body: bytes, manager: JobManager, runner: FakeRunner
) -> None:
    job = manager.submit(body, "application/yaml", None).job
    runner.finish(job.id, "SUCCEEDED")
    with pytest.raises(ApiError) as info:
        manager.cancel(job.id)
    assert info.value.status == 409
    assert manager.get(job.id).status == "succeeded"


def test_cancel_stops_the_job_and_is_idempotent(body: bytes, manager: JobManager, runner: FakeRunner) -> None:
    job = manager.submit(body, "application/yaml", None).job
    assert manager.cancel(job.id).status == "cancelled"
    assert runner.jobs[job.id].status == "STOPPED"
    assert manager.cancel(job.id).status == "cancelled"
    manager.refresh(manager.get(job.id))
    assert manager.get(job.id).status == "cancelled"


def _trial_row(
    trial_id: str, status: str, val_pgd: float | None, gamma: float, sparsity: float
) -> dict[str, Any]:
    return {
        "trial_id": trial_id,
        "search": "tiny",
        "grid_cell": 0,
        "status": status,
        "stopped_early": status == "stopped",
        "epochs_run": 3,
        "search_epochs_run": 2,
        "attempts": 1,
        "final_val_pgd_acc": val_pgd,
        **results.with_intervals(
            {"robust_acc": 0.3, "robust_acc_n": 360, "clean_acc": 0.9, "clean_acc_n": 360}
            | {"final_val_pgd_acc": val_pgd, "final_val_pgd_acc_n": 144}
        ),
        "robust_attack": "pgd",
        "config_hash": "h",
        "seed": 0,
        "code_version": results.code_version(),
        "s2ap_gamma": gamma,
        "prune_sparsity": sparsity,
    }


def test_progress_and_best_trial_follow_trials_parquet(
    body: bytes, manager: JobManager, runner: FakeRunner
) -> None:
    job = manager.submit(body, "application/yaml", None).job
    rows = [
        _trial_row("a", "ok", 0.40, 0.002, 0.8),
        _trial_row("b", "ok", 0.55, 0.004, 0.9),
        _trial_row("c", "stopped", None, 0.008, 0.9),
    ]
    results.write_table(to_table(rows, trials_schema()), Path(job.results_dir) / "trials.parquet")
    manager.refresh(manager.get(job.id))
    now = manager.get(job.id)
    assert now.trials == {"done": 3, "ok": 2, "stopped": 1, "errored": 0}
    assert now.best is not None
    assert {k: now.best[k] for k in ("trial_id", "metric", "value", "robust_acc", "clean_acc", "config")} == {
        "trial_id": "b",
        "metric": "final_val_pgd_acc",
        "value": 0.55,
        "robust_acc": 0.3,
        "clean_acc": 0.9,
        "config": {"prune.sparsity": 0.9, "s2ap.gamma": 0.004},
    }
    # Every figure of the best trial carries its points and 95% Wilson interval.
    for name, n in (("value", 144), ("robust_acc", 360)):
        interval = wilson(round(now.best[name] * n), n)
        assert now.best[f"{name}_n"] == n, name
        assert (now.best[f"{name}_lo"], now.best[f"{name}_hi"]) == pytest.approx((interval.lo, interval.hi))
    assert now.best["clean_acc_n"] == 360 and now.best["clean_acc_lo"] < 0.9 < now.best["clean_acc_hi"]
    assert now.best["robust_attack"] == "pgd"
    assert BestTrial(**now.best).value_n == 144  # the API's model carries them too
    assert b"".join(manager.results(job.id, "trials"))[:4] == b"PAR1"
    with pytest.raises(ApiError) as info:
        manager.results(job.id, "epochs")
    assert info.value.status == 409


def test_with_s2ap_storage_on_s3_results_progress_and_downloads_come_from_the_bucket(
    body: bytes, settings: Any, runner: FakeRunner, s3_bucket: str
) -> None:
    """``S2AP_STORAGE=s3://...``: the job's search writes under it, the pretraining cache is
    shared there, the poller reads progress and downloads stream from the bucket; the spec
    (and so restart reconciliation) stays in the data directory."""
    import pandas as pd

    from s2ap import storage
    from service.store import JobStore

    settings = settings.with_(storage=f"{s3_bucket}/service").check()
    manager = JobManager(settings, JobStore(settings.db_path), runner, job_python="python")
    job = manager.submit(body, "application/yaml", None).job
    stored = yaml.safe_load(Path(job.spec_path).read_text())
    assert stored["storage"] == f"{s3_bucket}/service/jobs/{job.id}/search"
    assert job.results_dir == f"{stored['storage']}/{stored['name']}"
    assert runner.entrypoints[job.id] == f"python -m s2ap.tune {job.spec_path} --preflight"
    assert (
        yaml.safe_load(Path(job.spec_path).read_text())["pretrain_cache"]
        == f"{s3_bucket}/service/pretrain_cache"
    )
    with pytest.raises(ApiError) as info:
        manager.results(job.id, "trials")
    assert info.value.status == 409
    rows = [_trial_row("a", "ok", 0.40, 0.002, 0.8), _trial_row("b", "ok", 0.55, 0.004, 0.9)]
    storage.write_table(to_table(rows, trials_schema()), f"{job.results_dir}/trials.parquet")
    manager.refresh(manager.get(job.id))
    assert manager.get(job.id).trials == {"done": 2, "ok": 2, "stopped": 0, "errored": 0}
    assert manager.get(job.id).best["trial_id"] == "b"
    import io

    got = pd.read_parquet(io.BytesIO(b"".join(manager.results(job.id, "trials"))))
    assert list(got["trial_id"]) == ["a", "b"]
    # A restarted service reconciles the job from its record and the bucket, as before.
    again = JobManager(settings, JobStore(settings.db_path), runner, job_python="python")
    again.cleanup_orphans()
    assert again.reconcile() == 1 and again.get(job.id).trials["done"] == 2


def test_s2ap_storage_that_cannot_work_is_one_line_at_startup(s3_endpoint: str, tmp_path: Path) -> None:
    from service.settings import Settings, SettingsError

    for value, says in (
        ("s3://no-such-bucket/x", "S2AP_STORAGE: bucket 'no-such-bucket'"),
        ("ftp://h/x", "S2AP_STORAGE: unknown storage scheme"),
        ("s3://AK:sup3rsecret@b/x", "S2AP_STORAGE: credentials in the URI are refused"),
    ):
        with pytest.raises(SettingsError) as info:
            Settings.from_env({"S2AP_API_TOKEN": "t", "S2AP_DATA_DIR": str(tmp_path), "S2AP_STORAGE": value})
        assert str(info.value).startswith(says) and "sup3rsecret" not in str(info.value)


def test_best_trial_breaks_ties_on_validation_never_on_test() -> None:
    # Equal validation PGD: the tie goes to validation clean accuracy although the other
    # trial has the higher test robust accuracy.
    tied = [
        {**_trial_row("test-better", "ok", 0.5, 0.002, 0.9), "final_val_clean_acc": 0.80, "robust_acc": 0.9},
        {**_trial_row("val-better", "ok", 0.5, 0.004, 0.9), "final_val_clean_acc": 0.85, "robust_acc": 0.1},
    ]
    for rows in (tied, tied[::-1]):
        best = best_trial(rows, ["s2ap.gamma"])
        assert best is not None and best["trial_id"] == "val-better"


def test_the_poller_follows_jobs_to_the_end(body: bytes, manager: JobManager, runner: FakeRunner) -> None:
    job = manager.submit(body, "application/yaml", None).job
    manager.start_polling()
    try:
        runner.finish(job.id, "SUCCEEDED")
        deadline = time.monotonic() + 10
        while manager.get(job.id).status != "succeeded" and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        manager.stop_polling()
    assert manager.get(job.id).status == "succeeded"


def test_states_map_from_ray(body: bytes, manager: JobManager, runner: FakeRunner) -> None:
    job = manager.submit(body, "application/yaml", None).job
    runner.jobs[job.id] = RayJobState("PENDING")
    manager.refresh(manager.get(job.id))
    assert manager.get(job.id).status == "queued"
    runner.jobs[job.id] = RayJobState("RUNNING")
    manager.refresh(manager.get(job.id))
    assert manager.get(job.id).status == "running"
    runner.jobs[job.id] = RayJobState("STOPPED", end_time=123.0)
    manager.refresh(manager.get(job.id))
    assert (manager.get(job.id).status, manager.get(job.id).finished_at) == ("cancelled", 123.0)


def test_a_submitted_storage_is_checked_then_replaced_by_the_jobs_own(
    manager: JobManager, runner: FakeRunner, tiny_spec: Callable[..., dict[str, Any]]
) -> None:
    """The service decides where a job writes once: a storage inside the data directory is
    accepted and replaced by the job's folder; one outside is refused as before."""
    for outside in ("/etc", "../elsewhere", "s3://bucket/x", "~/runs"):
        with pytest.raises(ApiError) as info:
            manager.submit(yaml.safe_dump(tiny_spec(storage=outside)).encode(), "application/yaml", None)
        assert (info.value.status, info.value.code, info.value.field) == (
            422,
            "path_outside_data_dir",
            "storage",
        )
    assert not runner.entrypoints and not list(manager.settings.jobs_dir.glob("*"))
    job = manager.submit(
        yaml.safe_dump(tiny_spec(storage="mine/tune")).encode(), "application/yaml", None
    ).job
    stored = yaml.safe_load(Path(job.spec_path).read_text())
    assert stored["storage"] == str(manager.settings.jobs_dir / job.id / "search") == job.spec["storage"]
    assert stored["pretrain_cache"] == str(manager.root / "mine" / "tune" / "pretrain_cache")
    assert not (manager.root / "mine").exists()  # nothing is written to the submitted storage


def test_a_job_stored_before_its_spec_named_its_folder_still_runs_with_out(
    manager: JobManager, body: bytes
) -> None:
    job = manager.submit(body, "application/yaml", None).job
    older = dataclasses.replace(job, spec={**job.spec, "storage": str(manager.root / "runs" / "tune")})
    assert manager.entrypoint(older).endswith(f" --out {job.results_dir} --preflight")


def test_progress_reads_a_trials_table_with_the_old_dotted_column_names(
    body: bytes, manager: JobManager, runner: FakeRunner
) -> None:
    """A table written before the columns were snake_case (``s2ap.gamma``) still gives the
    best trial's spec values."""
    job = manager.submit(body, "application/yaml", None).job
    rows = [_trial_row("a", "ok", 0.40, 0.002, 0.8), _trial_row("b", "ok", 0.55, 0.004, 0.9)]
    table = to_table(rows, trials_schema())
    old = {"s2ap_gamma": "s2ap.gamma", "prune_sparsity": "prune.sparsity"}
    table = table.rename_columns([old.get(n, n) for n in table.column_names])
    results.write_table(table, Path(job.results_dir) / "trials.parquet")
    manager.refresh(manager.get(job.id))
    assert manager.get(job.id).best["config"] == {"prune.sparsity": 0.9, "s2ap.gamma": 0.004}
