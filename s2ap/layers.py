"""Score-masked conv and linear layers (HYDRA-style top-k with a straight-through gradient).

Forward uses ``w * M(|s|, k)`` where ``M`` keeps the top-k entries of ``|s|`` in the layer.
The backward pass treats ``dM/ds`` as the identity (Ramanujan et al., 2020), so the score
gradient is ``dL/d(w*M) * w * sign(s)``.

The top-k is the costly part and the mask only changes when the scores do, so it is cached
on the scores' version counter: a PGD-10 step runs eleven forwards over one top-k. The
straight-through form ``m + |s| - |s|.detach()`` is exactly ``m`` in the forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Literal

import torch
from torch import Tensor, nn

Mode = Literal["dense", "scores", "fixed"]
Granularity = Literal["weight", "channel"]


def keep_count(keep: float, n: int) -> int:
    """How many of ``n`` entries a keep-rate keeps: ``round(keep * n)``, at least one."""
    return max(1, min(n, int(round(keep * n))))


def topk_mask(scores: Tensor, keep: float) -> Tensor:
    """Binary mask keeping ``round(keep * n)`` (at least one) largest entries of ``scores``."""
    return topk_count_mask(scores, keep_count(keep, scores.numel()))


def topk_count_mask(scores: Tensor, k: int) -> Tensor:
    """Binary mask keeping the ``k`` largest entries of ``scores`` (no gradient)."""
    flat = scores.detach().flatten()
    mask = torch.zeros_like(flat)
    mask[torch.topk(flat, k, sorted=False).indices] = 1.0
    return mask.view_as(scores)


class ScoredLayer:
    """Mixin for a layer with a ``weight`` that can be pruned by importance scores.

    Modes: ``dense`` (plain layer), ``scores`` (mask from the top-k scores, straight-through
    gradient to the scores) and ``fixed`` (the ``mask`` buffer, used for finetuning).
    ``granularity="channel"`` keeps one score per output channel and removes whole channels.
    """

    weight: Tensor
    scores: nn.Parameter
    mask: Tensor

    def _init_scoring(self, granularity: Granularity = "weight") -> None:
        self.granularity: Granularity = granularity
        shape = self.weight.shape if granularity == "weight" else self._channel_shape()
        self.scores = nn.Parameter(torch.ones(shape, dtype=self.weight.dtype))
        self.register_buffer("mask", torch.ones(shape, dtype=self.weight.dtype))  # type: ignore[attr-defined]
        # The top-k mask a compiled forward reads (refresh_topk fills it once per point, outside
        # the graph); not part of the state dict.
        self.register_buffer("topk", torch.ones(shape, dtype=self.weight.dtype), persistent=False)  # type: ignore[attr-defined]
        self._synced: Tensor | None = None
        self.keep: float = 1.0
        self.mode: Mode = "dense"
        # A method may replace how the mask is computed (HARP's learned rates); it gets
        # the layer and returns a mask shaped like the scores, differentiable if needed.
        self.mask_fn: Callable[[ScoredLayer], Tensor] | None = None
        self._cache: tuple[tuple[int, int, float], Tensor] | None = None
        # Channel pruning (s2ap.pruning.channel) zeroes a pruned channel's whole output: it
        # sets ``channel_gate`` and names the modules whose per-channel parameters follow
        # this layer's outputs (its BatchNorm), so the dense export can zero them too.
        self.channel_gate: bool = False
        self.gate_followers: tuple[str, ...] = ()

    def _channel_shape(self) -> tuple[int, ...]:
        return (self.weight.shape[0],) + (1,) * (self.weight.dim() - 1)

    @property
    def fan_in(self) -> int:
        return math.prod(self.weight.shape[1:])

    def score_mask(self) -> Tensor:
        """Binary top-k mask of the current scores (no gradient), cached on their version.
        Under ``torch.compile`` the graph reads the ``topk`` buffer, which
        :func:`refresh_topk` fills eagerly whenever the scores moved (once per point, not per
        forward; the cache's key in the graph would break it and recompile it at every step)."""
        if torch.compiler.is_compiling():
            return self.topk
        key = (self.scores._version, self.scores.data_ptr(), self.keep)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, topk_mask(self.scores.abs(), self.keep))
        return self._cache[1]

    def refresh_topk(self) -> None:
        """Copy the current top-k mask into ``topk`` when the scores changed since the last copy."""
        if self.mode != "scores" or self.mask_fn is not None:
            return
        mask = self.score_mask()
        if self._synced is not mask:
            with torch.no_grad():
                self.topk.copy_(mask)
            self._synced = mask

    def current_mask(self) -> Tensor:
        """The mask used by the forward pass, shaped like the scores."""
        if self.mode == "fixed":
            return self.mask
        if self.mode == "dense":
            return torch.ones_like(self.mask)
        if self.mask_fn is not None:
            return self.mask_fn(self)
        magnitude = self.scores.abs()
        # Straight-through estimator: forward value is exactly the binary mask.
        return self.score_mask() + (magnitude - magnitude.detach())

    def effective_weight(self) -> Tensor:
        if self.mode == "dense":
            return self.weight
        return self.weight * self.current_mask()

    def set_mode(self, mode: Mode) -> None:
        self.mode = mode

    def freeze_mask(self) -> None:
        """Store the current score mask in the ``mask`` buffer and switch to ``fixed``."""
        with torch.no_grad():
            self.mask.copy_(self.current_mask().detach())
        self.mode = "fixed"

    def full_mask(self) -> Tensor:
        """The binary mask broadcast to the weight's shape."""
        with torch.no_grad():
            return self.current_mask().detach().expand_as(self.weight).clone()


