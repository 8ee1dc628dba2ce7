"""One trial = one Ray Train V2 ``TorchTrainer`` run of the pipeline, launched from a Tune
function trainable.

Inside a trial:

* the trainable derives the trial's experiment from the spec once
  (:meth:`~s2ap.tune.spec.SearchSpec.trial_config`: base + grid values + searched values,
  validated whole) and hands that frozen config to every Train worker;
* every Train worker runs :func:`s2ap.pipeline.run_experiment` on it (DDP over gloo on CPU,
  NCCL on GPU); the pipeline all-reduces each epoch's metrics, every rank calls
  ``ray.train.report`` with them and rank 0 alone attaches a checkpoint (a folder holding the
  epoch's ``state.pt`` and the epochs that counted so far). Train's
  :class:`~ray.tune.integration.ray_train.TuneReportCallback` forwards rank 0's report to
  Tune, where ASHA reads ``val_pgd_acc`` at ``search_epoch``;
* a worker fault restarts the worker group from the checkpoint Train hands back
  (``FailureConfig``), whose ``state.pt`` goes to ``run_experiment(resume_from=...)``;
* a NaN loss (:class:`s2ap.errors.TrainingDiverged`) is written next to the trial, never
  retried, and raised in the trainable as :class:`TrialDiverged` so Tune records the trial
  as errored with its reason while the search goes on;
* pretraining is cached by content hash; trials needing the same pretrained model take a
  file lock so it is computed once, the others wait and load it.

Where the files go is :mod:`s2ap.tune.layout`. Ray is imported only inside the functions
that run in a trial, so importing this module never loads it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from s2ap.config import ExperimentConfig
from s2ap.distributed import DistInfo, resolve_device
from s2ap.errors import TrainingDiverged, error_line
from s2ap.experiment import phases, pretrain_key
from s2ap.pipeline import run_experiment
from s2ap.tune.clock import search_epoch
from s2ap.tune.layout import (
    DIVERGED,
    EPOCHS,
    META,
    STATE,
    read_divergence,
    record_worker,
    train_storage,
    trial_store,
    write_divergence,
    write_meta,
)
from s2ap.tune.spec import SearchSpec

log = logging.getLogger(__name__)

LOCK_POLL_S = 2.0


class TrialDiverged(RuntimeError):
    """The trial's loss turned NaN or infinite; the message is the reason."""


class TrialFailed(RuntimeError):
    """The trial's Train run failed for good (retries used up); the message is the cause."""


def own_reason(error: BaseException | None) -> str | None:
    """The reason of a :class:`TrialDiverged` or :class:`TrialFailed` that Tune wrapped (it
    may sit a few causes deep), else None."""
    exc, seen = error, 0
    while exc is not None and seen < 5:
        if isinstance(exc, TrialDiverged | TrialFailed):
            return str(exc)
        exc = getattr(exc, "cause", None) or exc.__cause__
        seen += 1
    return None


def failure_reason(error: BaseException | None) -> str | None:
    """A trial's error as one line: its own reason when it has one, else the last line."""
    if error is None:
        return None
    return own_reason(error) or error_line(error) or type(error).__name__


