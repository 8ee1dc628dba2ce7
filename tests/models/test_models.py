"""Architecture tests: shapes, which layers are prunable, masked/plain compatibility, counts.

Parametrised over the registry so a newly registered model is covered automatically. The
large models run at small inputs (see ``_size``) to keep the file fast on one CPU thread.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from s2ap.layers import (
    PLAIN,
    LayerFactory,
    ScoredLayer,
    dense_state_dict,
    init_scores,
    scored_layers,
    set_keep,
    set_mode,
)
from s2ap.models import MODELS, build_model

NAMES = MODELS.names()
NUM_CLASSES = 10
BATCH = 2
# Small but non-trivial test sizes; anything not listed runs at 16x16 (or its minimum).
_TEST_SIZES = {"resnet50": 32, "vit": 8, "wrn28_4": 8}


def _size(name: str) -> int:
    return max(MODELS.get(name).min_image_size, _TEST_SIZES.get(name, 16))


def _build(name: str, masked: bool, in_channels: int = 3, image_size: int | None = None) -> nn.Module:
    size = _size(name) if image_size is None else image_size
    return build_model(
        name,
        NUM_CLASSES,
        in_channels,
        size,
        mean=[0.5] * in_channels,
        std=[0.25] * in_channels,
        masked=masked,
    )


def _head_name(model: nn.Module) -> str:
    """The classifier head is the last conv/linear module in definition order."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)][-1]


def test_registry_has_the_expected_models() -> None:
    assert {"cnn", "resnet18", "resnet50", "vgg16_bn", "wrn28_4", "vit"} <= set(NAMES)
    assert MODELS.get("vit").prune_head is False


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_output_shape(name: str, in_channels: int) -> None:
    model = _build(name, masked=True, in_channels=in_channels).eval()
    with torch.no_grad():
        out = model(torch.rand(BATCH, in_channels, _size(name), _size(name)))
    assert out.shape == (BATCH, NUM_CLASSES)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_minimum_image_size_runs(name: str) -> None:
    size = MODELS.get(name).min_image_size
    model = _build(name, masked=False, in_channels=1, image_size=size).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, size, size)).shape == (1, NUM_CLASSES)


@pytest.mark.parametrize("name", NAMES)
def test_every_conv_and_linear_is_scored_except_an_unpruned_head(name: str) -> None:
    model = _build(name, masked=True)
    head = _head_name(model)
    prune_head = MODELS.get(name).prune_head
    for module_name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d | nn.Linear):
            continue
        expect_scored = prune_head or module_name != head
        assert isinstance(module, ScoredLayer) == expect_scored, module_name
    assert scored_layers(model)


@pytest.mark.parametrize("name", NAMES)
def test_prune_layers_all_scores_the_head(name: str) -> None:
    model = build_model(name, NUM_CLASSES, 3, _size(name), [0.5] * 3, [0.25] * 3, prune_layers="all")
    assert isinstance(dict(model.named_modules())[_head_name(model)], ScoredLayer)
    model = build_model(name, NUM_CLASSES, 3, _size(name), [0.5] * 3, [0.25] * 3, prune_layers="all_but_last")
    assert not isinstance(dict(model.named_modules())[_head_name(model)], ScoredLayer)


@pytest.mark.parametrize("name", NAMES)
def test_plain_build_matches_masked_keys_and_loads_dense_checkpoint(name: str) -> None:
    masked = _build(name, masked=True)
    plain = _build(name, masked=False)
    assert not scored_layers(plain)
    expected = {k for k in masked.state_dict() if not k.endswith((".scores", ".mask"))}
    assert set(plain.state_dict()) == expected
    plain.load_state_dict(dense_state_dict(masked), strict=True)


@pytest.mark.parametrize("name", NAMES)
def test_score_gradients_reach_every_layer(name: str) -> None:
    model = _build(name, masked=True).train()
    set_mode(model, "scores")
    set_keep(model, 0.1)
    init_scores(model)
    size = _size(name)
    x = torch.rand(BATCH, 3, size, size)
    y = torch.arange(BATCH) % NUM_CLASSES
    nn.functional.cross_entropy(model(x), y).backward()
    for layer_name, layer in scored_layers(model):
        assert layer.scores.grad is not None, layer_name
        assert layer.scores.grad.abs().sum() > 0, layer_name


@pytest.mark.parametrize(
    ("name", "num_classes", "published"),
    [
        ("resnet18", 10, 11.17e6),
        ("vgg16_bn", 10, 14.7e6),
        ("wrn28_4", 10, 5.85e6),
        ("resnet50", 1000, 25.56e6),
    ],
)
def test_parameter_count_matches_published(name: str, num_classes: int, published: float) -> None:
    size = max(MODELS.get(name).min_image_size, 32)
    net = MODELS.get(name).build(num_classes=num_classes, in_channels=3, image_size=size, layers=PLAIN)
    count = sum(p.numel() for p in net.parameters())
    assert abs(count - published) / published < 0.02, count


def test_vit_rejects_image_size_not_divisible_by_patch() -> None:
    with pytest.raises(ValueError, match="divisible"):
        MODELS.get("vit").build(num_classes=10, in_channels=3, image_size=18, layers=PLAIN)


def test_vit_prunes_only_linears_and_patch_embedding() -> None:
    model = MODELS.get("vit").build(
        num_classes=10, in_channels=3, image_size=8, layers=LayerFactory(masked=True, prune_head=False)
    )
    names = [n for n, _ in scored_layers(model)]
    assert "head" not in names
    # patch embedding + 8 blocks x (qkv, proj, fc1, fc2)
    assert len(names) == 1 + 8 * 4


def test_cnn_has_no_batch_norm() -> None:
    model = _build("cnn", masked=True)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
