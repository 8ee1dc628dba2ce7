"""One experiment: ``pretrain -> prune -> finetune -> evaluate``.

Each phase is skippable (a pretrained checkpoint in, a mask in, zero epochs; which phases
train is :func:`s2ap.experiment.phases`). After every epoch the whole run state
(:class:`~s2ap.state.RunState`) is saved, the per-epoch table is rewritten and the reporter
is called with that epoch's metrics and the state file. Resuming from such a state
reproduces the uninterrupted run: every epoch reseeds its randomness from (seed, phase,
epoch), so no random stream depends on how many epochs ran in this process.

Which sharpness-aware perturbation wraps an epoch is the :class:`SharpnessSchedule`'s
answer, built once from the config; which scores of the search become the mask is the
:class:`~s2ap.best_mask.BestMaskTracker`'s; what is measured besides training lives in
:class:`~s2ap.probes.Probes`.

Under ``torch.distributed`` every rank runs this same code; gradients are all-reduced by DDP (so
masks are identical on every rank), metrics are all-reduced before reporting; only rank 0 writes files.
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
from s2ap import results, rung_probe, storage
from s2ap.best_mask import BestMaskTracker
from s2ap.config import ExperimentConfig, PhaseConfig
from s2ap.data import Splits, load_splits
from s2ap.distributed import DistInfo, ShardedBatches, resolve_device, sync_batch_norm
from s2ap.errors import ConfigError
from s2ap.experiment import bound_model, fast_settings, identity, phases, resolved
from s2ap.io import atomic_write_text, save_tensors
from s2ap.metrics import hamming
from s2ap.models import export_masks, export_state_dict, mask_layers
from s2ap.objectives import build_objective
from s2ap.probes import Probes
from s2ap.pruning import PruningMethod, build_method
from s2ap.seeding import derive_seed
from s2ap.sharpness import SharpnessSchedule
from s2ap.state import RunState
from s2ap.tensor_data import CropFlip, device_loader, loader_workers
from s2ap.train import Epoch, Trainer, build_optimizer, build_scheduler, compiled, no_penalty, on_device

log = logging.getLogger(__name__)

Reporter = Callable[[dict[str, Any], Path | None], None]


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
        net: nn.Module | None = None,  # a network object to prune instead of building model.name
        device: torch.device | None = None,  # the GPU a launcher assigned this process (Ray Train)
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
        self.device = resolve_device(cfg.device, assigned=device)
        self.phases = phases(cfg)
        self.fast = fast_settings(cfg, self.device.type)  # bf16, channels_last, compile
        # Every row of this run starts with the same identity columns.
        self.identity = {**identity(cfg, self.device.type), "code_version": results.code_version()}
        self.splits = splits if splits is not None else load_splits(cfg.data, cfg.seed)

        self.method: PruningMethod = build_method(cfg)
        self.model = self._build_model(net)
        self.layers = [layer for _, layer in L.scored_layers(self.model)]
        self.objective = build_objective(cfg.objective, cfg.attack)
        self.schedule = SharpnessSchedule(
            cfg.s2ap,
            self.layers,
            own=lambda phase, epoch: self.method.on_epoch_start(self.model, phase, epoch),
            search_lr=cfg.prune.lr,
            finetune_lr=cfg.finetune.lr,
            awp=cfg.finetune_awp,
            seed=cfg.seed,
        )
        self.probes = Probes(
            cfg, self.model, self.layers, self.objective, self.splits, self.dist, self.device
        )
        full = resolved(cfg, self.splits.info)  # with what the data decided: config.yaml
        self.state = RunState(config_hash=self.identity["config_hash"], resolved_hash=full.hash())
        if resume_from is not None:
            self._resume(Path(resume_from))
        self.best = BestMaskTracker(cfg, self.method, self.layers, self.state, self.dist, self.device)
        if self.run_dir is not None and self.is_main:
            atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(full.to_dict(), sort_keys=False))

    def _build_model(self, net: nn.Module | None = None) -> nn.Module:
        """The masked network (``net`` scored in place, else built), seeded, on the device,
        bound to the pruning method."""
        torch.manual_seed(derive_seed(self.cfg.seed, "init"))

        def place(model: nn.Module) -> nn.Module:
            model = on_device(model, self.fast, self.device)
            return sync_batch_norm(model, self.cfg.sync_batchnorm, self.device)

        return bound_model(self.cfg, self.splits.info, self.method, net, place)

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
                # A new phase starts its optimizer afresh; a resumed one continues its own.
                self.state.optimizer = self.state.scheduler = None
            self.state.wall_time_s = time.perf_counter() - start
            phase()
            self.state.done.append(name)
            self.state.wall_time_s = time.perf_counter() - start
            self._save_state()
        wall = time.perf_counter() - start
        final = self.state.final_row(self.identity, self.cfg.s2ap, L.density(self.model)[0], wall)
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
        if self.state.epoch == 0 and self.state.first_mask is None:
            self.method.prepare(self.model)
            self.state.first_mask = {k: v.bool() for k, v in L.masks(self.model).items()}
        if self.cfg.prune.mask is not None:
            saved = torch.load(self.cfg.prune.mask, map_location="cpu", weights_only=True)
            L.load_masks(self.model, mask_layers(self.model, saved))
        elif self.phases.prune > 0:
            L.set_mode(self.model, "scores")
            self._train("prune", self.cfg.prune, self.method.parameters(self.model))
            self.best.restore(last_epoch=self.phases.prune - 1)
            self.state.final.update(self.probes.loss_differences())
        self.method.finish_search(self.model)  # e.g. HARP meets its budget exactly
        L.freeze_masks(self.model)
        if self.is_main and self.run_dir is not None:
            save_tensors(export_masks(self.model), self.run_dir / "masks.pt")  # keyed as pruned_dense.pt
        # Table 5: the pruned pretrained model before any finetuning (eval.mask_test; a search
        # sets it off unless told otherwise).
        if self.cfg.eval.mask_test is False:
            return
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
            save_tensors(export_state_dict(self.model), self.run_dir / "pruned_dense.pt")
            exported = self.method.export(self.model)  # channel pruning: the compact network
            if exported is not None:
                save_tensors(exported[0], self.run_dir / "pruned_compact.pt")
                self.state.final.update(exported[1].as_dict())
        self.state.final.update(self.probes.final_validation())
        self.state.final.update(self.probes.test_metrics(autoattack=self.cfg.eval.autoattack))

    # ------------------------------------------------------------------ the epoch loop

    def _train(self, phase: str, cfg: PhaseConfig, params: list[nn.Parameter]) -> None:
        self._set_trainable(params)
        optimizer = build_optimizer(params, cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)
        scheduler = build_scheduler(optimizer, cfg.schedule, cfg.epochs)
        if self.state.optimizer is not None:  # resumed inside this phase: continue its optimizer
            optimizer.load_state_dict(self.state.optimizer)
            scheduler.load_state_dict(self.state.scheduler)
        n_train = len(self.splits.train)  # type: ignore[arg-type]
        # Compiled: no last partial batch (its shape would compile another graph every epoch).
        batches = ShardedBatches(
            n_train,
            self.cfg.data.batch_size,
            shuffle=True,
            dist_info=self.dist,
            drop_last=self.fast["compile"],
        )
        loader = self._loader(self.splits.train, batches)
        if self.fast["compile"]:
            # Each phase runs the layers in one mode (dense, scores, fixed): its graphs start
            # afresh, so the earlier phases' count toward no recompile limit.
            torch._dynamo.reset()
        wrapped = self.dist.wrap(self.model, self.device)
        fast = compiled(wrapped, self.fast["compile"])
        trainer = Trainer(
            fast,
            self.objective,
            optimizer,
            self.device,
            # Only the search adds the method's own term (HARP's budget penalty).
            penalty=(lambda: self.method.penalty(self.model)) if phase == "prune" else no_penalty,
            amp=self.fast["amp"],
            # Under DDP the attack runs on the module inside DDP: compiled too when compiling.
            attack_model=compiled(self.model, True)
            if wrapped is not self.model and fast is not wrapped
            else None,
        )
        steps = len(batches.global_batches())

        for epoch in range(self.state.epoch, cfg.epochs):
            # Every random stream from (seed, phase, epoch): a resumed run repeats this epoch.
            torch.manual_seed(derive_seed(self.cfg.seed, phase, epoch))
            batches.set_seed(derive_seed(self.cfg.seed, "data", phase, epoch))
            self.splits.seed_training(derive_seed(self.cfg.seed, "augment", phase, epoch))
            ctx = Epoch(phase, epoch, self.schedule.for_epoch(phase, epoch), progress=self.progress)
            lambdas: list[float] = []
            if phase == "prune":
                ctx.on_iteration = self._search_iteration(epoch, steps, lambdas)
                ctx.before_update = self.best.per_iteration(epoch)
            lr = optimizer.param_groups[0]["lr"]
            res = trainer.epoch(loader, batches, ctx)
            scheduler.step()

            loss_sum, correct, n = self.dist.all_reduce_sum([res.loss_sum, res.correct, res.n], self.device)
            val_clean, val_pgd, val_n = self.probes.validate()
            row: dict[str, Any] = {
                **{column.name: self.identity[column.name] for column in results.IDENTITY},
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
                "s2ap_active": ctx.perturbation is not None,
                "perturbed_frac": res.perturbed_frac,
                "ascent_pass_frac": res.ascent_pass_frac,
                "lr": lr,
                "time_s": res.time_s,
                **rung_probe.empty(),
            }
            if phase == "prune":
                self.method.on_epoch_end(self.model, epoch)
                assert self.state.first_mask is not None
                current = {k: v.bool() for k, v in L.masks(self.model).items()}
                row["hamming"] = hamming(self.state.first_mask, current)
                self.best.end_epoch(epoch, val_pgd)
                if rung_probe.due(self.cfg, phase, epoch):
                    row.update(self._probe(epoch))
            self._end_epoch(row, optimizer, scheduler, cfg.epochs)

    def _probe(self, epoch: int) -> dict[str, Any]:
        return rung_probe.run_probe(
            self.cfg,
            self.model,
            self.state.best,
            self.objective,
            self.splits,
            self.dist,
            self.device,
            self.fast["amp"],
            lambda batches: self._loader(self.splits.train, batches),
            epoch,
        )

    def _search_iteration(self, epoch: int, steps: int, lambdas: list[float]) -> Callable[[int], None]:
        """After each search step: lambda_max now and then, and the method's own hook."""
        lam = self.probes.lambda_max_hook(lambdas)

        def on_iteration(step: int) -> None:
            if lam is not None:
                lam(step)
            self.method.on_iteration(self.model, epoch, step, steps)

        return on_iteration

    def _end_epoch(self, row: dict[str, Any], optimizer: Any, scheduler: Any, epochs: int) -> None:
        self.state.rows.append(row)
        self.state.epoch = int(row["epoch"]) + 1
        path = self._save_state(optimizer, scheduler)
        if self.is_main and self.run_dir is not None:
            results.write_rows(self.state.rows, results.EPOCH_SCHEMA, self.run_dir / results.EPOCHS_FILE)
        log.info(
            "%s epoch %d/%d: loss %.4f acc %.3f %s%s (%.1fs)",
            row["phase"],
            row["epoch"] + 1,
            epochs,
            row["train_loss"],
            row["train_acc"],
            results.describe_validation(row),
            f" hamming {row['hamming']:.4f}" if row["hamming"] is not None else "",
            row["time_s"],
        )
        if self.reporter is not None:
            self.reporter(dict(row, global_epoch=len(self.state.rows)), path)

    def _loader(self, dataset: Dataset, batches: ShardedBatches) -> Iterable:
        """On CUDA a training set that fits stays there as uint8, augmented on the device."""
        cuda = self.device.type == "cuda"
        if cuda and (on_gpu := device_loader(dataset, batches, self.device)) is not None:
            return on_gpu
        workers = self.cfg.data.num_workers
        if workers is None:  # the CPUs this process was given (Ray sets the thread count from them)
            workers = loader_workers(dataset, torch.get_num_threads())
        return DataLoader(
            dataset,
            batch_sampler=batches,  # type: ignore[arg-type]
            num_workers=workers,
            pin_memory=cuda,
            # Kept across epochs unless the set draws a new augmentation each epoch (CropFlip's
            # reseed must reach the workers, which a fresh start per epoch copies it to).
            persistent_workers=workers > 0 and not isinstance(dataset, CropFlip),
        )

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
        """The run state of ``path``; its optimizer state stays in it until the phase's
        :meth:`_train` continues from it."""
        state = RunState.load(path)
        if state.config_hash != self.state.config_hash and state.resolved_hash != self.state.resolved_hash:
            raise ValueError(
                f"{path} was written by a different config ({state.config_hash} != {self.state.config_hash})"
            )
        self.identity["config_hash"] = state.config_hash  # also when resumed from the folder's config.yaml
        assert state.model is not None
        self.model.load_state_dict(state.model)
        self.method.load_state_dict(state.method or {})
        self.schedule.load_state_dict(state.sharpness or {})
        self.state = state
        # The layers' python-side mode is not in the state dict: rebuild it from the phase.
        if "prune" in state.done or state.phase in ("finetune", "evaluate"):
            L.set_keep(self.model, self.method.keep)
            L.set_mode(self.model, "fixed")
        elif state.phase == "prune":
            L.set_keep(self.model, self.method.keep)
            L.set_mode(self.model, "scores")
        log.info("resumed from %s at phase %s epoch %d", path, state.phase, state.epoch)


def run_experiment(
    cfg: ExperimentConfig,
    run_dir: str | Path | None = None,
    reporter: Reporter | None = None,
    resume_from: str | Path | None = None,
    progress: bool = False,
    pretrain_cache: str | Path | None = None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """The entry point the CLI and the Ray layer wrap (``device``: the GPU Ray assigned)."""
    return Pipeline(cfg, run_dir, reporter, resume_from, progress, pretrain_cache, device=device).run()
