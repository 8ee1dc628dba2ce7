"""One trial = one run of the pipeline, launched from a Tune function trainable.

Two paths, one trial body (:func:`run_trial`):

* **one worker** (``resources.workers == 1``): the pipeline runs right inside the Tune
  trainable's actor, with no Train worker group and no process group. Each epoch it calls
  ``tune.report`` with its metrics and a checkpoint (a folder holding the epoch's ``state.pt``
  and the epochs that counted so far). Reporting is synchronous: the training thread waits
  inside ``tune.report`` until the driver has judged the result, so an ASHA stop ends the
  thread there (Tune's ``SystemExit(0)``) and training never runs on in a reused actor.
  Tune's ``FailureConfig`` retries a trial whose actor died, handing the last checkpoint back
  through ``tune.get_checkpoint()``; actors are reused between trials;
* **2+ workers**: the trainable runs a Ray Train V2 ``TorchTrainer`` (DDP over gloo on CPU,
  NCCL on GPU) whose every worker runs the same trial body; rank 0 attaches the checkpoints,
  Train's :class:`~ray.tune.integration.ray_train.TuneReportCallback` forwards them to Tune.
  A worker fault restarts the worker group from Train's last checkpoint; a dead controller
  fails the trainable, and Tune's retry resumes the same Train run from its storage.

Either way ASHA reads ``val_pgd_acc`` at ``search_epoch``; a NaN loss
(:class:`s2ap.errors.TrainingDiverged`) is written next to the trial, never retried, and the
trial ends with a final report carrying ``diverged`` (the tables mark it an error, Optuna a
failed trial); pretraining is cached by content hash, and trials needing the same pretrained
model take its lock (:mod:`s2ap.pretrain_cache`) so it is computed once.

The search folder may be a local folder or an object store URI (:mod:`s2ap.storage`): notes
go there through ``pyarrow.fs``, Tune and Train get the URI's filesystem (:func:`storage_args`)
and upload each checkpoint folder, which is first written to a local scratch folder.

Where the files go is :mod:`s2ap.tune.layout`. Ray is imported only inside the functions
that run in a trial, so importing this module never loads it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from s2ap import storage
from s2ap.config import ExperimentConfig
from s2ap.distributed import DistInfo, resolve_device
from s2ap.errors import TrainingDiverged, raised_line
from s2ap.pipeline import run_experiment
from s2ap.pretrain_cache import PretrainLock
from s2ap.results import EPOCHS_FILE
from s2ap.tune.clock import search_epoch
from s2ap.tune.layout import (
    META,
    STATE,
    latest_checkpoint,
    read_divergence,
    record_epoch,
    record_worker,
    train_storage,
    trial_store,
    write_divergence,
    write_meta,
)
from s2ap.tune.spec import SearchSpec

log = logging.getLogger(__name__)


# A checkpoint folder (or None) and the metrics of one report: how a trial body reports,
# to Tune directly (one worker) or to Train (a DDP worker).
ReportFn = Callable[[dict[str, Any], Path | None], None]


class TrialFailed(RuntimeError):
    """The trial's Train run failed for good (retries used up); the message is the cause."""


def failure_reason(error: BaseException | None) -> str | None:
    """A trial's error as one line: the exception the trial raised (a :class:`TrialFailed`'s
    own reason, a ``ConfigError`` as the CLI prints it), never Ray's wrapper around it."""
    return raised_line(error)


def _plain(value: Any) -> Any:
    """Metrics Tune can serialise (no tensors, no numpy scalars)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# --------------------------------------------------------------------------- the trial body


class _Reporter:
    """The pipeline's per-epoch reporter: adds ASHA's clock, notes the epoch in the trial's
    store and hands metrics (rank 0: and a checkpoint folder) to ``report``."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        rank: int,
        run_dir: Path | None,
        lock: PretrainLock,
        store: str,
        report: ReportFn,
    ) -> None:
        self.cfg = cfg
        self.rank = rank
        self.run_dir = run_dir
        self.lock = lock
        self.store = store
        self.report = report
        self.last: dict[str, Any] | None = None

    def __call__(self, metrics: Mapping[str, Any], state_path: Path | None) -> None:
        m = {k: _plain(v) for k, v in metrics.items()}
        m["search_epoch"] = search_epoch(self.cfg, str(m["phase"]), int(m["epoch"]))
        m["final"] = False
        self.last = m
        if m["phase"] != "pretrain":
            self.lock.release()  # the cached checkpoint is written when pretraining ends
        if self.rank != 0 or state_path is None or self.run_dir is None:
            self.report(m, None)
            return
        record_epoch(self.store, m)
        with tempfile.TemporaryDirectory(dir=self.run_dir.parent) as tmp:
            folder = Path(tmp)
            _link_or_copy(Path(state_path), folder / STATE)
            if (self.run_dir / EPOCHS_FILE).exists():
                shutil.copy2(self.run_dir / EPOCHS_FILE, folder / EPOCHS_FILE)
            write_meta(folder, m, final=False)
            # One worker: blocks until the driver has judged this epoch; a stop raises
            # SystemExit(0) here, so nothing trains on after it.
            self.report(m, folder)


