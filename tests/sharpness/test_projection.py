"""``s2ap.projection``: Algorithm 1's printed step (global normalisation, projection only
past the bound, z carried over) against its per-iteration reset and the surface variant."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from s2ap import layers as L
from s2ap.config import S2APConfig
from s2ap.experiment import from_dict
from s2ap.models import build_model
from s2ap.pruning import build_method
from s2ap.sharpness import LayerwisePerturbation, SharpnessSchedule, score_perturbation
from s2ap.sharpness.projection import DEFAULT_PROJECTION, Algorithm1
from s2ap.sharpness.weights import search_weight_perturbation, weight_perturbation


def pruning_cnn(seed: int = 0) -> tuple[nn.Module, list[L.ScoredLayer]]:
    torch.manual_seed(seed)
    model = build_model("cnn", 10, 3, 16, [0.5] * 3, [0.25] * 3)
    build_method(from_dict({"prune": {"method": "hydra", "sparsity": 0.9}})).prepare(model)
    return model, [layer for _, layer in L.scored_layers(model)]


def gradients(model: nn.Module, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.rand(8, 3, 16, 16, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()


def test_algorithm1_projects_only_layers_past_their_bound() -> None:
    """Projected layers sit exactly on gamma ||s_l||; the others keep eta ||g_l|| / ||g||."""
    model, layers = pruning_cnn()
    gradients(model)
    grads = [layer.scores.grad.clone() for layer in layers]
    total = torch.sqrt(sum(g.square().sum() for g in grads))
    bounds = [0.01 * float(layer.scores.detach().norm()) for layer in layers]
    shares = [0.1 * float(g.norm() / total) for g in grads]
    # eta chosen so that some layers exceed their bound and others do not.
    assert any(s > b for s, b in zip(shares, bounds, strict=True))
    assert any(s < b for s, b in zip(shares, bounds, strict=True))
    before = [layer.scores.detach().clone() for layer in layers]
    pert = score_perturbation(layers, 0.01, "algorithm1_reset", eta=0.1)
    pert.climb()
    for layer, s0, g, bound, share, norm in zip(
        layers, before, grads, bounds, shares, pert.last_norms, strict=True
    ):
        z = layer.scores.detach() - s0
        assert norm == pytest.approx(float(z.norm()), rel=1e-4)
        if share > bound:
            assert norm == pytest.approx(bound, rel=1e-5)  # on the ball's surface
        else:
            assert norm == pytest.approx(share, rel=1e-5)  # inside, untouched by the projection
        cos = F.cosine_similarity(z.flatten(), g.flatten(), dim=0)
        assert float(cos) == pytest.approx(1.0, abs=1e-4)  # along the layer's gradient
    pert.restore()
    assert all(torch.equal(layer.scores, s0) for layer, s0 in zip(layers, before, strict=True))
    # surface puts every layer on its bound.
    surface = score_perturbation(layers, 0.01, "surface")
    surface.climb()
    assert surface.last_norms == pytest.approx(bounds, rel=1e-5)
    surface.restore()


def test_algorithm1_carries_z_over_iterations_and_reset_does_not() -> None:
    model, layers = pruning_cnn()
    gradients(model)
    carry = score_perturbation(layers, 0.5, "algorithm1", eta=1e-4)  # far inside every bound
    reset = score_perturbation(layers, 0.5, "algorithm1_reset", eta=1e-4)
    for pert in (carry, reset):
        pert.climb()
        pert.restore()
    first = list(carry.last_norms)
    assert first == pytest.approx(reset.last_norms, rel=1e-6)
    for pert in (carry, reset):  # the same gradient again
        pert.climb()
        pert.restore()
    # Two steps of eta along one direction: twice as long, where no bound is reached.
    assert carry.last_norms == pytest.approx([2 * n for n in first], rel=1e-5)
    assert reset.last_norms == pytest.approx(first, rel=1e-6)
    # The carried z survives a resume; reset and surface have nothing to carry.
    state = carry.state_dict()
    fresh = score_perturbation(layers, 0.5, "algorithm1", eta=1e-4)
    fresh.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(fresh.z, carry.z, strict=True))
    assert reset.state_dict() == {} and score_perturbation(layers, 0.5, "surface").state_dict() == {}


def test_carried_z_takes_the_gradient_at_s_plus_z_only_when_it_can_differ() -> None:
    """The ascent gradient belongs at s + z_prev: recomputed there when z_prev moves a mask
    entry or a score sign, reused (exactly equal under the straight-through estimator) when not."""
    model, layers = pruning_cnn()
    calls: list[bool] = []

    def regrad() -> None:
        calls.append(True)
        gradients(model)

    for gamma, expect_regrad in ((1e-6, False), (0.5, True)):
        calls.clear()
        pert = score_perturbation(layers, gamma, "algorithm1", eta=10.0)  # every layer on its bound
        for _ in range(2):
            gradients(model)
            if pert.to_ascent_point():
                regrad()
            pert.climb()
            pert.restore()
        assert bool(calls) == expect_regrad


def test_schedule_uses_the_phase_lr_as_eta_and_keeps_its_state() -> None:
    cfg = from_dict({"s2ap": {"enabled": True, "gamma": 0.01, "projection": "algorithm1"}})
    _, layers = pruning_cnn()
    schedule = SharpnessSchedule(cfg.s2ap, layers, search_lr=0.1, finetune_lr=0.01)
    assert isinstance(schedule.search, LayerwisePerturbation) and schedule.search.eta == 0.1
    assert isinstance(schedule.finetune, LayerwisePerturbation) and schedule.finetune.eta == 0.01
    assert schedule.search.projection.name == schedule.finetune.projection.name == "algorithm1"
    assert schedule.state_dict() == {
        "search": {"z": [None] * len(layers)},
        "finetune": {"z": [None] * len(layers)},
    }
    with pytest.raises(ValueError, match="projection must be one of"):
        score_perturbation(layers, 0.01, "sphere")


def test_the_library_default_projection_is_the_configs() -> None:
    """Called without a projection, the library forms z as a run with default settings does
    (Algorithm 1 as printed); without the ascent step it says so instead of perturbing nothing."""
    _, layers = pruning_cnn()
    default = S2APConfig().projection
    assert DEFAULT_PROJECTION == default == "algorithm1"
    assert isinstance(score_perturbation(layers, 0.01, eta=0.1).projection, Algorithm1)
    assert isinstance(weight_perturbation(layers, 0.01, eta=0.1).projection, Algorithm1)
    assert isinstance(search_weight_perturbation(layers, 0.01, eta=0.1).projection, Algorithm1)
    for name in ("algorithm1", "algorithm1_reset"):
        with pytest.raises(ValueError, match="needs the ascent step eta > 0"):
            score_perturbation(layers, 0.01, name)


def _sign_perturbation(p: torch.nn.Parameter) -> LayerwisePerturbation:
    """Algorithm 1 on one tensor whose gradient depends only on its signs."""
    pert = LayerwisePerturbation(
        [p],
        10.0,
        reference=lambda i: p.detach(),
        fingerprint=lambda: [torch.signbit(p.detach())],
        projection="algorithm1",
        eta=1.0,
    )  # far inside the bound: z = z_prev + g / ||g||
    return pert


def test_after_the_pass_at_s_plus_z_prev_the_skip_compares_against_that_point() -> None:
    """The stale-gradient case (issue 26): z_prev flips a sign, so the ascent gradient is taken
    at s + z_prev and overwrites the one at s; the new z flips nothing relative to s. The
    gradient held is then not the one at s + z, so the second pass must run."""
    p = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    pert = _sign_perturbation(p)
    pert.load_state_dict({"z": [torch.tensor([-2.0, 0.0])]})  # s + z_prev = [-1, -1]: a flip
    assert pert.to_ascent_point() and pert.moved and p.grad is None
    assert torch.equal(p.detach(), torch.tensor([-1.0, -1.0]))
    p.grad = torch.tensor([1.0, 0.0])  # the gradient at s + z_prev, pointing back
    pert.climb()  # z = [-2, 0] + [1, 0]: s + z = [0, -1], the signs of s
    assert torch.equal(p.detach(), torch.tensor([0.0, -1.0]))
    assert not pert.unchanged  # the held gradient (at s + z_prev) is not the one at s + z
    pert.restore()
    assert torch.equal(p.detach(), torch.tensor([1.0, -1.0]))


def test_the_second_pass_is_skipped_when_s_plus_z_keeps_the_signs_of_s_plus_z_prev() -> None:
    p = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    pert = _sign_perturbation(p)
    pert.load_state_dict({"z": [torch.tensor([-2.0, 0.0])]})
    assert pert.to_ascent_point()
    p.grad = torch.tensor([-1.0, 0.0])  # further along z_prev: s + z = [-2, -1], signs of s + z_prev
    pert.climb()
    assert pert.unchanged  # the gradient held at s + z_prev is the one at s + z
    pert.restore()
    # Without a carried z the comparison is against s itself, as before.
    fresh = _sign_perturbation(p)
    p.grad = torch.tensor([0.5, 0.0])
    assert not fresh.to_ascent_point() and not fresh.moved
    fresh.climb()  # s + z = [2, -1]
    assert fresh.unchanged
    fresh.restore()
