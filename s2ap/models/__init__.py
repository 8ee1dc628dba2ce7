"""Architectures by name, and any other network by module swap.

A registered architecture takes a :class:`LayerFactory`; :func:`build_model` builds it plain
and scores it by module swap (:mod:`s2ap.models.swap`), exactly as it does a ``torchvision:``,
``timm:`` or ``package.module:callable`` model (:mod:`s2ap.models.external`). Inputs are in
[0, 1]; the normalisation sits in front of the network, outside it, so attacks work in pixel
space and an external network stays the user's own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from s2ap.config import ModelConfig
from s2ap.errors import ConfigError
from s2ap.layers import PLAIN, LayerFactory, dense_state_dict, scored_layers
from s2ap.models.external import build_external, check_output, is_external, load_checkpoint
from s2ap.models.swap import score_modules
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

    def __init__(
        self, net: nn.Module, mean: Sequence[float], std: Sequence[float], own_export: bool = False
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net
        # The export is ``net``'s own state dict (an external model) rather than the whole
        # classifier's (a registered one).
        self.own_export = own_export

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
    dense_layers: Sequence[str] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    checkpoint: str | Path | None = None,
    net: nn.Module | None = None,
) -> Classifier:
    """The network ``name`` (registered, ``torchvision:``, ``timm:`` or an import path) inside
    the input normalisation, its conv/linear layers scored by module swap when ``masked``.

    A registered model is built with the plain layer factory, an external one by its own
    builder; ``checkpoint`` (a plain state dict) is loaded into that plain network, then the
    swap scores every conv/linear layer but those ``dense_layers`` matches (None: decided by
    ``prune_layers``: the registered model's own choice, or the final classifier dense for an
    external one).
    """
    if len(mean) not in (1, in_channels) or len(std) != len(mean):
        raise ConfigError(
            "model.mean",
            f"mean and std need one entry per input channel ({in_channels}), got {len(mean)} and {len(std)}",
        )
    external = net is not None or is_external(name)
    if net is not None:  # the caller's own network object (s2ap.prune), scored in place
        check_output(net, name, num_classes, (1, in_channels, image_size, image_size))
        head_dense = True
    elif external:
        net = build_external(name, num_classes, in_channels, image_size, kwargs)
        head_dense = True
    else:
        spec = MODELS.get(name)
        net = spec.build(
            num_classes=num_classes, in_channels=in_channels, image_size=image_size, layers=PLAIN
        )
        head_dense = not spec.prune_head
    if checkpoint is not None:
        load_checkpoint(net, checkpoint, name)
    if masked:
        keep_head_dense = {"default": head_dense, "all": False, "all_but_last": True}[prune_layers]
        score_modules(net, granularity, dense_layers, keep_head_dense)  # type: ignore[arg-type]
    return Classifier(net, mean, std, own_export=external)


def from_config(
    cfg: ModelConfig,
    num_classes: int,
    in_channels: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    granularity: str = "weight",
    masked: bool = True,
    net: nn.Module | None = None,
) -> Classifier:
    """:func:`build_model` as a run's ``model`` section asks (``mean``/``std``: the data's,
    unless the section sets its own; ``net``: a network object to score instead of building)."""
    return build_model(
        cfg.name,
        num_classes,
        in_channels,
        image_size,
        mean=cfg.mean if cfg.mean is not None else mean,
        std=cfg.std if cfg.std is not None else std,
        masked=masked,
        prune_layers=cfg.prune_layers,
        granularity=granularity,
        dense_layers=cfg.dense_layers,
        kwargs=cfg.kwargs,
        checkpoint=cfg.checkpoint,
        net=net,
    )


def export_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The pruned network as a plain state dict (pruned weights zeroed).

    For an external model it is exactly the user's network's own ``state_dict()``: it loads
    with ``strict=True`` into the unmodified class, which then needs the same normalisation
    in front. A registered model keeps the whole classifier (``build_model(...,
    masked=False)`` loads it).
    """
    root = getattr(model, "module", model)
    state = dense_state_dict(root)
    if not getattr(root, "own_export", False):
        return state
    prefix = "net."
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def _export_prefix(model: nn.Module) -> str:
    return "net." if getattr(getattr(model, "module", model), "own_export", False) else ""


def export_masks(model: nn.Module) -> dict[str, Tensor]:
    """The masks keyed like :func:`export_state_dict`'s weights (``<layer>.weight``), so that
    ``state[key] * masks[key]`` lines up; broadcast to the weight's shape."""
    prefix = _export_prefix(model)
    return {
        f"{name.removeprefix(prefix)}.weight": layer.full_mask().detach().cpu()
        for name, layer in scored_layers(getattr(model, "module", model))
    }


def mask_layers(model: nn.Module, saved: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A saved mask file keyed by ``model``'s layer names: files keyed like the export (this
    version's ``masks.pt``) and older files keyed by layer name both read."""
    if not saved or not all(k.endswith(".weight") for k in saved):
        return dict(saved)  # keyed by layer name (masks.pt before it matched pruned_dense.pt)
    prefix = _export_prefix(model)
    return {prefix + k.removesuffix(".weight"): v for k, v in saved.items()}


# Importing the architecture modules fills the registry.
from s2ap.models import cnn, resnet, vgg, vit, wrn  # noqa: E402,F401
