"""Score-masked layers: exact densities, the scaled init, gradients to the scores, the top-k cache, the dense export."""

import math

import pytest
import torch
import torch.nn.functional as F

from s2ap import layers as L
from s2ap.experiment import from_dict
from s2ap.models import MODELS, build_model
from s2ap.pruning import METHODS, build_method

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
