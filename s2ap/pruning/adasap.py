"""AdaSAP (Bair et al., "Adaptive Sharpness-Aware Pruning for Robust Sparse Networks").

Its three steps (Algorithm 2) map onto the pipeline's phases without a new phase:

* **pretrain**: the dense (robust) model, as for every method;
* **prune** = AdaSAP's warm-up and neuron removal. The *weights* train (there are no
  learned scores) with the adaptive weight perturbation of Algorithm 1: each neuron's
  radius ``rho_i`` shrinks with its importance (Eq. 2-3, ``adasap.rho_min`` /
  ``rho_max``), so the neurons likely to be pruned are pushed into flat regions. The first
  ``adasap.warmup_epochs`` epochs run the dense network; in the prune epochs after them a
  pruning step follows every ``adasap.prune_every`` iterations (30, Sect. 4.1), removing
  the neurons of lowest saliency (``adasap.criterion``, the l2 norm of AdaSAP_P) with the
  exponential schedule of Sect. 4.1 (``k_r = m^(1 - r/R) k^(r/R)``, ``R`` the number of
  steps that fit in those epochs, at least one) so the last step reaches the target. With
  ``prune.epochs <= adasap.warmup_epochs`` this is one step at the end of the last epoch.
  Pruned neurons stay pruned: saliency is measured on the masked weights.
* **finetune** = robustness encouragement: the same step with a uniform radius
  (``rho_min = rho_max = adasap.finetune_rho``, "SAM" in Algorithm 2) on the kept weights.

Defaults are the paper's (ASAM, rho in [0.01, 2.0], rho = 2.0 when finetuning, 10 warm-up
epochs, a step every 30 iterations). AdaSAP is structured (channel granularity) by default;
with weight granularity every weight is its own neuron (the paper's unstructured special
case). Until the first pruning step the layers report the mask the saliency criterion would
pick at the target (so the mask-stability measure tracks the ranking), while the forward
pass stays dense.

S2AP cannot wrap AdaSAP: there are no scores to perturb; ``prune.best_mask`` does not
apply either, because the weights themselves change: the mask is the last step's.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from s2ap.config import ExperimentConfig
from s2ap.layers import ScoredLayer, keep_count, scored_layers, set_keep, set_mode, topk_count_mask
from s2ap.pruning.base import METHODS, PruningMethod
from s2ap.sharpness import AdaptiveWeightPerturbation, Perturbation, neuron_importance

log = logging.getLogger(__name__)


@METHODS.register("adasap")
class AdaSAP(PruningMethod):
    """Adaptive sharpness-aware warm-up, saliency pruning, uniform SAM finetuning."""

    name = "adasap"
    default_granularity = "channel"
    best_mask_applies = False  # the weights themselves change: the mask is the last step's
    s2ap_unsupported = (
        "adasap trains the weights with its own adaptive perturbation and has no scores to "
        "perturb, so S2AP cannot apply; set s2ap.enabled: false"
    )

    def __init__(self, cfg: ExperimentConfig) -> None:
        super().__init__(cfg)
        self.dense = False  # forward without masks (until the first pruning step)
        self.started = False  # a pruning step has happened: pruned neurons stay pruned
        self.targets: dict[str, int | None] = {}  # final kept neurons per layer (None: all)
        self._perturbations: dict[str, Perturbation] = {}  # per phase, built on first use

    # ------------------------------------------------------------------ binding

    def attach(self, root: nn.Module) -> None:
        self.targets = {}
        for name, layer in scored_layers(root):
            if self.plan is not None:
                self.targets[name] = self.counts.get(name)
            else:
                self.targets[name] = keep_count(self.keep, layer.scores.numel())
            layer.mask_fn = self._mask

    def _mask(self, layer: ScoredLayer) -> Tensor:
        # The scores only ride along (zero-valued) so score-space diagnostics still see them.
        magnitude = layer.scores.abs()
        base = torch.ones_like(layer.mask) if self.dense else layer.mask
        return base + (magnitude - magnitude.detach())

    def saliency(self, layer: ScoredLayer) -> Tensor:
        """Importance of each neuron (shaped like the scores), on the kept weights once
        pruning has started."""
        w = layer.weight.detach()
        if self.started:
            w = w * layer.mask.expand_as(w)
        channel = layer.granularity == "channel"
        return neuron_importance(w, channel, self.cfg.adasap.criterion).view_as(layer.scores)

    def _prune_to(self, model: nn.Module, fraction: float) -> None:
        """Keep ``m^(1 - fraction) * k^fraction`` neurons per layer by saliency."""
        with torch.no_grad():
            for name, layer in scored_layers(model):
                s = self.saliency(layer)
                layer.scores.copy_(s)
                target, n = self.targets[name], s.numel()
                if target is None:
                    layer.mask.fill_(1.0)
                    continue
                count = max(target, min(n, int(round(n * (target / n) ** fraction))))
                layer.mask.copy_(topk_count_mask(s, count))

    def prepare(self, model: nn.Module) -> None:
        """The first mask is the one saliency pruning would pick now, at the target."""
        self._ensure_bound(model)
        self.dense, self.started = False, False
        set_keep(model, self.keep)
        self._prune_to(model, 1.0)
        set_mode(model, "scores")

    # ------------------------------------------------------------------ the phases

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """AdaSAP trains the weights (all of them, as in the other phases), not scores."""
        root = getattr(model, "module", model)
        return [p for n, p in root.named_parameters() if not n.endswith("scores")]

    def _warmup(self) -> int:
        """Dense warm-up epochs; all of them when the prune phase is no longer than that."""
        return min(self.cfg.adasap.warmup_epochs, self.cfg.prune.epochs)

    def on_epoch_start(self, model: nn.Module, phase: str, epoch: int) -> Perturbation | None:
        """The adaptive perturbation while pruning, the uniform one while finetuning; each
        built once and reused (its support follows ``self.dense`` as the epochs go)."""
        if phase == "prune":
            self.dense = not self.started
        if phase not in ("prune", "finetune"):
            return None
        if phase not in self._perturbations:
            a = self.cfg.adasap
            layers = [layer for _, layer in scored_layers(model)]

            def support(i: int) -> Tensor | None:
                return None if self.dense else layers[i].full_mask()

            rho_min, rho_max = (
                (a.rho_min, a.rho_max) if phase == "prune" else (a.finetune_rho, a.finetune_rho)
            )
            self._perturbations[phase] = AdaptiveWeightPerturbation(
                layers, rho_min, rho_max, a.adaptive, a.eta, a.criterion, support
            )
        return self._perturbations[phase]

    def on_iteration(self, model: nn.Module, epoch: int, step: int, steps: int) -> None:
        """A pruning step after every ``adasap.prune_every``-th iteration past the warm-up;
        ``R`` steps in all, the last one reaching the target."""
        warmup = self._warmup()
        if epoch < warmup:
            return
        done = (epoch - warmup) * steps + step + 1  # iterations since the warm-up, this one included
        total = (self.cfg.prune.epochs - warmup) * steps
        every = self.cfg.adasap.prune_every
        count = max(1, total // every)  # R
        r = done // every if done % every == 0 else 0
        if total < every and done == total:
            r = 1  # fewer iterations than one interval: a single step at the end
        if 1 <= r <= count:
            self._prune_to(model, r / count)
            self.started, self.dense = True, False
            log.debug("adasap epoch %d iteration %d: pruning step %d/%d", epoch, step, r, count)

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        last = epoch == self.cfg.prune.epochs - 1
        if self._warmup() == self.cfg.prune.epochs and last:
            self._prune_to(model, 1.0)  # no epoch after the warm-up: one step at the end
            self.started, self.dense = True, False
        elif not self.started:
            self._prune_to(model, 1.0)  # what would be pruned now (reported, not applied)

    def state_dict(self) -> dict[str, Any]:
        return {"dense": self.dense, "started": self.started}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.dense, self.started = bool(state["dense"]), bool(state["started"])
