"""Masked layers, methods, S2AP / AWP perturbations, PGD and TRADES."""

import math

import pytest
import torch
import torch.nn.functional as F

from s2ap import layers as L
from s2ap.attacks import PGD
from s2ap.experiment import from_dict
from s2ap.models import MODELS, build_model
from s2ap.objectives import TradesObjective, trades_loss
from s2ap.pruning import METHODS, build_method
from s2ap.sharpness import score_perturbation, weight_perturbation

SMALL = {"resnet50": 32, "vit": 8, "wrn28_4": 8}


def small_model(name: str = "cnn", channels: int = 3, size: int | None = None, **kw):
    size = size or SMALL.get(name, 16)
    return build_model(name, 10, channels, size, [0.5] * channels, [0.25] * channels, **kw)


def method_cfg(method: str, sparsity: float):
    return from_dict({"prune": {"method": method, "sparsity": sparsity}, "model": {"name": "cnn"}})


@pytest.mark.parametrize("method", METHODS.names())
@pytest.mark.parametrize("model_name", MODELS.names())
def test_mask_density_exact_per_layer_and_overall(model_name: str, method: str) -> None:
    model = small_model(model_name)
    sparsity = 0.9
    build_method(method_cfg(method, sparsity)).prepare(model)
    total_kept = total = 0
    for name, mask in L.masks(model).items():
        n = mask.numel()
        expected = max(1, round((1 - sparsity) * n))
        assert int(mask.sum()) == expected, name
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        total_kept += expected
        total += n
    overall, per_layer = L.density(model)
    assert overall == pytest.approx(total_kept / total)
    assert overall == pytest.approx(1 - sparsity, abs=0.01)
    assert len(per_layer) == len(L.scored_layers(model))


def test_scaled_init_gives_layerwise_magnitude_mask() -> None:
    model = small_model()
    build_method(method_cfg("hydra", 0.8)).prepare(model)
    for _, layer in L.scored_layers(model):
        w = layer.weight.detach().abs().flatten()
        k = round(0.2 * w.numel())
        expected = torch.zeros_like(w)
        expected[w.topk(k).indices] = 1
        assert torch.equal(layer.score_mask().flatten(), expected)
        ratio = layer.scores.detach() / layer.weight.detach()
        assert torch.allclose(
            ratio, torch.full_like(ratio, math.sqrt(6 / layer.fan_in) / layer.weight.abs().max().item())
        )


def test_gradients_reach_scores_not_frozen_weights() -> None:
    model = small_model()
    method = build_method(method_cfg("hydra", 0.9))
    method.prepare(model)
    trainable = {id(p) for p in method.parameters(model)}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    x, y = torch.rand(4, 3, 16, 16), torch.randint(0, 10, (4,))
    F.cross_entropy(model(x), y).backward()
    for name, layer in L.scored_layers(model):
        assert layer.scores.grad is not None and layer.scores.grad.abs().sum() > 0, name
        assert layer.weight.grad is None, name
    # Straight-through: the score gradient is dL/d(w*m) * w * sign(s), also for pruned entries.
    layer = L.scored_layers(model)[0][1]
    pruned = layer.score_mask() == 0
    assert layer.scores.grad[pruned].abs().sum() > 0


def test_mask_cache_follows_score_updates() -> None:
    model = small_model()
    build_method(method_cfg("hydra", 0.5)).prepare(model)
    layer = L.scored_layers(model)[0][1]
    before = layer.score_mask().clone()
    with torch.no_grad():
        layer.scores.mul_(-1).add_(torch.randn_like(layer.scores))
    assert not torch.equal(before, layer.score_mask())
    assert torch.equal(layer.score_mask(), L.topk_mask(layer.scores.abs(), layer.keep))


def test_dense_export_loads_into_plain_model_with_same_outputs() -> None:
    model = small_model()
    build_method(method_cfg("hydra", 0.9)).prepare(model)
    L.freeze_masks(model)
    plain = small_model(masked=False)
    plain.load_state_dict(L.dense_state_dict(model), strict=True)
    x = torch.rand(3, 3, 16, 16)
    assert torch.allclose(plain(x), model(x), atol=1e-6)
    zeros = sum(
        int((m.weight == 0).sum())
        for m in plain.modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    )
    kept, _ = L.density(model)
    assert zeros >= (1 - kept) * sum(layer.weight.numel() for _, layer in L.scored_layers(model)) - 1


@pytest.mark.parametrize("gamma", [0.001, 0.01, 0.5])
def test_s2ap_perturbation_norm_and_exact_removal(gamma: float) -> None:
    model = small_model()
    build_method(method_cfg("hydra", 0.9)).prepare(model)
    layers = [layer for _, layer in L.scored_layers(model)]
    x, y = torch.rand(8, 3, 16, 16), torch.randint(0, 10, (8,))
    F.cross_entropy(model(x), y).backward()
    before = [layer.scores.detach().clone() for layer in layers]
    pert = score_perturbation(layers, gamma)
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
    pert = weight_perturbation(layers, 0.01)
    pert.climb()
    for layer, w0 in zip(layers, before, strict=True):
        nu = layer.weight.detach() - w0
        mask = layer.full_mask()
        assert nu[mask == 0].abs().max() == 0
        assert nu.norm().item() == pytest.approx(0.01 * (w0 * mask).norm().item(), rel=1e-4)
    pert.restore()
    assert all(torch.equal(layer.weight.detach(), w0) for layer, w0 in zip(layers, before, strict=True))


def test_pgd_stays_in_eps_ball_and_unit_box() -> None:
    model = small_model()
    x = torch.rand(16, 3, 16, 16)
    x[:4] = 0.0
    x[4:8] = 1.0
    y = torch.randint(0, 10, (16,))
    for loss in ("ce", "kl"):
        adv = PGD(eps=8 / 255, step_size=2 / 255, steps=5, loss=loss)(model, x, y)
        assert (adv - x).abs().max() <= 8 / 255 + 1e-6
        assert adv.min() >= 0 and adv.max() <= 1
        assert (adv - x).abs().max() > 0


def test_pgd_restores_model_mode_and_increases_loss() -> None:
    model = small_model()
    model.train()
    x, y = torch.rand(32, 3, 16, 16), torch.randint(0, 10, (32,))
    adv = PGD(steps=10, random_start=False)(model, x, y)
    assert model.training
    model.eval()
    with torch.no_grad():
        assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y)


def test_trades_matches_formula() -> None:
    torch.manual_seed(1)
    clean, adv = torch.randn(6, 10), torch.randn(6, 10)
    y = torch.randint(0, 10, (6,))
    p_clean = clean.softmax(1)
    kl = (p_clean * (p_clean.log() - adv.log_softmax(1))).sum(1).mean()
    expected = F.cross_entropy(clean, y) + 6.0 * kl
    assert trades_loss(clean, adv, y, 6.0).item() == pytest.approx(expected.item(), rel=1e-5)
    model = small_model()
    obj = TradesObjective(PGD(steps=2), beta=6.0)
    batch = obj.craft(model, torch.rand(4, 3, 16, 16), torch.randint(0, 10, (4,)))
    loss, logits = obj.loss(model, batch)
    expected = trades_loss(model(batch.x), model(batch.x_adv), batch.y, 6.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
