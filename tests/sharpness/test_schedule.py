"""The schedule: which perturbation wraps each epoch of each phase, built once per run."""

from __future__ import annotations

import pytest
import torch

from s2ap import layers as L
from s2ap.config import S2APConfig
from s2ap.models import build_model
from s2ap.sharpness import LayerwisePerturbation, Perturbation, SearchWeightPerturbation, SharpnessSchedule


def layers():
    net = build_model("cnn", 10, 3, 8, [0.5] * 3, [0.25] * 3)
    return [layer for _, layer in L.scored_layers(net)]


def test_s2ap_after_its_warmup_awp_when_finetuning_never_when_pretraining() -> None:
    ls = layers()
    schedule = SharpnessSchedule(
        S2APConfig(enabled=True, gamma=0.01, warmup_epochs=2), ls, search_lr=0.1, finetune_lr=0.01
    )
    assert schedule.for_epoch("pretrain", 5) is None
    assert schedule.for_epoch("prune", 0) is None and schedule.for_epoch("prune", 1) is None
    s2ap = schedule.for_epoch("prune", 2)
    assert isinstance(s2ap, LayerwisePerturbation) and s2ap.params[0] is ls[0].scores and s2ap.gamma == 0.01
    assert schedule.for_epoch("prune", 3) is s2ap  # built once, reused every epoch
    awp = schedule.for_epoch("finetune", 0)
    assert isinstance(awp, LayerwisePerturbation) and awp.params[0] is ls[0].weight
    assert schedule.for_epoch("finetune", 7) is awp


@pytest.mark.parametrize(
    "cfg",
    [
        S2APConfig(enabled=False, gamma=0.01),
        S2APConfig(enabled=True, gamma=0.0),
        S2APConfig(enabled=False, gamma=0.0),
    ],
)
def test_no_perturbation_when_s2ap_is_off_or_gamma_is_zero(cfg: S2APConfig) -> None:
    schedule = SharpnessSchedule(cfg, layers(), search_lr=0.1, finetune_lr=0.01)
    assert all(schedule.for_epoch(p, e) is None for p in ("pretrain", "prune", "finetune") for e in range(8))


def test_finetune_awp_can_be_switched_off() -> None:
    schedule = SharpnessSchedule(
        S2APConfig(enabled=True, gamma=0.01, warmup_epochs=0), layers(), awp=False, search_lr=0.1
    )
    assert schedule.for_epoch("prune", 0) is not None and schedule.for_epoch("finetune", 0) is None


def test_perturbing_weights_during_the_search_makes_them_climbable() -> None:
    ls = layers()
    schedule = SharpnessSchedule(
        S2APConfig(enabled=True, gamma=0.01, warmup_epochs=1, perturb="weights"),
        ls,
        search_lr=0.1,
        finetune_lr=0.01,
    )
    for layer in ls:
        layer.weight.requires_grad_(False)  # the search trains only the scores
    pert = schedule.for_epoch("prune", 1)
    assert isinstance(pert, SearchWeightPerturbation)
    assert all(layer.weight.requires_grad for layer in ls)  # begin() re-enabled their gradients


def test_a_methods_own_perturbation_wins_in_every_phase() -> None:
    own = Perturbation([torch.nn.Parameter(torch.ones(1))])
    asked: list[tuple[str, int]] = []

    def method(phase: str, epoch: int) -> Perturbation | None:
        asked.append((phase, epoch))
        return own if phase != "pretrain" else None

    schedule = SharpnessSchedule(
        S2APConfig(enabled=True, gamma=0.01, warmup_epochs=0),
        layers(),
        own=method,
        search_lr=0.1,
        finetune_lr=0.01,
    )
    assert schedule.for_epoch("pretrain", 0) is None
    assert schedule.for_epoch("prune", 0) is own and schedule.for_epoch("finetune", 3) is own
    assert asked == [("pretrain", 0), ("prune", 0), ("finetune", 3)]