def _link_or_copy(src: Path, dst: Path) -> None:
    # The pipeline replaces state.pt atomically each epoch, so a hard link stays this epoch's.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="s2ap-trial-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def diverged_result(store: str, metric: str, last: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The final report of a trial that diverged (now or in an earlier attempt), else None."""
    reason = read_divergence(store)
    if reason is None:
        return None
    out = dict(last or {})
    out.setdefault(metric, None)  # Tune wants the ranked metric in every result
    return {**out, "final": True, "diverged": reason}


def run_trial(
    cfg: ExperimentConfig,
    store: str,
    checkpoint: Any,
    dist: DistInfo,
    cache: str | None,
    report: ReportFn,
    metric: str,
    assigned: torch.device | None = None,
) -> None:
    """One trial on one rank: resume from ``checkpoint`` (a Ray checkpoint or None), run the
    pipeline on the device Ray ``assigned`` this rank (if any), report every epoch and the
    final result through ``report``."""
    with _scratch() as work:
        resume_from: Path | None = None
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                meta = _read_meta(Path(folder))
                if meta.get("final"):
                    # Restarted after it had finished (the driver died before Tune noted it):
                    # hand the same final result and files to Tune again, run nothing.
                    final_dir = work / "final"
                    if dist.is_main:
                        shutil.copytree(folder, final_dir)
                    _report_final(dist.rank, meta["metrics"], final_dir, report)
                    return
                resume_from = work / STATE
                shutil.copy2(Path(folder) / STATE, resume_from)
        run_dir = work / "run" if dist.is_main else None
        device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")), assigned)
        lock = PretrainLock.acquire(cfg, cache, dist, device) if resume_from is None else PretrainLock()
        reporter = _Reporter(cfg, dist.rank, run_dir, lock, store, report)
        try:
            final = run_experiment(
                cfg, run_dir, reporter, resume_from=resume_from, pretrain_cache=cache, device=device
            )
        except TrainingDiverged as exc:
            write_divergence(store, f"training diverged: {exc}", dist.rank)
            if dist.world > 1:
                raise  # the other ranks are stuck in a collective: Train tears the group down
            result = diverged_result(store, metric, reporter.last)
            assert result is not None
            report(result, None)
            return
        finally:
            lock.release()
        metrics = dict(reporter.last or {"phase": "evaluate", "epoch": 0, "search_epoch": 0})
        metrics.setdefault("val_pgd_acc", final.get("final_val_pgd_acc"))  # validation, never test
        for key, value in final.items():
            if value is None or isinstance(value, bool | int | float | str):
                metrics[f"final_{key}"] = value
        metrics["final"] = True
        if dist.is_main:
            record_epoch(store, {"phase": "final"})
        _report_final(dist.rank, metrics, run_dir, report)


def _read_meta(folder: Path) -> dict[str, Any]:
    return json.loads((folder / META).read_text())


def _report_final(rank: int, metrics: Mapping[str, Any], folder: Path | None, report: ReportFn) -> None:
    if rank == 0 and folder is not None:
        write_meta(folder, dict(metrics), final=True)
        report(dict(metrics), folder)
    else:
        report(dict(metrics), None)


def _train_report(metrics: dict[str, Any], folder: Path | None) -> None:
    import ray.train

    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if folder else None)


def _tune_report(metrics: dict[str, Any], folder: Path | None) -> None:
    from ray import tune

    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder) if folder else None)