class CountMask:
    """A mask keeping a fixed number of top-|score| entries (straight-through), for methods
    that decide per-layer counts themselves (channel pruning, HARP's learned rates).

    ``count=None`` keeps everything (a layer left whole, like the head). The top-k is cached
    on the scores' version like :meth:`ScoredLayer.score_mask`.
    """

    def __init__(self, count: int | None) -> None:
        self.count = count

    def __call__(self, layer: ScoredLayer) -> Tensor:
        magnitude = layer.scores.abs()
        if self.count is None:
            return torch.ones_like(magnitude) + (magnitude - magnitude.detach())
        return cached_topk(layer, self.count) + (magnitude - magnitude.detach())


def cached_topk(layer: ScoredLayer, count: int) -> Tensor:
    """Binary top-``count`` mask of ``|scores|``, recomputed only when the scores change
    (under ``torch.compile``: in the graph, see :meth:`ScoredLayer.score_mask`)."""
    if torch.compiler.is_compiling():
        return topk_count_mask(layer.scores.abs(), count)
    key = (layer.scores._version, layer.scores.data_ptr(), count)
    cache = getattr(layer, "_count_cache", None)
    if cache is None or cache[0] != key:
        cache = (key, topk_count_mask(layer.scores.abs(), count))
        layer._count_cache = cache  # type: ignore[attr-defined]
    return cache[1]


class MaskedConv2d(nn.Conv2d, ScoredLayer):
    def __init__(self, *args, granularity: Granularity = "weight", **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._init_scoring(granularity)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)


class MaskedLinear(nn.Linear, ScoredLayer):
    def __init__(self, *args, granularity: Granularity = "weight", **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._init_scoring(granularity)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.effective_weight(), self.bias)


class LayerFactory:
    """What architectures build their conv and linear layers with.

    ``prune_head`` decides whether the classifier head (``head=True``) gets scores too.
    A plain factory (``masked=False``) builds ordinary ``nn`` layers: the dense model that
    exported checkpoints load into.
    """

    def __init__(
        self, masked: bool = True, prune_head: bool = True, granularity: Granularity = "weight"
    ) -> None:
        self.masked = masked
        self.prune_head = prune_head
        self.granularity = granularity

    def conv(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = False,
        groups: int = 1,
    ) -> nn.Conv2d:
        cls = MaskedConv2d if self.masked else nn.Conv2d
        extra = {"granularity": self.granularity} if self.masked else {}
        return cls(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            bias=bias,
            groups=groups,
            **extra,
        )

    def linear(self, in_features: int, out_features: int, bias: bool = True, head: bool = False) -> nn.Linear:
        if self.masked and (self.prune_head or not head):
            return MaskedLinear(in_features, out_features, bias=bias, granularity=self.granularity)
        return nn.Linear(in_features, out_features, bias=bias)


PLAIN = LayerFactory(masked=False)


# --------------------------------------------------------------------------- model helpers


def scored_layers(model: nn.Module) -> list[tuple[str, ScoredLayer]]:
    """The model's prunable layers in definition order (DDP wrappers unwrapped)."""
    model = getattr(model, "module", model)
    return [(name, m) for name, m in model.named_modules() if isinstance(m, ScoredLayer)]


