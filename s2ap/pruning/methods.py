"""Pruning methods behind one interface.

A method decides how scores start, which tensors train during the mask search, any penalty
it adds to the robust loss, and whether the pipeline pretrains and finetunes. The training
loop never branches on a method's name: adding a method is one registry entry.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import Tensor, nn

from s2ap.config import ConfigError, ExperimentConfig
from s2ap.pruning.layers import init_scores, scored_layers, set_keep, set_mode
from s2ap.registry import Registry

log = logging.getLogger(__name__)


class PruningMethod:
    """Score-based pruning with a uniform per-layer keep-rate (the HYDRA recipe)."""

    name = "base"
    trains_scores = True  # False: the first mask is final (magnitude pruning)
    pretrains = True  # False: weights stay at their random initialisation (lottery tickets)
    finetunes = True
    granularity = "weight"
    score_init = None  # None: use prune.score_init from the config

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.keep = 1.0 - cfg.prune.sparsity

    @classmethod
    def check_config(cls, cfg: ExperimentConfig) -> None:
        """Raise ConfigError when the method cannot run with ``cfg``."""

    def prepare(self, model: nn.Module) -> None:
        """Initialise scores from the current weights and switch to score masking."""
        if not scored_layers(model):
            raise ConfigError("model.prune_layers", "the model has no prunable layers")
        set_keep(model, self.keep)
        init_scores(model, self.score_init or self.cfg.prune.score_init)
        set_mode(model, "scores")

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Tensors trained during the mask search."""
        return [layer.scores for _, layer in scored_layers(model)]

    def penalty(self, model: nn.Module) -> Tensor | None:
        """Extra term added to the robust loss during the mask search."""
        return None

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        """Hook after each pruning epoch."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


METHODS: Registry[type[PruningMethod]] = Registry("pruning method")


@METHODS.register("hydra")
class Hydra(PruningMethod):
    """HYDRA (Sehwag et al., 2020): top-k of learned scores in every layer, scores
    initialised proportionally to the pretrained weights."""

    name = "hydra"


@METHODS.register("lwm")
class LowestWeightMagnitude(PruningMethod):
    """Magnitude baseline: keep the largest-magnitude weights of each layer; no score
    training, then adversarial finetuning."""

    name = "lwm"
    trains_scores = False
    score_init = "magnitude"

    @classmethod
    def check_config(cls, cfg: ExperimentConfig) -> None:
        if cfg.s2ap.enabled:
            raise ConfigError(
                "s2ap.enabled", "lwm trains no scores, so S2AP cannot apply; set s2ap.enabled: false"
            )


def build_method(cfg: ExperimentConfig) -> PruningMethod:
    return METHODS.get(cfg.prune.method)(cfg)


