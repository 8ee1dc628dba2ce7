"""Models the project never saw: ``torchvision:NAME``, ``timm:NAME`` and ``package.module:callable``.

:func:`resolve` finds the builder without calling it (the config check uses it: an unknown
module, attribute or model name is one line naming ``model.name``); :func:`build_external`
calls it with what the data set decides (the class count, the input channels and, for an
import path, the image size, each only where the callable's signature names it) plus
``model.kwargs``, and checks that the result is a module that maps one input of the data's
shape to one logit per class. :func:`load_checkpoint` loads a plain state dict into it.

An import path is code execution: the service refuses them unless its operator allows the
module (``service/model_policy.py``); the library trusts whoever runs it.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from s2ap.errors import ConfigError
from s2ap.imports import import_callable, named_arguments
from s2ap.imports import one_line as _one_line

log = logging.getLogger(__name__)

SOURCES = ("torchvision", "timm")
DATA_ARGUMENTS = ("num_classes", "in_channels", "image_size")


def is_external(name: str) -> bool:
    """Whether ``name`` names a model outside the registry (it has a ``source:`` part)."""
    return ":" in name


@dataclass(frozen=True)
class ExternalModel:
    """A resolved external name: how to call its builder with the data set's facts."""

    name: str
    builder: Callable[..., Any]
    # the builder's keyword for each data fact it takes (num_classes -> "num_classes", ...)
    arguments: Mapping[str, str]
    rgb_only: bool = False  # torchvision classifiers take three input channels


def _close(name: str, names: list[str]) -> str:
    near = difflib.get_close_matches(name, names, n=4)
    return f"; did you mean {', '.join(near)}?" if near else ""


def resolve(name: str) -> ExternalModel:
    """The builder behind an external ``model.name`` (ConfigError naming it otherwise)."""
    source, _, target = name.partition(":")
    if not target:
        raise ConfigError("model.name", f"{name!r} names no model after the colon")
    if source == "torchvision":
        return _torchvision(name, target)
    if source == "timm":
        return _timm(name, target)
    return _import_path(name, source, target)


def _torchvision(name: str, target: str) -> ExternalModel:
    import torchvision.models as tvm

    known = tvm.list_models(module=tvm)
    if target not in known:
        raise ConfigError(
            "model.name", f"torchvision has no classification model {target!r}{_close(target, known)}"
        )
    return ExternalModel(
        name, lambda **kw: tvm.get_model(target, **kw), {"num_classes": "num_classes"}, rgb_only=True
    )


def _timm(name: str, target: str) -> ExternalModel:
    try:
        import timm
    except ImportError:
        raise ConfigError(
            "model.name", f'{name!r} needs timm, an optional extra: pip install -e ".[timm]"'
        ) from None
    if not timm.is_model(target):
        raise ConfigError("model.name", f"timm has no model {target!r}{_close(target, timm.list_models())}")
    return ExternalModel(
        name,
        lambda **kw: timm.create_model(target, pretrained=False, **kw),
        {"num_classes": "num_classes", "in_channels": "in_chans"},
    )


def _import_path(name: str, module_name: str, attribute: str) -> ExternalModel:
    what = "a registered model, torchvision:NAME, timm:NAME or package.module:callable"
    builder = import_callable(name, "model.name", what)
    return ExternalModel(name, builder, {arg: arg for arg in named_arguments(builder, DATA_ARGUMENTS)})


def build_external(
    name: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    kwargs: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Call the builder of ``name`` and check what comes back on one input of the data's shape."""
    model = resolve(name)
    if model.rgb_only and in_channels != 3:
        raise ConfigError(
            "model.name",
            f"{name} takes 3 input channels but the data has {in_channels}; set data.gray_to_rgb: true "
            "to repeat a gray channel into three",
        )
    facts = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    args = {keyword: facts[fact] for fact, keyword in model.arguments.items()}
    for key in kwargs or {}:
        if key in args:
            raise ConfigError(f"model.kwargs.{key}", "is set from the data set; remove it")
    args.update(kwargs or {})
    shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
    try:
        net = model.builder(**args)
    except Exception as exc:
        raise ConfigError("model.name", f"{name}({shown}) raised {_one_line(exc)}") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(
            "model.name", f"{name}({shown}) returned a {type(net).__name__}, not a torch nn.Module"
        )
    check_output(net, name, num_classes, (1, in_channels, image_size, image_size))
    log.info("built %s(%s): %s", name, shown, type(net).__name__)
    return net


def check_output(net: nn.Module, name: str, num_classes: int, shape: tuple[int, ...]) -> None:
    """One forward in eval mode (BatchNorm statistics untouched): one logit per class."""
    training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros(shape))
    except Exception as exc:
        raise ConfigError(
            "model.name", f"{name} fails on an input of shape {tuple(shape)}: {_one_line(exc)}"
        ) from None
    finally:
        net.train(training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (shape[0], num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(
            "model.name",
            f"{name} must return logits of shape {(shape[0], num_classes)} for the data's "
            f"{num_classes} classes, got {got}",
        )


# --------------------------------------------------------------------------- checkpoints


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain state dict from ``path``: bare, or under ``state_dict`` / ``model``, with the
    ``module.`` prefix of a DataParallel/DDP save removed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("model.checkpoint", f"file not found: {path}")
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(
            "model.checkpoint", f"{path} is not a PyTorch state dict file: {_one_line(exc)}"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if (
        not isinstance(state, Mapping)
        or not state
        or not all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        keys = list(state)[:5] if isinstance(state, Mapping) else type(state).__name__
        raise ConfigError(
            "model.checkpoint",
            f"{path} holds no state dict of tensors (bare, or under 'state_dict' or 'model'); found {keys}",
        )
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return dict(state)


def load_checkpoint(net: nn.Module, path: str | Path, name: str) -> None:
    """Load a plain state dict into ``net`` (before any layer is scored), strictly; what does
    not fit is named in one line."""
    state = read_state_dict(path)
    own = net.state_dict()
    shapes = [
        f"{k} (checkpoint {list(v.shape)}, model {list(own[k].shape)})"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if shapes or missing or unexpected:
        parts = [
            f"{label} {', '.join(items[:3])}{', ...' if len(items) > 3 else ''}"
            for label, items in (
                ("shape mismatch:", shapes),
                ("missing:", missing),
                ("unexpected:", unexpected),
            )
            if items
        ]
        raise ConfigError("model.checkpoint", f"{path} does not fit {name}: {'; '.join(parts)}")
    net.load_state_dict(state, strict=False)
    log.info("loaded %d tensors from %s into %s", len(state), path, name)