def train_worker(loop: dict[str, Any]) -> None:
    """Runs on every Train worker of a DDP trial. ``loop["config"]`` is the trial's frozen
    experiment config, validated once on the driver."""
    import ray
    import ray.train
    import ray.train.torch

    torch.set_num_threads(max(1, int(round(loop["threads"]))))
    ctx = ray.train.get_context()
    dist = DistInfo(ctx.get_world_rank(), ctx.get_world_size())
    store = loop["trial_store"]
    if read_divergence(store) is not None:
        return  # a retry of a diverged trial: the trainable reports the reason
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and loop.get("fallback_checkpoint"):
        fs, path = storage.locate(loop["fallback_checkpoint"])
        checkpoint = ray.train.Checkpoint(path, filesystem=fs)
    node = ray.get_runtime_context().get_node_id()
    record_worker(store, dist.rank, dist.world, node, checkpoint.path if checkpoint is not None else None)
    # The GPU Ray gave this worker (its rank's, whatever LOCAL_RANK says); the CPU without GPUs.
    assigned = ray.train.torch.get_device()
    run_trial(
        loop["config"],
        store,
        checkpoint,
        dist,
        loop["pretrain_cache"],
        _train_report,
        loop["metric"],
        assigned,
    )


# --------------------------------------------------------------------------- the trainable


def tune_trial(config: dict[str, Any], spec: SearchSpec, search_dir: str) -> None:
    """Tune function trainable: run one trial, in this actor (one worker) or as a
    TorchTrainer (2+ workers), to the end."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    store = trial_store(search_dir, trial_id)
    metric = spec.scheduler.metric
    result = diverged_result(store, metric, None)
    if result is not None:  # a retry of a trial that diverged: not run again
        tune.report(result)
        return
    cfg = spec.trial_config(config)  # the frozen config the trial runs, checked once
    if spec.resources.workers == 1:
        import ray

        torch.set_num_threads(max(1, int(round(spec.resources.cpus_per_worker))))
        checkpoint = tune.get_checkpoint()
        node = ray.get_runtime_context().get_node_id()
        record_worker(store, 0, 1, node, checkpoint.path if checkpoint is not None else None)
        run_trial(cfg, store, checkpoint, DistInfo(), spec.pretrain_cache, _tune_report, metric)
        return
    _fit_ddp(cfg, spec, search_dir, trial_id, store)
    result = diverged_result(store, metric, None)
    if result is not None:
        tune.report(result)


def _fit_ddp(cfg: ExperimentConfig, spec: SearchSpec, search_dir: str, trial_id: str, store: str) -> None:
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    res = spec.resources
    per_worker = res.per_worker()
    loop = {
        "config": cfg,
        "trial_store": store,
        "pretrain_cache": spec.pretrain_cache,
        "threads": res.cpus_per_worker,
        "metric": spec.scheduler.metric,
        "fallback_checkpoint": _drop_torn_snapshot(storage.join(train_storage(search_dir), trial_id)),
    }
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=loop,
        torch_config=TorchConfig(backend="nccl" if res.gpus_per_worker > 0 else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.workers, use_gpu=res.gpus_per_worker > 0, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=trial_id,  # same name + storage on a restart = resume from its checkpoints
            **storage_args(train_storage(search_dir)),
            failure_config=ray.train.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as exc:
        if read_divergence(store) is None:
            raise TrialFailed(_short(exc)) from None


def _drop_torn_snapshot(run: str) -> str | None:
    """Train writes its checkpoint list (``checkpoint_manager_snapshot.json``) in place: a
    controller killed mid-write leaves it torn, and every restart of that run then fails while
    loading it. Remove a torn list and hand back the newest checkpoint of the run, from which
    the workers resume instead; None when the list is intact or absent."""
    snapshot = storage.join(run, "checkpoint_manager_snapshot.json")
    if not storage.is_file(snapshot):
        return None
    try:
        json.loads(storage.read_bytes(snapshot))
        return None
    except (OSError, ValueError):
        log.warning(
            "%s is torn (its controller died while writing it): resuming from the newest checkpoint",
            storage.redact(snapshot),
        )
        storage.delete(snapshot)
    found = latest_checkpoint(run)
    return found[0] if found is not None else None


def storage_args(where: str) -> dict[str, Any]:
    """Ray's ``RunConfig`` arguments that put a run's files at ``where``: a local folder as
    it is; a URI as its path inside the filesystem built from this process's environment
    (never credentials: the SDK's own chain finds them on every node)."""
    if not storage.is_remote(where):
        return {"storage_path": where}
    fs, path = storage.locate(where)
    return {"storage_path": path, "storage_filesystem": fs}


def _short(exc: BaseException) -> str:
    """The one line of a (possibly huge, multi-worker) Train failure: what a worker raised."""
    return raised_line(exc) or type(exc).__name__
