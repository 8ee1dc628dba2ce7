"""One experiment: ``pretrain -> prune -> finetune -> evaluate``.

Each phase is skippable (a pretrained checkpoint in, a mask in, zero epochs). After every
epoch the whole state (phase, epoch, weights, scores, optimizer, scheduler, best scores,
history) is saved, the per-epoch table is rewritten and the reporter is called with that
epoch's metrics and the state file. Resuming from such a state reproduces the
uninterrupted run: every epoch reseeds its randomness from (seed, phase, epoch), so no
random stream depends on how many epochs ran in this process.

Under ``torch.distributed`` every rank runs this same code; gradients are all-reduced by
DDP (so masks are identical on every rank), metrics are all-reduced before reporting, and
only rank 0 writes files.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset

from s2ap import results
from s2ap.config import ExperimentConfig, PhaseConfig
from s2ap.data import Splits, load_splits
from s2ap.distributed import DistInfo, ShardedBatches, resolve_device
from s2ap.experiment import pretrain_key
from s2ap.models import build_model
from s2ap.objectives import build_objective
from s2ap.pruning import layers as L
from s2ap.pruning.methods import PruningMethod, build_method
from s2ap.pruning.perturbations import search_weight_perturbation
from s2ap.seeding import derive_seed
from s2ap.sharpness import score_perturbation, weight_perturbation
from s2ap.train import (
    build_optimizer,
    build_scheduler,
    train_epoch,
)

log = logging.getLogger(__name__)

PHASES = ("pretrain", "prune", "finetune", "evaluate")
Reporter = Callable[[dict[str, Any], Path | None], None]


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class Pipeline:
    """Runs one experiment from a frozen config. ``run()`` returns the final metrics."""

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
        self.is_main = self.dist.rank == 0
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.reporter = reporter
        self.progress = progress and self.is_main
        self.pretrain_cache = Path(pretrain_cache) if pretrain_cache is not None else None
        self.device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", self.dist.rank)))
        self.config_hash = cfg.hash()
        self.code_version = results.code_version()

        self.splits = splits if splits is not None else load_splits(cfg.data, cfg.seed)
        info = self.splits.info
        self.method: PruningMethod = build_method(cfg)
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        self.model = build_model(
            cfg.model.name,
            num_classes=info.num_classes,
            in_channels=info.in_channels,
            image_size=cfg.data.image_size or info.image_size,
            mean=info.mean,
            std=info.std,
            masked=True,
            prune_layers=cfg.model.prune_layers,
            granularity=self.method.granularity,
        ).to(self.device)
        size = cfg.data.image_size or info.image_size
        self.method.bind(self.model, (1, info.in_channels, size, size))  # checks + hooks, also on resume
        self.layers = [layer for _, layer in L.scored_layers(self.model)]
        self.objective = build_objective(cfg.objective, cfg.attack)
        self.state: dict[str, Any] = {
            "config_hash": self.config_hash,
            "phase": "pretrain",
            "epoch": 0,
            "done": [],
            "rows": [],
            "hamming": [],
            "lambda_max": [],
            "best": None,
            "first_mask": None,
            "final": {},
            "wall_time_s": 0.0,
        }
        self._opt_state: dict[str, Any] | None = None
        if resume_from is not None:
            self._load_state(Path(resume_from))
        if self.run_dir is not None and self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    # ------------------------------------------------------------------ state

    @property
    def state_path(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "state.pt"

    def _save_state(self, optimizer: Any = None, scheduler: Any = None) -> Path | None:
        self.state["model"] = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        self.state["method"] = self.method.state_dict()
        self.state["optimizer"] = optimizer.state_dict() if optimizer is not None else None
        self.state["scheduler"] = scheduler.state_dict() if scheduler is not None else None
        if not self.is_main or self.state_path is None:
            return None
        _atomic_save(self.state, self.state_path)
        return self.state_path

    def _load_state(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("config_hash") != self.config_hash:
            raise ValueError(
                f"{path} was written by a different config ({state.get('config_hash')} != {self.config_hash})"
            )
        self.model.load_state_dict(state["model"])
        self.method.load_state_dict(state.get("method") or {})
        self._opt_state = {"optimizer": state.get("optimizer"), "scheduler": state.get("scheduler")}
        self.state = state
        # The layers' python-side mode is not in the state dict: rebuild it from the phase.
        if "prune" in state["done"] or state["phase"] in ("finetune", "evaluate"):
            L.set_keep(self.model, self.method.keep)
            L.set_mode(self.model, "fixed")
        elif state["phase"] == "prune":
            L.set_keep(self.model, self.method.keep)
            L.set_mode(self.model, "scores")
        log.info("resumed from %s at phase %s epoch %d", path, state["phase"], state["epoch"])

    # ------------------------------------------------------------------ helpers

    def _loader(self, dataset: Dataset, batches: ShardedBatches) -> DataLoader:
        return DataLoader(
            dataset,
            batch_sampler=batches,  # type: ignore[arg-type]
            num_workers=self.cfg.data.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    def _shard(self, dataset: Dataset, limit: int | None = None) -> Subset:
        n = len(dataset)  # type: ignore[arg-type]
        if limit is not None:
            n = min(n, limit)
        return Subset(dataset, list(range(self.dist.rank, n, self.dist.world)))

    def _eval_loader(self, dataset: Dataset, limit: int | None = None) -> DataLoader:
        return DataLoader(
            self._shard(dataset, limit), batch_size=self.cfg.data.eval_batch_size, shuffle=False
        )

    def _validate(self) -> tuple[float, float]:
        """Clean and PGD accuracy on (this rank's share of) the validation split."""
        from s2ap.attacks import PGD
        from s2ap.evaluate import clean_accuracy, pgd_accuracy

        a = self.cfg.attack
        loader = self._eval_loader(self.splits.val, self.cfg.eval.val_limit)
        n = len(loader.dataset)  # type: ignore[arg-type]
        attack = PGD(a.eps, a.step_size, self.cfg.eval.val_pgd_steps, a.random_start)
        clean = clean_accuracy(self.model, loader, self.device) if n else 0.0
        robust = pgd_accuracy(self.model, loader, attack, self.device) if n else 0.0
        c, r, total = self.dist.all_reduce_sum([clean * n, robust * n, n], self.device)
        return c / max(total, 1), r / max(total, 1)

    def _set_trainable(self, tensors: list[nn.Parameter]) -> None:
        keep = {id(t) for t in tensors}
        for p in self.model.parameters():
            p.requires_grad_(id(p) in keep)

    def _wrap(self) -> nn.Module:
        if self.dist.world == 1:
            return self.model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=ids)

    def _weights(self) -> list[nn.Parameter]:
        return [p for n, p in self.model.named_parameters() if not n.endswith("scores")]

    # ------------------------------------------------------------------ the phases

    def run(self) -> dict[str, Any]:
        start = time.perf_counter() - float(self.state.get("wall_time_s", 0.0))
        for phase in PHASES:
            if phase in self.state["done"]:
                continue
            if self.state["phase"] != phase:
                self.state["phase"], self.state["epoch"] = phase, 0
                self._opt_state = None
            self.state["wall_time_s"] = time.perf_counter() - start
            getattr(self, f"_{phase}")()
            self.state["done"].append(phase)
            self.state["wall_time_s"] = time.perf_counter() - start
            self._save_state()
        final = self._final_row(time.perf_counter() - start)
        if self.is_main and self.run_dir is not None:
            results.write_rows([final], results.RUN_SCHEMA, self.run_dir / "final.parquet")
        return final

    def _pretrain(self) -> None:
        cfg = self.cfg.pretrain
        L.set_mode(self.model, "dense")
        if cfg.checkpoint is not None:
            self._load_dense(Path(cfg.checkpoint))
            return
        if not self.method.pretrains or cfg.epochs == 0:
            return
        cached = self._cache_path()
        if cached is not None and cached.exists() and self.state["epoch"] == 0:
            log.info("pretrained checkpoint from cache %s", cached)
            self._load_dense(cached)
            return
        self._run_phase("pretrain", cfg, self._weights(), perturb=None)
        if cached is not None and self.is_main:
            cached.parent.mkdir(parents=True, exist_ok=True)
            _atomic_save(L.dense_state_dict(self.model), cached)

    def _cache_path(self) -> Path | None:
        if self.pretrain_cache is None:
            return None
        return self.pretrain_cache / f"pretrain-{pretrain_key(self.cfg)}.pt"

    def _load_dense(self, path: Path) -> None:
        if not path.is_file():
            from s2ap.config import ConfigError

            raise ConfigError("pretrain.checkpoint", f"file not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        bad = [k for k in missing if not k.endswith((".scores", ".mask"))]
        if bad or unexpected:
            from s2ap.config import ConfigError

            raise ConfigError(
                "pretrain.checkpoint",
                f"{path} does not fit model {self.cfg.model.name!r} "
                f"(missing: {bad[:3]}, unexpected: {list(unexpected)[:3]})",
            )

    def _prune(self) -> None:
        cfg, s2ap = self.cfg.prune, self.cfg.s2ap
        if self.state["epoch"] == 0 and self.state["first_mask"] is None:
            self.method.prepare(self.model)
            self.state["first_mask"] = {k: v.bool() for k, v in L.masks(self.model).items()}
        if cfg.mask is not None:
            L.load_masks(self.model, torch.load(cfg.mask, map_location="cpu", weights_only=True))
        elif self.method.trains_scores and cfg.epochs > 0:
            L.set_mode(self.model, "scores")
            self._run_phase("prune", cfg, self.method.parameters(self.model), perturb="scores")
            best = self.state["best"]
            with torch.no_grad():
                for layer, scores in zip(self.layers, best["scores"], strict=True):
                    layer.scores.copy_(scores)
            self.method.load_state_dict(best.get("method") or {})  # e.g. HARP's rates of that epoch
            if s2ap.enabled and best["epoch"] < s2ap.warmup_epochs:
                log.warning(
                    "the returned mask comes from pruning epoch %d, before S2AP began at epoch %d: "
                    "no S2AP epoch beat it under best_mask=%r, so this run's mask is the plain "
                    "method's",
                    best["epoch"],
                    s2ap.warmup_epochs,
                    cfg.best_mask,
                )
            self._measure_loss_difference()
        self.method.finish_search(self.model)  # e.g. HARP meets its budget exactly
        L.freeze_masks(self.model)
        if self.is_main and self.run_dir is not None:
            _atomic_save(L.masks(self.model), self.run_dir / "masks.pt")
        # Table 5: the pruned pretrained model before any finetuning.
        metrics = self._test_metrics(autoattack=False)
        self.state["final"]["mask_clean_acc"] = metrics["clean_acc"]
        self.state["final"]["mask_robust_acc"] = metrics["pgd_acc"]

    def _finetune(self) -> None:
        cfg = self.cfg.finetune
        if not self.method.finetunes or cfg.epochs == 0:
            return
        L.set_mode(self.model, "fixed")
        self._run_phase("finetune", cfg, self._weights(), perturb="weights")

    def _evaluate(self) -> None:
        if self.is_main and self.run_dir is not None:
            _atomic_save(L.dense_state_dict(self.model), self.run_dir / "pruned_dense.pt")
            exported = self.method.export(self.model)  # channel pruning: the compact network
            if exported is not None:
                _atomic_save(exported[0], self.run_dir / "pruned_compact.pt")
                self.state["final"].update(exported[1].as_dict())
        self.state["final"].update(self._test_metrics(autoattack=self.cfg.eval.autoattack))

    # ------------------------------------------------------------------ the epoch loop

    def _run_phase(
        self, phase: str, cfg: PhaseConfig, params: list[nn.Parameter], perturb: str | None
    ) -> None:
        self._set_trainable(params)
        model = self._wrap()
        optimizer = build_optimizer(params, cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)
        scheduler = build_scheduler(optimizer, cfg.schedule, cfg.epochs)
        if self._opt_state is not None and self._opt_state.get("optimizer") is not None:
            optimizer.load_state_dict(self._opt_state["optimizer"])
            scheduler.load_state_dict(self._opt_state["scheduler"])
        self._opt_state = None
        n_train = len(self.splits.train)  # type: ignore[arg-type]
        batches = ShardedBatches(n_train, self.cfg.data.batch_size, shuffle=True, dist_info=self.dist)
        loader = self._loader(self.splits.train, batches)
        s2ap = self.cfg.s2ap

        for epoch in range(self.state["epoch"], cfg.epochs):
            torch.manual_seed(derive_seed(self.cfg.seed, phase, epoch))
            batches.set_seed(derive_seed(self.cfg.seed, "data", phase, epoch))
            perturbation = self.method.on_epoch_start(self.model, phase, epoch)  # a method's own (AdaSAP)
            active = s2ap.enabled and s2ap.gamma > 0 and perturbation is None
            if perturb == "scores" and active and epoch >= s2ap.warmup_epochs:
                search = score_perturbation if s2ap.perturb == "scores" else search_weight_perturbation
                perturbation = search(self.layers, s2ap.gamma)  # S2AP, or AWP during pruning (Table 13)
            elif perturb == "weights" and active and s2ap.finetune_awp:
                perturbation = weight_perturbation(self.layers, s2ap.gamma)
            lambdas: list[float] = []
            hook = self._lambda_hook(lambdas) if phase == "prune" else None
            lr = optimizer.param_groups[0]["lr"]
            res = train_epoch(
                model, loader, batches, self.objective, optimizer, self.device,
                perturbation=perturbation,
                penalty=(lambda: self.method.penalty(self.model)) if phase == "prune" else (lambda: None),
                on_iteration=hook, phase=phase, epoch=epoch, progress=self.progress, amp=self.cfg.amp,
            )  # fmt: skip
            scheduler.step()
            loss_sum, correct, n = self.dist.all_reduce_sum([res.loss_sum, res.correct, res.n], self.device)
            val_clean, val_pgd = self._validate()
            row: dict[str, Any] = {
                "config_hash": self.config_hash,
                "seed": self.cfg.seed,
                "code_version": self.code_version,
                "phase": phase,
                "epoch": epoch,
                "train_loss": loss_sum / max(n, 1),
                "train_acc": correct / max(n, 1),
                "val_clean_acc": val_clean,
                "val_pgd_acc": val_pgd,
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
            self.state["rows"].append(row)
            self.state["epoch"] = epoch + 1
            path = self._save_state(optimizer, scheduler)
            if self.is_main and self.run_dir is not None:
                results.write_rows(self.state["rows"], results.EPOCH_SCHEMA, self.run_dir / "epochs.parquet")
            log.info(
                "%s epoch %d/%d: loss %.4f acc %.3f val clean %.3f val pgd %.3f%s (%.1fs)",
                phase, epoch + 1, cfg.epochs, row["train_loss"], row["train_acc"], val_clean, val_pgd,
                f" hamming {row['hamming']:.4f}" if row["hamming"] is not None else "", res.time_s,
            )  # fmt: skip
            if self.reporter is not None:
                self.reporter(dict(row, global_epoch=len(self.state["rows"])), path)

    def _after_prune_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        from s2ap.metrics import hamming

        current = {k: v.bool() for k, v in L.masks(self.model).items()}
        row["hamming"] = hamming(self.state["first_mask"], current)
        self.state["hamming"].append(row["hamming"])
        self.state["lambda_max"].append(row["lambda_max"])
        rule = self.cfg.prune.best_mask
        score = {"train_loss": row["train_loss"], "val_robust": -row["val_pgd_acc"], "last": -epoch}[rule]
        best = self.state["best"]
        if best is None or score < best["score"]:
            self.state["best"] = {
                "score": score,
                "epoch": epoch,
                "scores": [layer.scores.detach().clone().cpu() for layer in self.layers],
                "method": self.method.state_dict(),
            }

    def _fixed_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = min(self.cfg.eval.lambda_max_batch, len(self.splits.val))  # type: ignore[arg-type]
        loader = DataLoader(Subset(self.splits.val, list(range(n))), batch_size=n)
        x, y = next(iter(loader))
        return x.to(self.device), y.to(self.device)

    def _lambda_hook(self, sink: list[float]) -> Callable[[int], None] | None:
        every = self.cfg.eval.lambda_max_every
        if every <= 0:
            return None
        from s2ap.metrics import lambda_max

        x, y = self._fixed_batch()
        scores = [layer.scores for layer in self.layers]

        def hook(step: int) -> None:
            if step % every:
                return
            batch = self.objective.craft(self.model, x, y)
            self.model.eval()  # BatchNorm in eval mode: a fixed function of the scores
            try:
                value = lambda_max(
                    lambda: self.objective.loss(self.model, batch)[0], scores,
                    iters=self.cfg.eval.lambda_max_iters,
                    generator=torch.Generator(device=self.device).manual_seed(step),
                )  # fmt: skip
            finally:
                self.model.train()
            sink.append(value)

        return hook

    def _measure_loss_difference(self) -> None:
        rhos = self.cfg.eval.loss_diff_rhos
        if not rhos:
            return
        from s2ap.metrics import loss_difference

        x, y = self._fixed_batch()
        self.model.eval()
        torch.manual_seed(derive_seed(self.cfg.seed, "loss_difference"))
        batch = self.objective.craft(self.model, x, y)
        scores = [layer.scores for layer in self.layers]
        for p in scores:
            p.requires_grad_(True)
        diffs = []
        for rho in rhos:
            _, increase = loss_difference(
                lambda: self.objective.loss(self.model, batch)[0], scores, rho, self.cfg.eval.loss_diff_steps
            )
            diffs.append(increase)
        self.state["final"]["loss_diff_rho"] = list(rhos)
        self.state["final"]["loss_diff"] = diffs

    def _test_metrics(self, autoattack: bool) -> dict[str, Any]:
        from dataclasses import replace

        from s2ap.evaluate import evaluate

        e = self.cfg.eval
        n_aa = e.autoattack_n
        if n_aa is not None:
            n_aa = max(1, -(-n_aa // self.dist.world))
        eval_cfg = replace(e, autoattack=autoattack, autoattack_n=n_aa)
        loader = self._eval_loader(self.splits.test, self.cfg.data.test_limit)
        n = len(loader.dataset)  # type: ignore[arg-type]
        # Evaluation randomness depends on nothing that ran before it (resumable runs).
        torch.manual_seed(derive_seed(self.cfg.seed, "test", autoattack, self.dist.rank))
        if n:
            out = evaluate(self.model, loader, eval_cfg, self.cfg.attack, self.device)
        else:  # a rank with no test points in a tiny distributed evaluation
            out = {
                "clean_acc": 0.0,
                "pgd_acc": 0.0,
                "aa_acc": 0.0 if autoattack else None,
                "robust_acc": 0.0,
                "gradient_masking": False,
                "corruption_acc": None,
            }
        if self.dist.world > 1:
            # Weight each rank's accuracies by the points they were measured on.
            n_aa = min(n, eval_cfg.autoattack_n or n)
            keys = ["clean_acc", "pgd_acc", "aa_acc", "corruption_acc"]
            weights = [n, n, n_aa, n]
            vals = [
                float(out[k]) * w if out.get(k) is not None else 0.0
                for k, w in zip(keys, weights, strict=True)
            ]
            summed = self.dist.all_reduce_sum(
                vals + [n, n_aa, float(bool(out.get("gradient_masking")))], self.device
            )
            totals = {
                "clean_acc": summed[4],
                "pgd_acc": summed[4],
                "aa_acc": summed[5],
                "corruption_acc": summed[4],
            }
            for k, v in zip(keys, summed, strict=False):
                if out.get(k) is not None:
                    out[k] = v / max(totals[k], 1)
            out["robust_acc"] = out["aa_acc"] if out.get("aa_acc") is not None else out["pgd_acc"]
            out["gradient_masking"] = summed[-1] > 0
        return out

    def _final_row(self, wall: float) -> dict[str, Any]:
        cfg, final = self.cfg, self.state["final"]
        best = self.state["best"]
        best_epoch = best["epoch"] if best is not None else None
        density, _ = L.density(self.model)
        return {
            "config_hash": self.config_hash,
            "seed": cfg.seed,
            "code_version": self.code_version,
            "model": cfg.model.name,
            "dataset": cfg.data.name,
            "method": cfg.prune.method,
            "granularity": self.method.granularity,
            "perturb": cfg.s2ap.perturb if cfg.s2ap.enabled else None,
            "flops_reduction_target": cfg.prune.flops_reduction,
            "objective": cfg.objective.name,
            "sparsity": cfg.prune.sparsity,
            "s2ap": cfg.s2ap.enabled,
            "gamma": cfg.s2ap.gamma if cfg.s2ap.enabled else None,
            "warmup_epochs": cfg.s2ap.warmup_epochs if cfg.s2ap.enabled else None,
            "prune_epochs": cfg.prune.epochs,
            "status": "ok",
            "error": None,
            "density": density,
            "compact_params": final.get("compact_params"),
            "compact_flops": final.get("compact_flops"),
            "flops_reduction": final.get("flops_reduction"),
            "clean_acc": final.get("clean_acc"),
            "pgd_acc": final.get("pgd_acc"),
            "aa_acc": final.get("aa_acc"),
            "robust_acc": final.get("robust_acc"),
            "mask_clean_acc": final.get("mask_clean_acc"),
            "mask_robust_acc": final.get("mask_robust_acc"),
            "corruption_acc": final.get("corruption_acc"),
            "best_mask_epoch": best_epoch,
            "best_mask_before_s2ap": (
                cfg.s2ap.enabled and best_epoch is not None and best_epoch < cfg.s2ap.warmup_epochs
            ),
            "hamming": list(self.state["hamming"]),
            "lambda_max": [v for v in self.state["lambda_max"] if v is not None],
            "loss_diff_rho": final.get("loss_diff_rho", []),
            "loss_diff": final.get("loss_diff", []),
            "gradient_masking": final.get("gradient_masking"),
            "wall_time_s": wall,
        }


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