def refresh_topk(model: nn.Module) -> None:
    """Before a compiled forward at new scores: every layer's ``topk`` buffer up to date."""
    for _, layer in scored_layers(model):
        layer.refresh_topk()


def score_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [layer.scores for _, layer in scored_layers(model)]


def masked_weights(model: nn.Module) -> Iterator[tuple[ScoredLayer, nn.Parameter]]:
    for _, layer in scored_layers(model):
        yield layer, layer.weight  # type: ignore[misc]


def set_mode(model: nn.Module, mode: Mode) -> None:
    for _, layer in scored_layers(model):
        layer.set_mode(mode)


def set_keep(model: nn.Module, keep: float) -> None:
    for _, layer in scored_layers(model):
        layer.keep = keep


def init_scores(model: nn.Module, how: str = "scaled") -> None:
    """Initialise scores from the weights.

    ``scaled`` (HYDRA): ``s = sqrt(6 / fan_in) * w / max|w|`` per layer, so the first mask is
    layer-wise magnitude pruning. ``magnitude``: ``s = |w|``. ``kaiming``: random
    Kaiming-uniform (robust lottery tickets). Channel scores take the channel's L1 norm.
    """
    with torch.no_grad():
        for _, layer in scored_layers(model):
            w = layer.weight
            if layer.granularity == "channel":
                w = w.abs().flatten(1).sum(1).view(layer.scores.shape)
            if how == "scaled":
                layer.scores.copy_(math.sqrt(6.0 / layer.fan_in) * w / w.abs().max().clamp_min(1e-12))
            elif how == "magnitude":
                layer.scores.copy_(w.abs())
            elif how == "kaiming":
                nn.init.kaiming_uniform_(layer.scores, a=math.sqrt(5))
            else:
                raise ValueError(f"unknown score init {how!r}")


def freeze_masks(model: nn.Module) -> None:
    for _, layer in scored_layers(model):
        layer.freeze_mask()


def masks(model: nn.Module) -> dict[str, Tensor]:
    """Binary masks broadcast to weight shape, keyed by layer name."""
    return {name: layer.full_mask() for name, layer in scored_layers(model)}


def load_masks(model: nn.Module, saved: dict[str, Tensor]) -> None:
    layers = dict(scored_layers(model))
    missing = sorted(set(layers) - set(saved))
    if missing:
        raise ValueError(f"mask file has no entry for layers: {', '.join(missing)}")
    with torch.no_grad():
        for name, layer in layers.items():
            m = saved[name]
            if m.shape != layer.mask.shape:
                m = m.flatten(1).amax(1).view(layer.mask.shape) if layer.granularity == "channel" else m
            layer.mask.copy_(m)
            layer.mode = "fixed"


def density(model: nn.Module) -> tuple[float, dict[str, float]]:
    """Overall fraction of prunable weights kept, and the fraction per layer."""
    kept = total = 0
    per_layer = {}
    for name, m in masks(model).items():
        per_layer[name] = float(m.mean())
        kept += int(m.sum())
        total += m.numel()
    return (kept / total if total else 1.0), per_layer


def dense_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """A checkpoint of the pruned model that loads into the plain (unmasked) architecture."""
    model = getattr(model, "module", model)
    layers = dict(scored_layers(model))
    pruned = _gated_channels(layers)
    out = {}
    for key, value in model.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if owner in layers and leaf in ("scores", "mask"):
            continue
        if owner in layers and leaf == "weight":
            value = value * layers[owner].full_mask()
        elif key in pruned:
            value = value.masked_fill(pruned[key], 0)
        out[key] = value.detach().clone()
    return out


def _gated_channels(layers: dict[str, ScoredLayer]) -> dict[str, Tensor]:
    """Per-channel tensors to zero on export for channel-gated layers: the layer's bias and
    its followers' affine parameters at the pruned channels (a BatchNorm with weight and
    bias zero outputs exactly zero, which is what the gate produced)."""
    out: dict[str, Tensor] = {}
    for name, layer in layers.items():
        if not (layer.granularity == "channel" and getattr(layer, "channel_gate", False)):
            continue
        with torch.no_grad():
            dead = layer.current_mask().detach().flatten() == 0
        out[f"{name}.bias"] = dead
        for follower in getattr(layer, "gate_followers", ()):
            out[f"{follower}.weight"] = dead
            out[f"{follower}.bias"] = dead
    return out