def _plain(value: Any) -> Any:
    """Metrics Tune can serialise (no tensors, no numpy scalars)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# --------------------------------------------------------------------------- pretrain lock


class PretrainLock:
    """An exclusive ``flock`` on ``<cache>/pretrain-<key>.lock`` held by rank 0 of the one
    trial that pretrains; released as soon as pretraining is over (first later epoch), or
    when the process dies. The kernel drops it with the process, so a killed trial never
    leaves a stale lock behind."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    @classmethod
    def acquire(
        cls, cfg: ExperimentConfig, cache_dir: str | None, dist: DistInfo, device: torch.device
    ) -> PretrainLock:
        """Block until this trial may pretrain or the cached checkpoint exists. Every rank
        calls it: rank 0 polls the lock and broadcasts the outcome with a cheap all-reduce,
        so no rank sits in a collective that could time out while another trial pretrains."""
        if cache_dir is None or phases(cfg).pretrain == 0:
            return cls(None)
        cache = Path(cache_dir)
        key = pretrain_key(cfg)
        cached = cache / f"pretrain-{key}.pt"
        fd: int | None = None
        waited = False
        while True:
            outcome = 0.0  # 0: wait, 1: this trial pretrains, 2: cached
            if dist.is_main:
                if cached.exists():
                    outcome = 2.0
                else:
                    cache.mkdir(parents=True, exist_ok=True)
                    fd = os.open(cache / f"pretrain-{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        outcome = 1.0
                    except BlockingIOError:
                        os.close(fd)
                        fd = None
            outcome = dist.all_reduce_sum([outcome], device)[0]
            if outcome:
                if outcome == 1.0 and dist.is_main:
                    log.info("pretraining %s for every trial that shares it", key)
                return cls(fd)
            if not waited:
                log.info("waiting for another trial to pretrain %s", key)
                waited = True
            time.sleep(LOCK_POLL_S)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


# --------------------------------------------------------------------------- the worker


class _Reporter:
    """The pipeline's per-epoch reporter inside a Train worker."""

    def __init__(self, cfg: ExperimentConfig, rank: int, run_dir: Path | None, lock: PretrainLock) -> None:
        self.cfg = cfg
        self.rank = rank
        self.run_dir = run_dir
        self.lock = lock
        self.last: dict[str, Any] | None = None

    def __call__(self, metrics: Mapping[str, Any], state_path: Path | None) -> None:
        import ray.train

        m = {k: _plain(v) for k, v in metrics.items()}
        m["search_epoch"] = search_epoch(self.cfg, str(m["phase"]), int(m["epoch"]))
        m["final"] = False
        self.last = m
        if m["phase"] != "pretrain":
            self.lock.release()  # the cached checkpoint is written when pretraining ends
        if self.rank == 0 and state_path is not None and self.run_dir is not None:
            with tempfile.TemporaryDirectory(dir=self.run_dir.parent) as tmp:
                folder = Path(tmp)
                _link_or_copy(Path(state_path), folder / STATE)
                if (self.run_dir / EPOCHS).exists():
                    shutil.copy2(self.run_dir / EPOCHS, folder / EPOCHS)
                write_meta(folder, m, final=False)
                ray.train.report(m, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(m)


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


def train_worker(loop: dict[str, Any]) -> None:
    """Runs on every Train worker of a trial. ``loop["config"]`` is the trial's frozen
    experiment config, validated once on the driver."""
    import ray
    import ray.train

    cfg: ExperimentConfig = loop["config"]
    torch.set_num_threads(max(1, int(round(loop["threads"]))))
    ctx = ray.train.get_context()
    dist = DistInfo(ctx.get_world_rank(), ctx.get_world_size())
    store = Path(loop["trial_store"])
    checkpoint = ray.train.get_checkpoint()
    node = ray.get_runtime_context().get_node_id()
    record_worker(store, dist.rank, dist.world, node, checkpoint.path if checkpoint is not None else None)
    if (store / DIVERGED).exists():
        return  # a retry of a diverged trial: the trainable reports the reason

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
                    _report_final(dist.rank, meta["metrics"], final_dir)
                    return
                resume_from = work / STATE
                shutil.copy2(Path(folder) / STATE, resume_from)
        run_dir = work / "run" if dist.is_main else None
        device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
        cache = loop["pretrain_cache"]
        lock = PretrainLock.acquire(cfg, cache, dist, device) if resume_from is None else PretrainLock(None)
        reporter = _Reporter(cfg, dist.rank, run_dir, lock)
        try:
            final = run_experiment(cfg, run_dir, reporter, resume_from=resume_from, pretrain_cache=cache)
        except TrainingDiverged as exc:
            write_divergence(store, f"training diverged: {exc}", dist.rank)
            if dist.world == 1:
                return
            raise  # the other ranks are stuck in a collective: Train tears the group down
        finally:
            lock.release()
        metrics = dict(reporter.last or {"phase": "evaluate", "epoch": 0, "search_epoch": 0})
        metrics.setdefault("val_pgd_acc", final.get("final_val_pgd_acc"))  # validation, never test
        for key, value in final.items():
            if value is None or isinstance(value, bool | int | float | str):
                metrics[f"final_{key}"] = value
        metrics["final"] = True
        _report_final(dist.rank, metrics, run_dir)


def _read_meta(folder: Path) -> dict[str, Any]:
    return json.loads((folder / META).read_text())


def _report_final(rank: int, metrics: Mapping[str, Any], folder: Path | None) -> None:
    import ray.train

    if rank == 0 and folder is not None:
        write_meta(folder, dict(metrics), final=True)
        ray.train.report(dict(metrics), checkpoint=ray.train.Checkpoint.from_directory(folder))
    else:
        ray.train.report(dict(metrics))


# --------------------------------------------------------------------------- the trainable


def tune_trial(config: dict[str, Any], spec: SearchSpec, search_dir: str) -> None:
    """Tune function trainable: build one trial's TorchTrainer and run it to the end."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    store = trial_store(search_dir, trial_id)
    store.mkdir(parents=True, exist_ok=True)
    res = spec.resources
    per_worker: dict[str, float] = {"CPU": res.cpus_per_worker}
    if res.gpus_per_worker > 0:
        per_worker["GPU"] = res.gpus_per_worker
    loop = {
        "config": spec.trial_config(config),  # the frozen config the workers run, checked once
        "trial_store": str(store),
        "pretrain_cache": spec.pretrain_cache,
        "threads": res.cpus_per_worker,
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
            storage_path=str(train_storage(search_dir)),
            failure_config=ray.train.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as exc:
        reason = read_divergence(store)
        if reason is not None:
            raise TrialDiverged(reason) from None
        raise TrialFailed(_short(exc)) from None
    reason = read_divergence(store)
    if reason is not None:
        raise TrialDiverged(reason)


def _short(exc: BaseException) -> str:
    """The last meaningful line of a (possibly huge, multi-worker) error."""
    failures = getattr(exc, "worker_failures", None)
    if failures:
        exc = next(iter(failures.values()))
    return error_line(exc) or type(exc).__name__
