"""Architectures by name. Each takes a :class:`LayerFactory`, so the same definition builds the
score-masked model for pruning and the plain model that exported checkpoints load into.
Inputs are in [0, 1]; normalisation lives inside the model so attacks work in pixel space."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from s2ap.layers import LayerFactory
from s2ap.registry import Registry


class ModelBuilder(Protocol):
    def __call__(
        self, num_classes: int, in_channels: int, image_size: int, layers: LayerFactory
    ) -> nn.Module: ...


@dataclass(frozen=True)
class ModelSpec:
    build: ModelBuilder
    prune_head: bool = True  # whether the classifier head is pruned by default
    min_image_size: int = 8


MODELS: Registry[ModelSpec] = Registry("model")


def register(name: str, prune_head: bool = True, min_image_size: int = 8):  # type: ignore[no-untyped-def]
    def decorator(fn: ModelBuilder) -> ModelBuilder:
        MODELS.register(name)(ModelSpec(fn, prune_head, min_image_size))
        return fn

    return decorator


class Normalize(nn.Module):
    """Per-channel standardisation as the model's first layer."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """``Normalize`` followed by the network; ``net`` holds the architecture."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalize(x))


def build_model(
    name: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    masked: bool = True,
    prune_layers: str = "default",
    granularity: str = "weight",
) -> Classifier:
    spec = MODELS.get(name)
    prune_head = {"default": spec.prune_head, "all": True, "all_but_last": False}[prune_layers]
    factory = LayerFactory(masked=masked, prune_head=prune_head, granularity=granularity)  # type: ignore[arg-type]
    net = spec.build(num_classes=num_classes, in_channels=in_channels, image_size=image_size, layers=factory)
    return Classifier(net, mean, std)


# Importing the architecture modules fills the registry.
from s2ap.models import cnn, resnet, vgg, vit, wrn  # noqa: E402,F401
