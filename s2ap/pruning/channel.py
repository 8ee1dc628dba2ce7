"""Channel (structured) pruning on any registered architecture: what can be removed, FLOPs
targets, and a compact export that really builds the smaller network.

With ``granularity="channel"`` each scored layer has one score per output channel and its
mask drops whole output channels (S2AP paper, Sect. B.2 / Table 9). Which channels can
*physically* disappear from the network depends on the graph, not on a list of layer
names, so the model is traced once with ``torch.fx`` (scored layers as leaves):

* a pruned channel must be exactly zero wherever it is used. A layer's bias, or a
  BatchNorm right after it, would turn a zeroed channel into a constant, so a *gate*
  multiplies the output of the layer (or of that BatchNorm) by the channel mask;
* from there the channel travels through zero-preserving ops (ReLU, GELU, pooling,
  dropout, flatten). If every path ends in a conv/linear layer's input, the channel is
  *removable*: the compact network drops the output channel and the matching inputs of
  those consumers (``flatten`` maps one channel to ``H * W`` features);
* any other use (a residual ``add``, ``cat``, reshapes into attention heads, LayerNorm)
  makes the channel *not removable*: the compact network keeps it with zero weights and a
  zeroed BatchNorm, which computes exactly the same function. For residual networks this
  means only the convolutions inside a block (and their consumers' inputs) shrink; the
  channels on the skip path stay, because input-channel removal is not well defined
  across the addition (both branches would have to agree on one channel set);
* a layer whose output reaches the network output without crossing another conv/linear
  layer (the classifier head) is *exempt*: removing its channels would remove classes.

FLOPs are multiply-accumulates of the conv and linear layers (the prunable compute;
norms, activations and attention products are not counted), per sample.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.fx.passes.shape_prop import ShapeProp

from s2ap.config import ConfigError
from s2ap.layers import MaskedConv2d, MaskedLinear, ScoredLayer, keep_count, scored_layers

log = logging.getLogger(__name__)

_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d)
# Elementwise modules with f(0) = 0: an all-zero channel stays an all-zero channel.
_ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.LeakyReLU,
    nn.Hardswish,
    nn.Mish,
    nn.Dropout,
    nn.Identity,
)
_ELEMENTWISE_FUNCTIONS = {
    torch.relu,
    nn.functional.relu,
    nn.functional.gelu,
    nn.functional.silu,
    torch.tanh,
    nn.functional.dropout,
}
# Per-channel spatial ops on (N, C, H, W) tensors that also keep zero channels zero.
_ZERO_PRESERVING_MODULES = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Dropout2d,
)
_ZERO_PRESERVING_FUNCTIONS = {
    nn.functional.max_pool2d,
    nn.functional.avg_pool2d,
    nn.functional.adaptive_avg_pool2d,
}
_ZERO_PRESERVING_METHODS = {"relu", "tanh", "contiguous"}


@dataclass
class ChannelNode:
    """One conv/linear module of the traced network and what its output channels feed."""

    name: str
    module: nn.Module
    scored: bool
    in_channels: int
    out_channels: int
    groups: int
    kernel: int  # product of the kernel size (1 for linear)
    positions: int  # output positions per sample (conv: H*W, linear: tokens)
    follower: str | None = None  # BatchNorm applied right after it (gated with it)
    consumers: list[tuple[str, int]] = field(default_factory=list)  # (name, features per channel)
    removable: bool = False  # the compact network can drop its output channels
    exempt: bool = False  # feeds the network output: its channels are never pruned
    producer: tuple[str, int] | None = None  # removable layer feeding its input

    def flops(self, out_kept: Any = None, in_kept: Any = None) -> Any:
        """MACs per sample with ``out_kept`` outputs and ``in_kept`` inputs (None = all).

        Works on numbers and on tensors, so HARP can differentiate a FLOPs budget.
        """
        out = self.out_channels if out_kept is None else out_kept
        inp = self.in_channels if in_kept is None else in_kept
        return self.positions * self.kernel * (inp / self.groups) * out


class ChannelPlan:
    """The channel structure of a model, from one fx trace and one shape propagation."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        root = getattr(model, "module", model)
        self.root = root
        self.input_shape = tuple(input_shape)
        try:
            graph = _LeafTracer().trace(root)
        except Exception as exc:  # a user's model with data-dependent control flow, say
            reason = " ".join(str(exc).split())[:300]
            raise ConfigError(
                "prune.granularity",
                f"channel pruning traces the model with torch.fx, which fails on it ({type(exc).__name__}: "
                f"{reason}); use prune.granularity: weight",
            ) from None
        gm = fx.GraphModule(root, graph)
        _propagate_shapes(root, gm, self.input_shape)
        calls: dict[str, int] = {}
        for node in graph.nodes:
            if node.op == "call_module":
                calls[node.target] = calls.get(node.target, 0) + 1
        self.calls = calls
        self.nodes: dict[str, ChannelNode] = {}
        fx_nodes: dict[str, fx.Node] = {}
        for node in graph.nodes:
            if node.op != "call_module":
                continue
            module = root.get_submodule(node.target)
            if isinstance(module, nn.Conv2d | nn.Linear) and node.target not in self.nodes:
                self.nodes[node.target] = _describe(node, module)
                fx_nodes[node.target] = node
        for name, info in self.nodes.items():
            self._follow(info, fx_nodes[name], root)
        for name, info in self.nodes.items():
            if info.removable:
                for consumer, per_channel in info.consumers:
                    self.nodes[consumer].producer = (name, per_channel)
        self.dense_flops = float(sum(n.flops() for n in self.nodes.values()))

    # ------------------------------------------------------------------ analysis

    def _follow(self, info: ChannelNode, node: fx.Node, root: nn.Module) -> None:
        users = list(node.users)
        start = node
        if len(users) == 1 and users[0].op == "call_module":
            follower = root.get_submodule(users[0].target)
            if (
                isinstance(follower, _BATCHNORM)
                and follower.num_features == info.out_channels
                and self.calls[users[0].target] == 1
            ):
                info.follower = users[0].target
                start = users[0]
        info.exempt = _reaches_output(node, root)
        # Conv outputs carry channels in dim 1 (pooling and flatten act per channel there);
        # linear outputs carry them last, where only elementwise ops keep channels apart.
        channel_last = isinstance(info.module, nn.Linear)
        stack: list[tuple[fx.Node, int]] = [(start, 1)]
        removable = True
        while stack:
            current, per_channel = stack.pop()
            for user in current.users:
                kind = _classify(user, current, root, channel_last)
                if kind == "pass":
                    stack.append((user, per_channel))
                elif kind == "flatten":
                    shape = current.meta["tensor_meta"].shape
                    if channel_last and len(shape) != 2:
                        removable = False  # (N, T, C) flattened interleaves the channels
                        continue
                    stack.append((user, per_channel * math.prod(shape[2:])))
                elif kind == "consumer" and _fits(
                    root.get_submodule(user.target), info.out_channels * per_channel, per_channel
                ):
                    info.consumers.append((user.target, per_channel))
                else:
                    removable = False
        info.removable = removable and bool(info.consumers) and info.scored and not info.exempt

    # ------------------------------------------------------------------ checks and targets

    def check_shrinkable(self, model_name: str = "the model") -> None:
        """One clear error for a pruned layer that channel pruning cannot handle."""
        scored = dict(scored_layers(self.root))
        for name, layer in scored.items():
            info = self.nodes.get(name)
            kind = type(layer).__name__
            if not isinstance(layer, MaskedConv2d | MaskedLinear) or info is None:
                raise ConfigError(
                    "prune.granularity",
                    f"channel pruning cannot shrink layer {name!r} of {model_name} ({kind}); "
                    "only conv and linear layers are supported, use prune.granularity: weight",
                )
            if info.groups != 1:
                raise ConfigError(
                    "prune.granularity",
                    f"channel pruning cannot shrink layer {name!r} of {model_name} ({kind} with "
                    f"groups={info.groups}: its output channels are tied to its inputs); "
                    "use prune.granularity: weight",
                )
            if self.calls.get(name, 0) != 1:
                raise ConfigError(
                    "prune.granularity",
                    f"channel pruning cannot shrink layer {name!r} of {model_name}: it is called "
                    f"{self.calls.get(name, 0)} times in one forward pass",
                )

    def prunable(self, flops_target: bool = False) -> list[str]:
        """Scored layers whose channels get pruned: not the head; for a FLOPs target only
        those whose removal actually saves FLOPs in the compact network."""
        return [
            name
            for name, n in self.nodes.items()
            if n.scored and not n.exempt and (n.removable or not flops_target)
        ]

    def flops(self, kept: Mapping[str, Any]) -> Any:
        """Compact-network FLOPs when layer ``name`` keeps ``kept[name]`` output channels.

        Channels of a layer that is not removable are kept (zeroed) in the compact
        network, so they cost FLOPs whatever ``kept`` says.
        """
        total: Any = 0.0
        for name, n in self.nodes.items():
            out = kept[name] if (n.removable and name in kept) else None
            inp = None
            if n.producer is not None and n.producer[0] in kept:
                inp = kept[n.producer[0]] * n.producer[1]
            total = total + n.flops(out, inp)
        return total

    def uniform_counts(self, keep: float, names: list[str]) -> dict[str, int]:
        return {name: keep_count(keep, self.nodes[name].out_channels) for name in names}

    def keep_for_flops(self, factor: float, model_name: str = "the model") -> float:
        """The largest uniform channel keep-rate whose compact network has at most
        ``dense / factor`` FLOPs (bisection: the rounded FLOPs are monotone in the rate)."""
        names = self.prunable(flops_target=True)
        target = self.dense_flops / factor
        least = float(self.flops(self.uniform_counts(0.0, names)))
        if least > target:
            best = self.dense_flops / least
            raise ConfigError(
                "prune.flops_reduction",
                f"{model_name} can reach at most {best:.2f}x fewer FLOPs by channel pruning "
                f"(channels on skip connections, the head and unprunable layers stay), got {factor:g}",
            )
        lo, hi = 0.0, 1.0
        for _ in range(50):
            mid = (lo + hi) / 2
            if self.flops(self.uniform_counts(mid, names)) <= target:
                lo = mid
            else:
                hi = mid
        return lo

    def describe(self) -> str:
        removable = [n for n, i in self.nodes.items() if i.removable]
        kept = [n for n, i in self.nodes.items() if i.scored and not i.removable and not i.exempt]
        exempt = [n for n, i in self.nodes.items() if i.exempt and i.scored]
        return (
            f"{len(removable)} layers shrink in the compact network; {len(kept)} keep their pruned "
            f"channels as zeros (skip connections or reshapes: {', '.join(kept[:4])}"
            f"{', ...' if len(kept) > 4 else ''}); never pruned (network output): {', '.join(exempt) or 'none'}"
        )


