"""The score-based methods that need no machinery of their own: HYDRA, the magnitude
baseline and robust lottery tickets (HARP, AdaSAP and channel pruning have their modules)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from s2ap.config import ConfigError, ExperimentConfig
from s2ap.layers import scored_layers
from s2ap.pruning.base import METHODS, PruningMethod
from s2ap.seeding import derive_seed


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
