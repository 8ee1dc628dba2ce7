"""Which sharpness-aware perturbation, if any, wraps each training epoch.

Built once per run from the ``s2ap`` section: the perturbation objects are made here, once,
and handed to the training loop epoch by epoch. The rule (the paper's Sect. 4.1):

* a method with its own perturbation (AdaSAP) decides for itself, every phase;
* pruning: after ``s2ap.warmup_epochs`` plain epochs, S2AP on the scores (or, with
  ``s2ap.perturb: weights``, AWP on the frozen weights: the Table 13 ablation), along the
  ascent gradient or, with ``s2ap.direction: random``, a seeded random direction of the
  same per-layer norms (the control);
* finetuning: AWP on the kept weights (Algorithm 2) when ``finetune.awp`` (null: with S2AP),
  whether or not S2AP pruned;
* pretraining: never.

S2AP with ``gamma = 0`` (or disabled) perturbs nothing, so such a run *is* the original
method, step for step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from s2ap.config import S2APConfig
from s2ap.layers import ScoredLayer
from s2ap.seeding import derive_seed
from s2ap.sharpness.perturbation import Perturbation
from s2ap.sharpness.scores import score_perturbation
from s2ap.sharpness.weights import search_weight_perturbation, weight_perturbation

OwnPerturbation = Callable[[str, int], Perturbation | None]


def _none(phase: str, epoch: int) -> Perturbation | None:
    return None


class SharpnessSchedule:
    """Answers :meth:`for_epoch`: the perturbation for one epoch of one phase, or None."""

    def __init__(
        self,
        s2ap: S2APConfig,
        layers: Sequence[ScoredLayer],
        own: OwnPerturbation = _none,
        search_lr: float = 0.0,
        finetune_lr: float = 0.0,
        awp: bool | None = None,
        seed: int = 0,
    ) -> None:
        """``search_lr`` / ``finetune_lr``: the phases' learning rates, the ascent step eta
        of the ``algorithm1`` projections (Algorithm 1 and 2 use one eta for both steps).
        ``awp``: AWP in finetuning (``ExperimentConfig.finetune_awp``; None: with S2AP).
        ``seed``: the run's seed, which the random-direction control draws from."""
        self.warmup_epochs = s2ap.warmup_epochs
        self.own = own  # the method's own perturbation for (phase, epoch), if it has one
        self.search: Perturbation | None = None
        self.finetune: Perturbation | None = None
        if s2ap.active:
            search = score_perturbation if s2ap.perturb == "scores" else search_weight_perturbation
            self.search = search(layers, s2ap.gamma, s2ap.projection, search_lr, s2ap.ascent)
            if s2ap.direction == "random":
                self.search.randomize(derive_seed(seed, "random_direction"))
        if (s2ap.enabled if awp is None else awp) and s2ap.gamma > 0:
            self.finetune = weight_perturbation(layers, s2ap.gamma, s2ap.projection, finetune_lr, s2ap.ascent)

    def for_epoch(self, phase: str, epoch: int) -> Perturbation | None:
        chosen = self.own(phase, epoch)
        if chosen is None:
            if phase == "prune" and epoch >= self.warmup_epochs:
                chosen = self.search
            elif phase == "finetune":
                chosen = self.finetune
        if chosen is not None:
            chosen.begin()
        return chosen

    def state_dict(self) -> dict[str, Any]:
        """The carried-over perturbations (``algorithm1``) and the kept ascent gradients
        (``s2ap.ascent: previous``), for the run state."""
        out = {}
        for name, p in (("search", self.search), ("finetune", self.finetune)):
            state = {} if p is None else p.state_dict()
            if state:
                out[name] = state
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, p in (("search", self.search), ("finetune", self.finetune)):
            if p is not None and name in state:
                p.load_state_dict(state[name])