# ---------------------------------------------------------------------------- tracing helpers


class _LeafTracer(fx.Tracer):
    """Scored layers are leaves: their mask logic is Python control flow, not graph ops."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, ScoredLayer) or super().is_leaf_module(m, module_qualified_name)


def _propagate_shapes(root: nn.Module, gm: fx.GraphModule, input_shape: tuple[int, ...]) -> None:
    """One forward in eval mode (BatchNorm statistics untouched) recording every shape."""
    param = next(root.parameters())
    training = root.training
    root.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.zeros(input_shape, device=param.device, dtype=param.dtype))
    finally:
        root.train(training)


def _describe(node: fx.Node, module: nn.Module) -> ChannelNode:
    shape = node.meta["tensor_meta"].shape
    if isinstance(module, nn.Conv2d):
        return ChannelNode(
            node.target,
            module,
            isinstance(module, ScoredLayer),
            module.in_channels,  # type: ignore[arg-type]
            module.out_channels,
            module.groups,
            math.prod(module.kernel_size),
            math.prod(shape[2:]),
        )
    assert isinstance(module, nn.Linear)
    return ChannelNode(
        node.target,
        module,
        isinstance(module, ScoredLayer),
        module.in_features,  # type: ignore[arg-type]
        module.out_features,
        1,
        1,
        math.prod(shape[1:-1]),
    )


def _classify(user: fx.Node, source: fx.Node, root: nn.Module, channel_last: bool) -> str:
    """How ``user`` treats the channel dimension of ``source``: ``pass`` (zero channels stay
    zero and separate), ``flatten``, ``consumer`` (a conv/linear input) or ``other``."""
    first = user.args[0] if user.args else None
    if user.op == "call_module":
        module = root.get_submodule(user.target)
        if isinstance(module, nn.Conv2d | nn.Linear):
            return "consumer" if first is source else "other"
        if isinstance(module, nn.Flatten):
            return "flatten" if (module.start_dim == 1 and module.end_dim == -1) else "other"
        if isinstance(module, _ELEMENTWISE_MODULES):
            return "pass"
        if isinstance(module, _ZERO_PRESERVING_MODULES) and not channel_last:
            return "pass"
        return "other"
    if user.op == "call_function":
        if user.target in _ELEMENTWISE_FUNCTIONS and first is source:
            return "pass"
        if user.target in _ZERO_PRESERVING_FUNCTIONS and first is source and not channel_last:
            return "pass"
        if user.target is torch.flatten and first is source and _flatten_from_one(user):
            return "flatten"
        return "other"
    if user.op == "call_method":
        if user.target in _ZERO_PRESERVING_METHODS:
            return "pass"
        if user.target == "flatten" and _flatten_from_one(user):
            return "flatten"
    return "other"


def _flatten_from_one(node: fx.Node) -> bool:
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
    return start == 1 and end == -1


def _fits(consumer: nn.Module, features: int, per_channel: int) -> bool:
    if isinstance(consumer, nn.Conv2d):
        return per_channel == 1 and consumer.groups == 1 and consumer.in_channels == features
    return isinstance(consumer, nn.Linear) and consumer.in_features == features


def _reaches_output(node: fx.Node, root: nn.Module) -> bool:
    """Whether ``node``'s value reaches the graph output without another conv/linear."""
    seen: set[fx.Node] = set()
    stack = list(node.users)
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        if current.op == "output":
            return True
        if current.op == "call_module" and isinstance(
            root.get_submodule(current.target), nn.Conv2d | nn.Linear
        ):
            continue
        stack.extend(current.users)
    return False


