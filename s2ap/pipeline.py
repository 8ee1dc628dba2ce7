"""One experiment: ``pretrain -> prune -> finetune -> evaluate``.

Each phase is skippable (a pretrained checkpoint in, a mask in, zero epochs; which phases
train is :func:`s2ap.experiment.phases`). After every epoch the whole run state
(:class:`~s2ap.state.RunState`) is saved, the per-epoch table is rewritten and the reporter
is called with that epoch's metrics and the state file. Resuming from such a state
reproduces the uninterrupted run: every epoch reseeds its randomness from (seed, phase,
epoch), so no random stream depends on how many epochs ran in this process.

Which sharpness-aware perturbation wraps an epoch is the :class:`SharpnessSchedule`'s
answer, built once from the config; what is measured besides training lives in
:class:`~s2ap.probes.Probes`.

Under ``torch.distributed`` every rank runs this same code; gradients are all-reduced by
DDP (so masks are identical on every rank), metrics are all-reduced before reporting, and
only rank 0 writes files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset

from s2ap import layers as L
from s2ap import pretrain_cache as pcache
from s2ap import results, storage
from s2ap.config import ExperimentConfig, PhaseConfig
from s2ap.data import Splits, load_splits
from s2ap.distributed import DistInfo, ShardedBatches, resolve_device
from s2ap.errors import ConfigError
from s2ap.experiment import fast_settings, identity, phases
from s2ap.io import atomic_write, atomic_write_text
from s2ap.metrics import hamming
from s2ap.models import export_state_dict, from_config
from s2ap.objectives import build_objective
from s2ap.probes import Probes
from s2ap.pruning import PruningMethod, build_method
from s2ap.seeding import derive_seed
from s2ap.sharpness import SharpnessSchedule
from s2ap.state import BestMask, RunState
from s2ap.tensor_data import device_loader
from s2ap.train import build_optimizer, build_scheduler, compiled, on_device, train_epoch

log = logging.getLogger(__name__)

Reporter = Callable[[dict[str, Any], Path | None], None]


def _save_tensors(obj: Any, path: Path) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


class Pipeline:
    """Runs one experiment from a frozen, checked config. ``run()`` returns the final row."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        run_dir: str | Path | None = None,
        reporter: Reporter | None = None,
        resume_from: str | Path | None = None,
        progress: bool = False,
        pretrain_cache: str | Path | None = None,
        splits: Splits | None = None,
    ) -> None:
        self.cfg = cfg
        self.dist = DistInfo.current()
        self.is_main = self.dist.is_main
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.reporter = reporter
        self.progress = progress and self.is_main
        self.pretrain_cache = (
            None if pretrain_cache is None else storage.check(pretrain_cache, "pretrain_cache")
        )
        self.device = resolve_device(cfg.device)
        self.phases = phases(cfg)
        self.fast = fast_settings(cfg, self.device.type)  # bf16, channels_last, compile
        # Every row of this run starts with the same identity columns.
        self.identity = {**identity(cfg, self.device.type), "code_version": results.code_version()}

        self.splits = splits if splits is not None else load_splits(cfg.data, cfg.seed)
        info = self.splits.info
        self.method: PruningMethod = build_method(cfg)
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        size = cfg.data.image_size or info.image_size
        self.model = on_device(
            from_config(
                cfg.model, num_classes=info.num_classes, in_channels=info.in_channels, image_size=size,
                mean=info.mean, std=info.std, granularity=self.method.granularity,
            ), self.fast, self.device,
        )  # fmt: skip
        self.method.bind(self.model, (1, info.in_channels, size, size))  # checks + hooks, also on resume
        self.layers = [layer for _, layer in L.scored_layers(self.model)]
        self.objective = build_objective(cfg.objective, cfg.attack)
        self.schedule = SharpnessSchedule(
            cfg.s2ap,
            self.layers,
            own=lambda phase, epoch: self.method.on_epoch_start(self.model, phase, epoch),
            search_lr=cfg.prune.lr,
            finetune_lr=cfg.finetune.lr,
        )
        self.probes = Probes(
            cfg, self.model, self.layers, self.objective, self.splits, self.dist, self.device
        )
        self.state = RunState(config_hash=self.identity["config_hash"])
        self._opt_state: dict[str, Any] | None = None
        if resume_from is not None:
            self._resume(Path(resume_from))
        if self.run_dir is not None and self.is_main:
            atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    # ------------------------------------------------------------------ the run, top to bottom

    def run(self) -> dict[str, Any]:
        start = time.perf_counter() - self.state.wall_time_s
        for name, phase in (
            ("pretrain", self.pretrain),
            ("prune", self.prune),
            ("finetune", self.finetune),
            ("evaluate", self.evaluate),
        ):
            if name in self.state.done:
                continue
            if self.state.enter(name):
                self._opt_state = None
            self.state.wall_time_s = time.perf_counter() - start
            phase()
            self.state.done.append(name)
            self.state.wall_time_s = time.perf_counter() - start
            self._save_state()
        final = self._final_row(time.perf_counter() - start)
        if self.is_main and self.run_dir is not None:
            results.write_run(self.run_dir, final, self.state.final.get(results.PREDICTIONS))
        return final

    def pretrain(self) -> None:
        """The dense model: from a checkpoint, from the cache, or trained here."""
        L.set_mode(self.model, "dense")
        if self.cfg.pretrain.checkpoint is not None:
            self._load_dense(Path(self.cfg.pretrain.checkpoint))
            return
        if self.phases.pretrain == 0:
            return
        cached = None if self.pretrain_cache is None else pcache.entry(self.pretrain_cache, self.cfg)
        state = pcache.load(cached) if cached is not None and self.state.epoch == 0 else None
        if state is not None:
            log.info("pretrained checkpoint from cache %s", storage.redact(str(cached)))
            self._load_state(state, str(cached))
            return
        self._train("pretrain", self.cfg.pretrain, self._weights())
        if cached is not None and self.is_main:
            pcache.save(cached, L.dense_state_dict(self.model))

    def prune(self) -> None:
        """The mask: given, or searched (with S2AP after its warm-up), then frozen."""
        cfg, s2ap = self.cfg.prune, self.cfg.s2ap
        if self.state.epoch == 0 and self.state.first_mask is None:
            self.method.prepare(self.model)
            self.state.first_mask = {k: v.bool() for k, v in L.masks(self.model).items()}
        if cfg.mask is not None:
            L.load_masks(self.model, torch.load(cfg.mask, map_location="cpu", weights_only=True))
        elif self.phases.prune > 0:
            L.set_mode(self.model, "scores")
            self._train("prune", cfg, self.method.parameters(self.model))
            if self.state.best is None:  # no admissible candidate (HARP never met its budget)
                log.warning(
                    "no pruning epoch was admissible under best_mask=%r: returning the last one",
                    cfg.best_mask,
                )
                self._keep_best(float("inf"), self.phases.prune - 1, fallback=True)
            best = self.state.best
            assert best is not None
            with torch.no_grad():
                for layer, scores in zip(self.layers, best.scores, strict=True):
                    layer.scores.copy_(scores)
            self.method.load_state_dict(best.method or {})  # e.g. HARP's rates of that epoch
            if s2ap.enabled and best.epoch < s2ap.warmup_epochs:
                log.warning(
                    "the returned mask comes from pruning epoch %d, before S2AP began at epoch %d: "
                    "no S2AP epoch beat it under best_mask=%r, so this run's mask is the plain "
                    "method's",
                    best.epoch,
                    s2ap.warmup_epochs,
                    cfg.best_mask,
                )
            self.state.final.update(self.probes.loss_differences())
        self.method.finish_search(self.model)  # e.g. HARP meets its budget exactly
        L.freeze_masks(self.model)
        if self.is_main and self.run_dir is not None:
            _save_tensors(L.masks(self.model), self.run_dir / "masks.pt")
        # Table 5: the pruned pretrained model before any finetuning.
        metrics = self.probes.test_metrics(autoattack=False)
        for name, measured in (("mask_clean_acc", "clean_acc_full"), ("mask_robust_acc", "pgd_acc_full")):
            self.state.final[name] = metrics[measured]
            self.state.final[f"{name}_n"] = metrics[f"{measured}_n"]
        self.state.final["mask_robust_attack"] = "pgd"

    def finetune(self) -> None:
        """The kept weights, adversarially (with AWP when S2AP is on: Algorithm 2)."""
        if self.phases.finetune == 0:
            return
        L.set_mode(self.model, "fixed")
        self._train("finetune", self.cfg.finetune, self._weights())

    def evaluate(self) -> None:
        """The exported networks, then the test metrics."""
        if self.is_main and self.run_dir is not None:
            _save_tensors(export_state_dict(self.model), self.run_dir / "pruned_dense.pt")
            exported = self.method.export(self.model)  # channel pruning: the compact network
            if exported is not None:
                _save_tensors(exported[0], self.run_dir / "pruned_compact.pt")
                self.state.final.update(exported[1].as_dict())
        self.state.final.update(self.probes.final_validation())
        self.state.final.update(self.probes.test_metrics(autoattack=self.cfg.eval.autoattack))

    # ------------------------------------------------------------------ the epoch loop

    def _train(self, phase: str, cfg: PhaseConfig, params: list[nn.Parameter]) -> None:
        self._set_trainable(params)
        model = compiled(self.dist.wrap(self.model, self.device), self.fast["compile"])
        optimizer = build_optimizer(params, cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)
        scheduler = build_scheduler(optimizer, cfg.schedule, cfg.epochs)
        if self._opt_state is not None and self._opt_state.get("optimizer") is not None:
            optimizer.load_state_dict(self._opt_state["optimizer"])
            scheduler.load_state_dict(self._opt_state["scheduler"])
        self._opt_state = None
        n_train = len(self.splits.train)  # type: ignore[arg-type]
        batches = ShardedBatches(n_train, self.cfg.data.batch_size, shuffle=True, dist_info=self.dist)
        loader = self._loader(self.splits.train, batches)
        penalty = (lambda: self.method.penalty(self.model)) if phase == "prune" else (lambda: None)
        steps = len(batches.global_batches())

        for epoch in range(self.state.epoch, cfg.epochs):
            torch.manual_seed(derive_seed(self.cfg.seed, phase, epoch))
            batches.set_seed(derive_seed(self.cfg.seed, "data", phase, epoch))
            self.splits.seed_training(derive_seed(self.cfg.seed, "augment", phase, epoch))
            perturbation = self.schedule.for_epoch(phase, epoch)
            lambdas: list[float] = []
            hook, before_update = self._iteration_hooks(phase, epoch, steps, lambdas)
            lr = optimizer.param_groups[0]["lr"]
            res = train_epoch(
                model, loader, batches, self.objective, optimizer, self.device,
                perturbation=perturbation, penalty=penalty, on_iteration=hook, before_update=before_update,
                phase=phase, epoch=epoch, progress=self.progress, amp=self.fast["amp"],
            )  # fmt: skip
            scheduler.step()
            loss_sum, correct, n = self.dist.all_reduce_sum([res.loss_sum, res.correct, res.n], self.device)
            val_clean, val_pgd, val_n = self.probes.validate()
            row: dict[str, Any] = {
                "config_hash": self.identity["config_hash"],
                "seed": self.cfg.seed,
                "code_version": self.identity["code_version"],
                "phase": phase,
                "epoch": epoch,
                "train_loss": loss_sum / max(n, 1),
                "train_acc": correct / max(n, 1),
                "val_clean_acc": val_clean,
                "val_clean_acc_n": val_n,
                "val_pgd_acc": val_pgd,
                "val_pgd_acc_n": val_n,
                "hamming": None,
                "lambda_max": sum(lambdas) / len(lambdas) if lambdas else None,
                "s2ap_active": perturbation is not None,
                "perturbed_frac": res.perturbed_frac,
                "lr": lr,
                "time_s": res.time_s,
            }
            if phase == "prune":
                self.method.on_epoch_end(self.model, epoch)
                self._after_prune_epoch(epoch, row)
            self._end_epoch(row, optimizer, scheduler, cfg.epochs)

    def _iteration_hooks(
        self, phase: str, epoch: int, steps: int, lambdas: list[float]
    ) -> tuple[Callable[[int], None] | None, Callable[[torch.Tensor, int], None] | None]:
        """Per-iteration work of a pruning epoch: lambda_max, the method's own hook, and the
        per-iteration best mask (``train_loss_iter``: Algorithm 1, lines 13-15)."""
        if phase != "prune":
            return None, None
        lam = self.probes.lambda_max_hook(lambdas)

        def on_iteration(step: int) -> None:
            if lam is not None:
                lam(step)
            self.method.on_iteration(self.model, epoch, step, steps)

        if self._best_rule != "train_loss_iter":
            return on_iteration, None
        seen = [0]

        def before_update(loss: torch.Tensor, n: int) -> None:
            # The robust loss of the scores as they are now, before this iteration's update.
            total, count = self.dist.all_reduce_sum([float(loss) * n, n], self.device)
            iteration, seen[0] = seen[0], seen[0] + 1
            self._keep_best(total / max(count, 1), epoch, iteration)

        return on_iteration, before_update

    def _keep_best(
        self, score: float, epoch: int, iteration: int | None = None, fallback: bool = False
    ) -> None:
        """Copy the current scores when the method admits them and they beat the best so far
        (lower is better); ``fallback`` keeps them regardless."""
        best = self.state.best
        if not fallback and (not self.method.admissible() or (best is not None and not score < best.score)):
            return
        scores = [layer.scores.detach().clone().cpu() for layer in self.layers]
        self.state.best = BestMask(score, epoch, scores, self.method.state_dict(), iteration)

    def _after_prune_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        """The mask's distance to the first one, and whether these scores are the best yet."""
        assert self.state.first_mask is not None
        current = {k: v.bool() for k, v in L.masks(self.model).items()}
        row["hamming"] = hamming(self.state.first_mask, current)
        rule = self._best_rule
        if rule != "train_loss_iter":
            self._keep_best(-row["val_pgd_acc"] if rule == "val_robust" else -epoch, epoch)

    def _end_epoch(self, row: dict[str, Any], optimizer: Any, scheduler: Any, epochs: int) -> None:
        self.state.rows.append(row)
        self.state.epoch = int(row["epoch"]) + 1
        path = self._save_state(optimizer, scheduler)
        if self.is_main and self.run_dir is not None:
            results.write_rows(self.state.rows, results.EPOCH_SCHEMA, self.run_dir / "epochs.parquet")
        log.info(
            "%s epoch %d/%d: loss %.4f acc %.3f %s%s (%.1fs)",
            row["phase"], row["epoch"] + 1, epochs, row["train_loss"], row["train_acc"],
            results.describe_validation(row),
            f" hamming {row['hamming']:.4f}" if row["hamming"] is not None else "", row["time_s"],
        )  # fmt: skip
        if self.reporter is not None:
            self.reporter(dict(row, global_epoch=len(self.state.rows)), path)

    @property
    def _best_rule(self) -> str:
        return self.cfg.prune.best_mask if self.method.best_mask_applies else "last"

    def _loader(self, dataset: Dataset, batches: ShardedBatches) -> Iterable:
        """On CUDA a training set that fits stays there as uint8, augmented on the device."""
        cuda = self.device.type == "cuda"
        if cuda and (on_gpu := device_loader(dataset, batches, self.device)) is not None:
            return on_gpu
        workers = self.cfg.data.num_workers
        return DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=cuda)  # type: ignore[arg-type]

    def _set_trainable(self, tensors: list[nn.Parameter]) -> None:
        keep = {id(t) for t in tensors}
        for p in self.model.parameters():
            p.requires_grad_(id(p) in keep)

    def _weights(self) -> list[nn.Parameter]:
        return [p for n, p in self.model.named_parameters() if not n.endswith("scores")]

    def _load_dense(self, path: Path) -> None:
        if not path.is_file():
            raise ConfigError("pretrain.checkpoint", f"file not found: {path}")
        self._load_state(torch.load(path, map_location="cpu", weights_only=True), str(path))

    def _load_state(self, state: dict[str, Any], path: str) -> None:
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        bad = [k for k in missing if not k.endswith((".scores", ".mask"))]
        if bad or unexpected:
            raise ConfigError(
                "pretrain.checkpoint",
                f"{path} does not fit model {self.cfg.model.name!r} "
                f"(missing: {bad[:3]}, unexpected: {list(unexpected)[:3]})",
            )

    # ------------------------------------------------------------------ state

    @property
    def state_path(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "state.pt"

    def _save_state(self, optimizer: Any = None, scheduler: Any = None) -> Path | None:
        self.state.model = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        self.state.method = self.method.state_dict()
        self.state.sharpness = self.schedule.state_dict()
        self.state.optimizer = optimizer.state_dict() if optimizer is not None else None
        self.state.scheduler = scheduler.state_dict() if scheduler is not None else None
        if not self.is_main or self.state_path is None:
            return None
        return self.state.save(self.state_path)

    def _resume(self, path: Path) -> None:
        state = RunState.load(path)
        if state.config_hash != self.state.config_hash:
            raise ValueError(
                f"{path} was written by a different config ({state.config_hash} != {self.state.config_hash})"
            )
        assert state.model is not None
        self.model.load_state_dict(state.model)
        self.method.load_state_dict(state.method or {})
        self.schedule.load_state_dict(state.sharpness or {})
        self._opt_state = {"optimizer": state.optimizer, "scheduler": state.scheduler}
        self.state = state
        # The layers' python-side mode is not in the state dict: rebuild it from the phase.
        if "prune" in state.done or state.phase in ("finetune", "evaluate"):
            L.set_keep(self.model, self.method.keep)
            L.set_mode(self.model, "fixed")
        elif state.phase == "prune":
            L.set_keep(self.model, self.method.keep)
            L.set_mode(self.model, "scores")
        log.info("resumed from %s at phase %s epoch %d", path, state.phase, state.epoch)

    def _final_row(self, wall: float) -> dict[str, Any]:
        final, s2ap = self.state.final, self.cfg.s2ap
        best_epoch = self.state.best_epoch
        density, _ = L.density(self.model)
        metrics = (
            "compact_params", "compact_flops", "flops_reduction", "gradient_masking", "robust_attack",
            "mask_robust_attack", *results.ACCURACIES, *(f"{name}_n" for name in results.ACCURACIES),
        )  # fmt: skip
        return results.with_intervals({
            **self.identity,
            "status": "ok",
            "error": None,
            "density": density,
            **{key: final.get(key) for key in metrics},
            "best_mask_epoch": best_epoch,
            "best_mask_before_s2ap": s2ap.enabled
            and best_epoch is not None
            and best_epoch < s2ap.warmup_epochs,
            "hamming": self.state.curve("hamming"),
            "lambda_max": [v for v in self.state.curve("lambda_max") if v is not None],
            "loss_diff_rho": final.get("loss_diff_rho", []),
            "loss_diff": final.get("loss_diff", []),
            "wall_time_s": wall,
        })  # fmt: skip


def run_experiment(
    cfg: ExperimentConfig,
    run_dir: str | Path | None = None,
    reporter: Reporter | None = None,
    resume_from: str | Path | None = None,
    progress: bool = False,
    pretrain_cache: str | Path | None = None,
) -> dict[str, Any]:
    """The entry point the CLI and the Ray layer wrap."""
    return Pipeline(cfg, run_dir, reporter, resume_from, progress, pretrain_cache).run()
