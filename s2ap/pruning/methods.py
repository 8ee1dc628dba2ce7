"""Pruning methods behind one interface.

A method decides how scores start, which tensors train during the mask search, any penalty
it adds to the robust loss, and whether the pipeline pretrains and finetunes. The training
loop never branches on a method's name: adding a method is one registry entry.

The pipeline drives a method through these hooks, in this order:

``bind(model, input_shape)``
    once, right after the model is built (also on resume): early checks that need the
    model (channel structure, FLOPs targets, HARP's per-layer strategy) and the Python-side
    state a fresh model lacks (mask functions, channel gates).
``prepare(model)``
    at the start of the prune phase: scores (and anything else) initialised.
``on_epoch_start(model, phase, epoch)``
    before every training epoch; returns the method's own sharpness perturbation for that
    epoch (AdaSAP) or None for the pipeline's default (S2AP / AWP from the ``s2ap`` section).
``parameters`` / ``penalty`` / ``on_epoch_end``
    during the mask search.
``finish_search(model)``
    after the search, with the best epoch restored, right before the masks are frozen.
``state_dict`` / ``load_state_dict``
    saved with every epoch, and with the best mask (HARP's rates go with their scores).
``export(model)``
    at the end: the compact network of a channel-pruned model.

Granularity is ``prune.granularity`` (null: the method's default). A method looks at the
layers it is given; ``granularity`` only tells the pipeline how to build the model.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor, nn

from s2ap.config import ConfigError, ExperimentConfig
from s2ap.pruning.channel import ChannelPlan, CompactReport, compact, install_gates
from s2ap.pruning.layers import (
    ScoredLayer,
    init_scores,
    scored_layers,
    set_keep,
    set_mode,
    topk_count_mask,
)
from s2ap.registry import Registry
from s2ap.seeding import derive_seed
from s2ap.sharpness import LayerwisePerturbation

log = logging.getLogger(__name__)


class PruningMethod:
    """Score-based pruning with a uniform per-layer keep-rate (the HYDRA recipe)."""

    name = "base"
    trains_scores = True  # False: the first mask is final (magnitude pruning)
    pretrains = True  # False: weights stay at their random initialisation (lottery tickets)
    finetunes = True
    granularities: tuple[str, ...] = ("weight", "channel")  # prune.granularity values it supports
    default_granularity = "weight"
    s2ap_unsupported: str | None = None  # why S2AP cannot wrap this method, if it cannot
    score_init: str | None = None  # None: use prune.score_init from the config

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.keep = 1.0 - cfg.prune.sparsity
        self.granularity: str = cfg.prune.granularity or self.default_granularity
        self.plan: ChannelPlan | None = None
        self.counts: dict[str, int] = {}  # channel pruning: output channels kept per pruned layer
        self._bound: nn.Module | None = None

    @classmethod
    def check_config(cls, cfg: ExperimentConfig) -> None:
        """Raise ConfigError when the method cannot run with ``cfg``."""
        granularity = cfg.prune.granularity or cls.default_granularity
        if granularity not in cls.granularities:
            raise ConfigError(
                "prune.granularity",
                f"{cls.name} supports {' or '.join(cls.granularities)} pruning, got {granularity!r}",
            )
        if cfg.prune.flops_reduction is not None and granularity != "channel":
            raise ConfigError(
                "prune.flops_reduction",
                "a FLOPs target needs channel pruning; set prune.granularity: channel",
            )
        if cfg.s2ap.enabled and cls.s2ap_unsupported is not None:
            raise ConfigError("s2ap.enabled", cls.s2ap_unsupported)

    # ------------------------------------------------------------------ binding to a model

    def bind(self, model: nn.Module, input_shape: tuple[int, ...] | None = None) -> None:
        """Attach to a freshly built model (see the module docstring)."""
        root = getattr(model, "module", model)
        layers = scored_layers(root)
        if not layers:
            raise ConfigError("model.prune_layers", "the model has no prunable layers")
        if layers[0][1].granularity == "channel":
            if input_shape is None:
                raise ValueError("channel pruning needs the input shape: call bind(model, input_shape)")
            self._bind_channels(root, tuple(input_shape))
        self._bound = root
        self.attach(root)

    def _bind_channels(self, root: nn.Module, input_shape: tuple[int, ...]) -> None:
        model_name = self.cfg.model.name
        plan = ChannelPlan(root, input_shape)
        plan.check_shrinkable(model_name)
        factor = self.cfg.prune.flops_reduction
        names = plan.prunable(flops_target=factor is not None)
        if not names:
            raise ConfigError("prune.granularity", f"{model_name} has no layer whose channels can be pruned")
        if factor is not None:
            self.keep = plan.keep_for_flops(factor, model_name)
        self.plan = plan
        self.counts = plan.uniform_counts(self.keep, names)
        install_gates(plan)
        target = (
            f"{factor:g}x fewer FLOPs (channel keep-rate {self.keep:.4f}, compact FLOPs "
            f"{float(plan.flops(self.counts)):.4g} of {plan.dense_flops:.4g})"
            if factor is not None
            else f"channel keep-rate {self.keep:.4f}"
        )
        log.info("%s: channel pruning of %s to %s; %s", self.name, model_name, target, plan.describe())

    def attach(self, root: nn.Module) -> None:
        """Install Python-side per-layer state; the base method only needs it for channels."""
        if self.plan is None:
            return
        for name, layer in scored_layers(root):
            layer.mask_fn = _CountMask(self.counts.get(name))

    def _ensure_bound(self, model: nn.Module) -> None:
        if self._bound is not getattr(model, "module", model):
            self.bind(model)

    def prepare(self, model: nn.Module) -> None:
        """Initialise scores from the current weights and switch to score masking."""
        if not scored_layers(model):
            raise ConfigError("model.prune_layers", "the model has no prunable layers")
        self._ensure_bound(model)
        set_keep(model, self.keep)
        init_scores(model, self.score_init or self.cfg.prune.score_init)
        set_mode(model, "scores")

    # ------------------------------------------------------------------ the mask search

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Tensors trained during the mask search."""
        return [layer.scores for _, layer in scored_layers(model)]

    def penalty(self, model: nn.Module) -> Tensor | None:
        """Extra term added to the robust loss during the mask search."""
        return None

    def on_epoch_start(self, model: nn.Module, phase: str, epoch: int) -> LayerwisePerturbation | None:
        """Hook before each training epoch of any phase; may return the method's own
        perturbation for the epoch (None: the pipeline's S2AP/AWP default)."""
        return None

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        """Hook after each pruning epoch."""

    def finish_search(self, model: nn.Module) -> None:
        """Hook after the mask search (best epoch restored), right before the masks freeze."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def export(self, model: nn.Module) -> tuple[nn.Module, CompactReport] | None:
        """The compact network of a channel-pruned model (None for weight pruning)."""
        if self.plan is None:
            return None
        return compact(model, self.plan)


class _CountMask:
    """Channel mask keeping a fixed number of top-|score| channels (straight-through).

    ``count=None`` keeps everything (a layer channel pruning leaves whole, like the head).
    The top-k is cached on the scores' version like ``ScoredLayer.score_mask``.
    """

    def __init__(self, count: int | None) -> None:
        self.count = count

    def __call__(self, layer: ScoredLayer) -> Tensor:
        magnitude = layer.scores.abs()
        if self.count is None:
            return torch.ones_like(magnitude) + (magnitude - magnitude.detach())
        return cached_topk(layer, self.count) + (magnitude - magnitude.detach())


def cached_topk(layer: ScoredLayer, count: int) -> Tensor:
    """Binary top-``count`` mask of ``|scores|``, recomputed only when the scores change."""
    key = (layer.scores._version, layer.scores.data_ptr(), count)
    cache = getattr(layer, "_count_cache", None)
    if cache is None or cache[0] != key:
        cache = (key, topk_count_mask(layer.scores.abs(), count))
        layer._count_cache = cache  # type: ignore[attr-defined]
    return cache[1]


METHODS: Registry[type[PruningMethod]] = Registry("pruning method")


@METHODS.register("hydra")
class Hydra(PruningMethod):
    """HYDRA (Sehwag et al., 2020): top-k of learned scores in every layer, scores
    initialised proportionally to the pretrained weights. With channel granularity one
    score per output channel and a uniform channel keep-rate (from prune.sparsity or the
    FLOPs target)."""

    name = "hydra"


@METHODS.register("lwm")
class LowestWeightMagnitude(PruningMethod):
    """Magnitude baseline: keep the largest-magnitude weights of each layer; no score
    training, then adversarial finetuning."""

    name = "lwm"
    trains_scores = False
    score_init = "magnitude"
    s2ap_unsupported = "lwm trains no scores, so S2AP cannot apply; set s2ap.enabled: false"


@METHODS.register("rlth")
class RobustLotteryTicket(PruningMethod):
    """Robust lottery tickets (Fu et al., 2021; the S2AP paper's RLTH, Sect. 4.1 / B.1).

    A subnetwork is searched inside a *randomly initialised* network: no pretraining, the
    weights are drawn once and frozen, only the scores train (randomly initialised,
    Kaiming-uniform), and there is no finetuning. S2AP wraps the score search unchanged.
    Weights: Kaiming-normal (fan-in, ReLU gain) or its signed constant
    ``sign(w) * sqrt(2 / fan_in)`` (Ramanujan et al., 2020), seeded from the run's seed.
    """

    name = "rlth"
    pretrains = False
    finetunes = False
    granularities = ("weight",)
    score_init = "kaiming"

    @classmethod
    def check_config(cls, cfg: ExperimentConfig) -> None:
        super().check_config(cfg)
        if cfg.pretrain.checkpoint is not None:
            raise ConfigError(
                "pretrain.checkpoint",
                "rlth searches a ticket in randomly initialised weights; remove the pretrained checkpoint",
            )

    def prepare(self, model: nn.Module) -> None:
        generator = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "rlth-weights"))
        with torch.no_grad():
            for _, layer in scored_layers(model):
                w: Tensor = layer.weight
                std = math.sqrt(2.0 / layer.fan_in)
                sample = torch.randn(w.shape, generator=generator, dtype=w.dtype) * std
                if self.cfg.rlth.weight_init == "signed_constant":
                    sample = torch.where(sample >= 0, std, -std).to(w.dtype)
                w.copy_(sample.to(w.device))
        super().prepare(model)


def build_method(cfg: ExperimentConfig) -> PruningMethod:
    return METHODS.get(cfg.prune.method)(cfg)


# Importing the method modules fills the registry.
from s2ap.pruning import adasap, harp  # noqa: E402,F401
