"""The interface every pruning method implements, and the registry of methods.

A method decides how scores start, which tensors train during the mask search, any penalty
it adds to the robust loss, and whether the pipeline pretrains and finetunes. The training
loop never branches on a method's name: adding a method is one module that registers its
class with ``@METHODS.register(name)``; :mod:`s2ap.pruning` imports every such module, so
whoever needs the filled registry imports the package.

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
``parameters`` / ``penalty`` / ``on_iteration`` / ``on_epoch_end``
    during the mask search; ``admissible`` says whether the scores of the moment may be
    returned (HARP: only once its budget has been met).
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
from typing import Any

from torch import Tensor, nn

from s2ap.config import ConfigError, ExperimentConfig
from s2ap.layers import CountMask, init_scores, scored_layers, set_keep, set_mode
from s2ap.pruning.channel import ChannelPlan, install_gates
from s2ap.pruning.compact import CompactReport, compact
from s2ap.registry import Registry
from s2ap.sharpness import Perturbation

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
    best_mask_applies = True  # False: the search returns its last state (prune.best_mask ignored)
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
            layer.mask_fn = CountMask(self.counts.get(name))

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

    def on_epoch_start(self, model: nn.Module, phase: str, epoch: int) -> Perturbation | None:
        """Hook before each training epoch of any phase; may return the method's own
        perturbation for the epoch (None: the pipeline's S2AP/AWP default)."""
        return None

    def on_iteration(self, model: nn.Module, epoch: int, step: int, steps: int) -> None:
        """Hook after iteration ``step`` (of ``steps``) of pruning epoch ``epoch``."""

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        """Hook after each pruning epoch."""

    def admissible(self) -> bool:
        """Whether the search may return the current scores (``prune.best_mask``'s candidates)."""
        return True

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


METHODS: Registry[type[PruningMethod]] = Registry("pruning method")


def build_method(cfg: ExperimentConfig) -> PruningMethod:
    return METHODS.get(cfg.prune.method)(cfg)
