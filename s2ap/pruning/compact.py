"""The compact export of a channel-pruned network: the smaller plain network that computes
exactly what the channel-masked one does, with its size and FLOPs next to the dense one's.

Which channels can disappear is :class:`~s2ap.pruning.channel.ChannelPlan`'s analysis of
the traced graph; this module applies it.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from s2ap.layers import ScoredLayer
from s2ap.pruning.channel import ChannelPlan, channel_vector

log = logging.getLogger(__name__)


@dataclass
class CompactReport:
    """Size of the compact network next to the dense one (FLOPs = MACs per sample)."""

    params: int
    flops: float
    dense_params: int
    dense_flops: float
    kept_channels: dict[str, int]
    shrunk_layers: list[str]
    zeroed_layers: list[str]  # pruned channels kept as zeros (not removable)

    @property
    def flops_reduction(self) -> float:
        return self.dense_flops / self.flops if self.flops else math.inf

    def as_dict(self) -> dict[str, Any]:
        return {
            "compact_params": self.params,
            "compact_flops": self.flops,
            "dense_params": self.dense_params,
            "dense_flops": self.dense_flops,
            "flops_reduction": self.flops_reduction,
        }


def compact(model: nn.Module, plan: ChannelPlan) -> tuple[nn.Module, CompactReport]:
    """Build the smaller plain network that computes what the channel-masked ``model`` does.

    Removable channels disappear (with the matching inputs of their consumers); pruned
    channels that are not removable stay as zero weights with a zeroed BatchNorm. Every
    conv/linear becomes a plain ``nn`` layer, so the result has no scores, masks or hooks.
    """
    root = getattr(model, "module", model)
    kept: dict[str, Tensor] = {}
    for name, info in plan.nodes.items():
        if info.scored:
            kept[name] = torch.nonzero(channel_vector(root.get_submodule(name))).flatten()  # type: ignore[arg-type]
    followers = {info.follower for info in plan.nodes.values() if info.follower}
    replaced = set(plan.nodes) | followers
    memo: dict[int, Any] = {id(root.get_submodule(n)): nn.Identity() for n in replaced}
    out = copy.deepcopy(root, memo)
    shrunk, zeroed = [], []
    with torch.no_grad():
        for name, info in plan.nodes.items():
            module = root.get_submodule(name)
            out_idx = kept[name] if (info.scored and info.removable) else None
            in_idx = None
            if info.producer is not None:
                producer, per_channel = info.producer
                base = kept[producer]
                in_idx = (
                    base[:, None] * per_channel + torch.arange(per_channel, device=base.device)
                ).flatten()
            dead = None
            if info.scored and not info.removable:
                dead = channel_vector(module) == 0  # type: ignore[arg-type]
                if bool(dead.any()):
                    zeroed.append(name)
            if out_idx is not None:
                shrunk.append(name)
            _replace(out, name, _shrink_layer(module, out_idx, in_idx, dead))
            if info.follower:
                bn = root.get_submodule(info.follower)
                _replace(out, info.follower, _shrink_norm(bn, out_idx, dead))  # type: ignore[arg-type]
    dense_params = sum(p.numel() for n, p in root.named_parameters() if not n.endswith(".scores"))
    counts = {n: int(v.numel()) for n, v in kept.items()}
    report = CompactReport(
        params=sum(p.numel() for p in out.parameters()),
        flops=count_flops(out, plan.input_shape),
        dense_params=dense_params,
        dense_flops=plan.dense_flops,
        kept_channels=counts,
        shrunk_layers=shrunk,
        zeroed_layers=zeroed,
    )
    log.info(
        "compact network: %d parameters (dense %d), %.4g FLOPs (dense %.4g, %.2fx fewer)",
        report.params,
        report.dense_params,
        report.flops,
        report.dense_flops,
        report.flops_reduction,
    )
    return out, report


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _shrink_layer(
    module: nn.Module, out_idx: Tensor | None, in_idx: Tensor | None, dead: Tensor | None
) -> nn.Module:
    weight = module.effective_weight().detach() if isinstance(module, ScoredLayer) else module.weight.detach()
    bias = module.bias.detach().clone() if module.bias is not None else None  # type: ignore[union-attr]
    if dead is not None and bias is not None:
        bias[dead] = 0
    if out_idx is not None:
        weight = weight[out_idx]
        bias = bias[out_idx] if bias is not None else None
    if in_idx is not None:
        weight = weight[:, in_idx]
    if isinstance(module, nn.Conv2d):
        new: nn.Module = nn.Conv2d(
            weight.shape[1] * module.groups,
            weight.shape[0],
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            groups=module.groups,
            bias=bias is not None,
            padding_mode=module.padding_mode,
        )
    else:
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    new = new.to(device=weight.device, dtype=weight.dtype)
    new.weight.copy_(weight)
    if bias is not None:
        new.bias.copy_(bias)  # type: ignore[union-attr]
    new.train(module.training)
    return new


def _shrink_norm(
    bn: nn.modules.batchnorm._BatchNorm, out_idx: Tensor | None, dead: Tensor | None
) -> nn.Module:
    """A fresh BatchNorm (no gate hook) over the kept channels, or with the pruned ones
    zeroed (weight = bias = 0 outputs exactly zero) when they cannot be removed."""
    device = bn.running_mean.device if bn.running_mean is not None else None
    keep = out_idx if out_idx is not None else torch.arange(bn.num_features, device=device)
    new = type(bn)(
        int(keep.numel()),
        eps=bn.eps,
        momentum=bn.momentum,
        affine=bn.affine,
        track_running_stats=bn.track_running_stats,
    )
    ref = bn.weight if bn.weight is not None else bn.running_mean
    if ref is not None:
        new = new.to(device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        for attr in ("weight", "bias", "running_mean", "running_var"):
            src, dst = getattr(bn, attr), getattr(new, attr)
            if src is not None and dst is not None:
                dst.copy_(src.detach()[keep])
        if bn.num_batches_tracked is not None and new.num_batches_tracked is not None:
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
        if out_idx is None and dead is not None and new.affine:
            new.weight[dead] = 0
            new.bias[dead] = 0
    new.train(bn.training)
    return new


def count_flops(module: nn.Module, input_shape: tuple[int, ...]) -> float:
    """MACs per sample of every conv and linear layer, measured with forward hooks."""
    total = [0.0]

    def hook(m: nn.Module, args: Any, output: Tensor) -> None:
        per_sample = output.numel() / output.shape[0]
        if isinstance(m, nn.Conv2d):
            total[0] += per_sample * (m.in_channels / m.groups) * math.prod(m.kernel_size)
        else:
            total[0] += per_sample * m.in_features  # type: ignore[operator]

    handles = [
        m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    param = next(module.parameters())
    training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(torch.zeros(input_shape, device=param.device, dtype=param.dtype))
    finally:
        module.train(training)
        for h in handles:
            h.remove()
    return total[0]
