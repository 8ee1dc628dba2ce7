"""Training objectives: TRADES (Zhang et al., 2019), PGD adversarial training (Madry et al.,
2018) and plain cross-entropy (the paper's Table 11).

An objective is split in two so that S2AP and AWP can evaluate the loss twice on the same
adversarial batch: ``craft`` builds the adversarial inputs once (the expensive part) and
``loss`` evaluates the robust loss of the current parameters on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from s2ap.attacks import PGD
from s2ap.config import AttackConfig, ObjectiveConfig


@dataclass
class Batch:
    """A training batch with its adversarial counterpart (``x_adv`` is None for clean)."""

    x: Tensor
    y: Tensor
    x_adv: Tensor | None


class Objective:
    name = "base"

    def __init__(self, attack: PGD | None) -> None:
        self.attack = attack

    def craft(self, model: nn.Module, x: Tensor, y: Tensor, noise: Tensor | None = None) -> Batch:
        x_adv = None if self.attack is None else self.attack(model, x, y, noise)
        return Batch(x, y, x_adv)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
        """The robust loss (mean over the batch) and the logits used for accuracy."""
        raise NotImplementedError


class CleanObjective(Objective):
    name = "clean"

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
        logits = model(batch.x)
        return F.cross_entropy(logits, batch.y), logits


class PGDObjective(Objective):
    """Adversarial training: cross-entropy on PGD examples."""

    name = "pgd"

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
        assert batch.x_adv is not None
        logits = model(batch.x_adv)
        return F.cross_entropy(logits, batch.y), logits


class TradesObjective(Objective):
    """``CE(f(x), y) + beta * KL(f(x) || f(x'))`` with x' maximising the KL term."""

    name = "trades"

    def __init__(self, attack: PGD, beta: float = 6.0) -> None:
        super().__init__(attack)
        self.beta = beta

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
        assert batch.x_adv is not None
        # Two forwards, as in the reference TRADES: a joint batch would change BatchNorm's
        # batch statistics.
        clean = model(batch.x)
        adv = model(batch.x_adv)
        return trades_loss(clean, adv, batch.y, self.beta), adv


def trades_loss(clean_logits: Tensor, adv_logits: Tensor, y: Tensor, beta: float) -> Tensor:
    natural = F.cross_entropy(clean_logits, y)
    robust = F.kl_div(F.log_softmax(adv_logits, dim=1), F.softmax(clean_logits, dim=1), reduction="batchmean")
    return natural + beta * robust


def build_objective(cfg: ObjectiveConfig, attack: AttackConfig) -> Objective:
    if cfg.name == "clean":
        return CleanObjective(None)
    pgd = PGD(
        eps=attack.eps,
        step_size=attack.step_size,
        steps=attack.steps,
        random_start=attack.random_start,
        loss="kl" if cfg.name == "trades" else "ce",
    )
    if cfg.name == "trades":
        return TradesObjective(pgd, cfg.beta)
    return PGDObjective(pgd)
