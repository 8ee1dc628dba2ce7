"""The sharpness-aware perturbations: norms on their balls, supports, ascent directions,
exact removal, and the SAM contract (climb, then restore, exactly once each)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from s2ap import layers as L
from s2ap.experiment import from_dict
from s2ap.models import build_model
from s2ap.pruning import build_method
from s2ap.sharpness import (
    AdaptiveWeightPerturbation,
    LayerwisePerturbation,
    adaptive_radii,
    neuron_importance,
    score_perturbation,
    search_weight_perturbation,
    weight_perturbation,
)

SIZES = {"resnet50": 32}


def small_model(name: str = "cnn", channels: int = 3, size: int = 16, **kw):
    return build_model(name, 10, channels, size, [0.5] * channels, [0.25] * channels, **kw)


def method_cfg(method: str, sparsity: float):
    return from_dict({"prune": {"method": method, "sparsity": sparsity}, "model": {"name": "cnn"}})


def bound(method: str, model: str = "cnn", granularity: str = "weight", **prune: object):
    """A method bound to a fresh model and prepared, as the pipeline does."""
    size = SIZES.get(model, 8)
    net = build_model(model, 10, 3, size, [0.5] * 3, [0.25] * 3, granularity=granularity)
    if granularity == "channel":
        prune = {"granularity": "channel", **prune}
    m = build_method(from_dict({"model": {"name": model}, "prune": {"method": method, **prune}}))
    m.bind(net, (1, 3, size, size))
    m.prepare(net)
    return m, net


def scored(model):
    return [layer for _, layer in L.scored_layers(model)]


@pytest.mark.parametrize("gamma", [0.001, 0.01, 0.5])
def test_s2ap_perturbation_norm_and_exact_removal(gamma: float) -> None:
    model = small_model()
    build_method(method_cfg("hydra", 0.9)).prepare(model)
    layers = [layer for _, layer in L.scored_layers(model)]
    x, y = torch.rand(8, 3, 16, 16), torch.randint(0, 10, (8,))
    F.cross_entropy(model(x), y).backward()
    before = [layer.scores.detach().clone() for layer in layers]
    pert = score_perturbation(layers, gamma, "surface")
    pert.climb()
    for layer, s0 in zip(layers, before, strict=True):
        z = layer.scores.detach() - s0
        assert z.norm().item() == pytest.approx(gamma * s0.norm().item(), rel=1e-4)
        # Ascent direction: z is parallel to the gradient.
        cos = F.cosine_similarity(z.flatten(), layer.scores.grad.flatten(), dim=0)
        assert cos.item() == pytest.approx(1.0, abs=1e-4)
    pert.restore()
    for layer, s0 in zip(layers, before, strict=True):
        assert torch.equal(layer.scores.detach(), s0)


def test_awp_perturbs_only_kept_weights_within_bound() -> None:
    model = small_model()
    build_method(method_cfg("hydra", 0.8)).prepare(model)
    L.freeze_masks(model)
    layers = [layer for _, layer in L.scored_layers(model)]
    x, y = torch.rand(8, 3, 16, 16), torch.randint(0, 10, (8,))
    F.cross_entropy(model(x), y).backward()
    before = [layer.weight.detach().clone() for layer in layers]
    pert = weight_perturbation(layers, 0.01, "surface")
    pert.climb()
    for layer, w0 in zip(layers, before, strict=True):
        nu = layer.weight.detach() - w0
        mask = layer.full_mask()
        assert nu[mask == 0].abs().max() == 0
        assert nu.norm().item() == pytest.approx(0.01 * (w0 * mask).norm().item(), rel=1e-4)
    pert.restore()
    assert all(torch.equal(layer.weight.detach(), w0) for layer, w0 in zip(layers, before, strict=True))


def test_search_weight_perturbation_bound_support_and_cleanup() -> None:
    _, net = bound("hydra")
    layers = [layer for _, layer in L.scored_layers(net)]
    pert = search_weight_perturbation(layers, 0.01, "surface")
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 10, (8,))
    F.cross_entropy(net(x), y).backward()
    before = [layer.weight.detach().clone() for layer in layers]
    pert.climb()
    for layer, w0 in zip(layers, before, strict=True):
        nu = layer.weight.detach() - w0
        kept = layer.full_mask()
        assert nu[kept == 0].abs().max() == 0
        assert nu.norm().item() == pytest.approx(0.01 * w0.norm().item(), rel=1e-4)
    pert.restore()
    for layer, w0 in zip(layers, before, strict=True):
        assert torch.equal(layer.weight.detach(), w0) and layer.weight.grad is None


def test_adasap_radii_are_ordered_by_importance() -> None:
    importance = torch.rand(50, generator=torch.Generator().manual_seed(0))
    rho = adaptive_radii(importance, 0.01, 2.0)
    order = importance.argsort()
    assert (rho[order].diff() <= 0).all()  # more important, smaller ball
    assert rho.max().item() == pytest.approx(2.0) and rho.min().item() == pytest.approx(0.01)
    assert rho[importance.argmin()] == rho.max() and rho[importance.argmax()] == rho.min()


@pytest.mark.parametrize("adaptive", [True, False])
def test_adasap_perturbation_puts_each_neuron_on_its_own_ball(adaptive: bool) -> None:
    m, net = bound("adasap", granularity="channel")
    m.dense = True  # warm-up: every neuron is live
    layers = [layer for _, layer in L.scored_layers(net)]
    pert = AdaptiveWeightPerturbation(layers, 0.01, 2.0, adaptive=adaptive, eta=0.01)
    F.cross_entropy(net(torch.rand(16, 3, 8, 8)), torch.randint(0, 10, (16,))).backward()
    before = [layer.weight.detach().clone() for layer in layers]
    grads = [layer.weight.grad.clone() for layer in layers]
    pert.climb()
    for layer, w0, g, rho in zip(layers, before, grads, pert.last_radii, strict=True):
        eps = layer.weight.detach() - w0
        t = w0.abs() + 0.01 if adaptive else torch.ones_like(w0)
        ball = (eps / t).flatten(1).norm(dim=1)  # ||T^-1 eps_i|| per neuron
        live = g.flatten(1).norm(dim=1) > 0  # a dead ReLU unit has no gradient to climb
        assert live.float().mean() > 0.5
        assert torch.allclose(ball[live], rho[live], rtol=1e-4)
        norms = neuron_importance(w0, channel=True)
        assert (rho[norms.argsort()].diff() <= 1e-7).all()
    pert.restore()
    assert all(torch.equal(layer.weight.detach(), w0) for layer, w0 in zip(layers, before, strict=True))


def test_climb_and_restore_come_in_pairs() -> None:
    model = small_model()
    build_method(method_cfg("hydra", 0.9)).prepare(model)
    pert = score_perturbation(scored(model), 0.01, "surface")
    with pytest.raises(RuntimeError, match="before climb"):
        pert.restore()
    F.cross_entropy(model(torch.rand(4, 3, 16, 16)), torch.randint(0, 10, (4,))).backward()
    pert.climb()
    with pytest.raises(RuntimeError, match="twice"):
        pert.climb()
    pert.restore()


def test_a_layer_without_gradient_stays_where_it_is() -> None:
    p, q = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    (p * torch.tensor([1.0, 2.0, 3.0])).sum().backward()  # q gets no gradient
    pert = LayerwisePerturbation([p, q], 0.5, reference=lambda i: [p, q][i].detach(), projection="surface")
    pert.climb()
    assert torch.equal(q.detach(), torch.ones(2)) and pert.last_norms[1] == 0.0
    assert pert.last_norms[0] == pytest.approx(0.5 * 3**0.5, rel=1e-6)
    pert.restore()
    assert torch.equal(p.detach(), torch.ones(3))


def test_s2ap_reports_when_it_cannot_change_the_update() -> None:
    """A gamma too small to flip any mask entry or score sign leaves the gradient as it was:
    the perturbation says so (the loop then skips the second pass); a large one does not."""
    model = small_model()
    build_method(method_cfg("hydra", 0.5)).prepare(model)
    layers = scored(model)
    F.cross_entropy(model(torch.rand(8, 3, 16, 16)), torch.randint(0, 10, (8,))).backward()
    tiny = score_perturbation(layers, 1e-12, "surface")
    tiny.climb()
    assert tiny.unchanged
    tiny.restore()
    large = score_perturbation(layers, 0.5, "surface")
    large.climb()
    assert not large.unchanged
    large.restore()