# ---------------------------------------------------------------------------- gates


def install_gates(plan: ChannelPlan) -> None:
    """Make every pruned channel exactly zero after its layer (and its BatchNorm).

    Idempotent. The gate uses the mask detached: the score gradient keeps coming from the
    weight mask alone (the straight-through estimator of Sect. 2), the gate only removes the
    constant that a bias or a BatchNorm shift would leave in a pruned channel.
    """
    root = plan.root
    for name, info in plan.nodes.items():
        if not info.scored or info.exempt:
            continue
        layer = root.get_submodule(name)
        assert isinstance(layer, ScoredLayer)
        layer.channel_gate = True
        layer.gate_followers = (info.follower,) if info.follower else ()
        target = root.get_submodule(info.follower) if info.follower else layer
        if any(isinstance(h, ChannelGate) for h in target._forward_hooks.values()):
            continue
        target.register_forward_hook(ChannelGate(layer, channel_last=isinstance(target, nn.Linear)))


class ChannelGate:
    """Forward hook multiplying a module's output by ``layer``'s channel mask.

    A class rather than a closure so that a deep copy of the model gates with the copied
    layer's mask. ``scoring_hook``: :func:`s2ap.models.swap.unscore_modules` removes it.
    """

    scoring_hook = True

    def __init__(self, layer: ScoredLayer, channel_last: bool) -> None:
        self.layer = layer
        self.channel_last = channel_last

    def __call__(self, module: nn.Module, args: Any, output: Tensor) -> Tensor | None:
        if self.layer.mode == "dense":
            return None
        m = self.layer.current_mask().detach().flatten().to(output.dtype)
        shape = (m.numel(),) if self.channel_last else (1, m.numel()) + (1,) * (output.dim() - 2)
        return output * m.view(shape)


def channel_vector(layer: ScoredLayer) -> Tensor:
    """The layer's current per-output-channel 0/1 mask as a flat vector."""
    with torch.no_grad():
        return layer.current_mask().detach().flatten()
