"""``s2ap.ascent: previous``: line 6's ascent direction from the gradient the previous update
used, so no pass is spent on the ascent (issue 26, item 3)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from s2ap import layers as L
from s2ap.config import AttackConfig, ObjectiveConfig
from s2ap.errors import ConfigError
from s2ap.experiment import from_dict, identity
from s2ap.models import build_model
from s2ap.objectives import build_objective
from s2ap.pruning import build_method
from s2ap.sharpness import SharpnessSchedule, score_perturbation, weight_perturbation
from s2ap.train import Trainer, build_optimizer

CLEAN = build_objective(ObjectiveConfig(name="clean"), AttackConfig())


def scored(model: nn.Module) -> list[L.ScoredLayer]:
    return [layer for _, layer in L.scored_layers(model)]


def pruning_net(name: str, what: str = "scores", seed: int = 0) -> tuple[nn.Module, list[nn.Parameter]]:
    """A network in score mode (``what="scores"``: the search) or with its mask fixed and its
    weights trainable (``"weights"``: finetuning)."""
    torch.manual_seed(seed)
    model = build_model(name, 10, 3, 8, [0.5] * 3, [0.25] * 3)
    method = build_method(from_dict({"prune": {"method": "hydra", "sparsity": 0.8}}))
    method.prepare(model)
    if what == "scores":
        params = method.parameters(model)
    else:
        L.freeze_masks(model)
        params = [layer.weight for layer in scored(model)]  # type: ignore[misc]
    for p in model.parameters():
        p.requires_grad_(any(p is q for q in params))
    return model, params


class Passes:
    """Counts the training passes through ``model``: forwards with and without autograd,
    and backwards (gradients arriving at ``leaf``)."""

    def __init__(self, model: nn.Module, leaf: nn.Parameter) -> None:
        self.with_grad = self.without_grad = self.backward = 0
        model.register_forward_hook(self._forward)
        leaf.register_hook(self._backward)

    def _forward(self, *_: object) -> None:
        if torch.is_grad_enabled():
            self.with_grad += 1
        else:
            self.without_grad += 1

    def _backward(self, g: torch.Tensor) -> None:
        self.backward += 1


@pytest.mark.parametrize(
    "what", [pytest.param("scores", marks=pytest.mark.slow), "weights"], ids=["s2ap", "awp-finetune"]
)
def test_previous_spends_no_pass_on_the_ascent(what: str) -> None:
    """After the first step (fresh: nothing is kept yet), per iteration one forward/backward
    at p + z plus the forward at p that line 4 needs (or, where p + z has p's mask and signs,
    the one pass at p); never an extra pass at p + z_prev. ``fresh`` needs the extra pass."""
    steps = 3
    x, y = torch.rand(6, 3, 8, 8), torch.randint(0, 10, (6,))
    counts = {}
    for ascent in ("fresh", "previous"):
        model, params = pruning_net("resnet18", what)  # with batch norm
        make = score_perturbation if what == "scores" else weight_perturbation
        pert = make(scored(model), 0.5, "algorithm1", 10.0, ascent)
        trainer = Trainer(model, CLEAN, build_optimizer(params, "sgd", 0.1, 0.9, 0.0))
        trainer.step(x, y, perturbation=pert)
        passes = Passes(model, params[0])
        changed, moved = 0, 0
        for _ in range(steps):
            changed += int(trainer.step(x, y, perturbation=pert)[2])
            moved += int(pert.moved)
        counts[ascent] = (passes.with_grad, passes.without_grad, passes.backward, changed, moved)
    with_grad, without_grad, backward, changed, moved = counts["previous"]
    assert moved == 0  # no pass at p + z_prev, ever
    assert backward == steps == with_grad  # one backward per iteration
    assert without_grad == changed  # the pass at p is forward only wherever p + z differs
    assert changed >= 2  # the cheap steps did run at p + z
    assert counts["previous"][0] + counts["previous"][1] < counts["fresh"][0] + counts["fresh"][1]
    assert counts["fresh"][4] > 0 and counts["fresh"][2] > steps  # fresh pays for its ascent


def test_previous_ascends_along_the_gradient_the_last_update_used() -> None:
    """Two steps computed by hand: the first is fresh (nothing kept yet), the second climbs
    along the gradient at s_1 + z_1, the one the first update used."""
    model, params = pruning_net("cnn")
    x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 10, (16,))
    gamma, lr = 0.3, 1.0
    ref = copy.deepcopy(model)
    s = [layer.scores for layer in scored(ref)]

    def grad() -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad(F.cross_entropy(ref(x), y), s)

    def climb(g: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        start = [t.detach().clone() for t in s]
        with torch.no_grad():
            for t, gi in zip(s, g, strict=True):
                t.add_(gamma * t.norm() / gi.norm() * gi)
        return start

    ascent = grad()  # step 1: the gradient at s_0
    expected = []
    for _ in range(2):
        start = climb(ascent)
        ascent = grad()  # at s + z: the update's gradient, and the next step's ascent direction
        with torch.no_grad():
            for t, t0, g in zip(s, start, ascent, strict=True):
                t.copy_(t0 - lr * g)
        expected.append([t.detach().clone() for t in s])

    pert = score_perturbation(scored(model), gamma, "surface", ascent="previous")
    trainer = Trainer(model, CLEAN, build_optimizer(params, "sgd", lr, 0.0, 0.0))
    for want in expected:
        trainer.step(x, y, perturbation=pert)
        for layer, w in zip(scored(model), want, strict=True):
            assert torch.allclose(layer.scores.detach(), w, atol=1e-6)
    assert pert.kept is not None
    assert all(torch.allclose(k, g, atol=1e-6) for k, g in zip(pert.kept, ascent, strict=True))


def test_the_kept_gradient_is_in_the_state_and_a_resumed_step_is_bit_exact() -> None:
    x, y = torch.rand(6, 3, 8, 8), torch.randint(0, 10, (6,))
    runs = []
    for resume in (False, True):
        model, params = pruning_net("cnn")  # what is resumed (z, the kept gradient) is per layer
        pert = score_perturbation(scored(model), 0.5, "algorithm1", 10.0, "previous")
        trainer = Trainer(model, CLEAN, build_optimizer(params, "sgd", 0.1, 0.9, 0.0))
        trainer.step(x, y, perturbation=pert)
        state = pert.state_dict()
        assert set(state) == {"z", "kept_grad"} and all(g is not None for g in state["kept_grad"])
        if resume:  # a new perturbation object from the saved state
            pert = score_perturbation(scored(model), 0.5, "algorithm1", 10.0, "previous")
            pert.load_state_dict(state)
        trainer.step(x, y, perturbation=pert)
        assert not pert.moved
        runs.append([layer.scores.detach().clone() for layer in scored(model)])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
    # fresh keeps nothing beyond its carried z.
    fresh = score_perturbation(scored(pruning_net("cnn")[0]), 0.5, "algorithm1", 10.0)
    assert set(fresh.state_dict()) == {"z"}


def test_the_setting_reaches_both_perturbations_and_the_identity() -> None:
    cfg = from_dict({"s2ap": {"enabled": True, "ascent": "previous"}})
    schedule = SharpnessSchedule(cfg.s2ap, scored(pruning_net("cnn")[0]), search_lr=0.1, finetune_lr=0.01)
    assert schedule.search.ascent_from == schedule.finetune.ascent_from == "previous"  # type: ignore[union-attr]
    default = from_dict({"s2ap": {"enabled": True}})
    assert default.s2ap.ascent == "fresh" and default.hash() != cfg.hash()
    assert identity(cfg)["ascent"] == "previous" and identity(default)["ascent"] == "fresh"
    assert identity(from_dict({"s2ap": {"ascent": "previous"}}))["ascent"] is None  # S2AP off
    with pytest.raises(ConfigError) as err:
        from_dict({"s2ap": {"ascent": "stale"}})
    assert err.value.field == "s2ap.ascent"
    with pytest.raises(ValueError, match="ascent must be one of"):
        score_perturbation(scored(pruning_net("cnn")[0]), 0.1, ascent="stale")
