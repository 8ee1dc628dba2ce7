"""HARP (Zhao & Wressnegger, ICLR 2023): scores *and* per-layer keep-rates, learned together.

Each pruned layer ``l`` has a learned scalar ``r_l`` that sets its keep-rate through a
sigmoid, bounded below by a fraction ``phi`` (``harp.min_rate_fraction``) of the target
keep-rate ``k_t``:

    k_l = lo + (1 - lo) * sigmoid(r_l + b_l),    lo = phi * k_t,

with ``b_l`` fixed so that ``r_l = 0`` gives the layer's initial rate (uniform ``k_t`` by
default, or ``harp.init_rates``). Weight decay therefore pulls the rates back towards the
initial strategy rather than towards an arbitrary 50%.

Forward: the mask keeps the top ``round(k_l * n_l)`` entries of ``|s_l|`` (the
:math:`M(s, k)` of S2AP Eq. 3, with a per-layer ``k``). Backward: scores get the usual
straight-through gradient, and the rate gets the sum of the mask's straight-through
gradients over the layer, ``dL/dk_l = sum_i dL/dM_{l,i}`` (the first-order change of the
loss when the layer keeps a little more), implemented as ``M + (k_l - k_l.detach())``.

The budget is a penalty added to the robust loss (S2AP's "Formulation Generality"):

    P = c * max(sum_l n_l k_l / sum_l n_l / k_t - 1, 0),

zero exactly when the global keep-rate is within the target; for a FLOPs target the ratio
is the compact network's FLOPs (from the learned channel rates) over ``dense / factor``.

The weight follows HARP's public code (intellisec/harp, ``utils/hw.py`` and ``train.py``,
``gamma_dynamic``): in pruning epoch ``e`` it is ``c = (e + 1) * harp.penalty_init``
(HARP's ``gamma``, default 1.0), growing linearly -- robustness first, then increasingly the
budget -- until the first epoch that ends within budget (HARP rounds the penalty to four
decimals, so a ratio below 5e-5 counts as within); from then on it stays frozen at that
epoch's value. Only scores from then on are candidates for the returned mask
(:meth:`Harp.admissible`; HARP keeps its best checkpoint only among such epochs), chosen by
``prune.best_mask`` (HARP's own code picks the highest adversarial accuracy, ``val_robust``
here, but on its test set). If no epoch ever meets the budget, the last epoch is returned.

The masks, their freeze and the dense export all use the learned per-layer rates; with
``harp.enforce_budget`` (default) the rates returned by the search are shifted down
together, if needed, so the frozen mask meets the target exactly.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from s2ap.config import ConfigError, ExperimentConfig
from s2ap.distributed import is_distributed
from s2ap.layers import CountMask, ScoredLayer, cached_topk, keep_count, scored_layers
from s2ap.pruning.base import METHODS, PruningMethod

log = logging.getLogger(__name__)

_EDGE = 1e-6  # keeps the initial logit finite for an initial rate of exactly lo or 1
_WITHIN = 5e-5  # HARP: np.round(penalty, 4) == 0


@METHODS.register("harp")
class Harp(PruningMethod):
    """HARP: learned layer-wise keep-rates plus scores; see the module docstring."""

    name = "harp"

    def __init__(self, cfg: ExperimentConfig) -> None:
        super().__init__(cfg)
        self.coef = cfg.harp.penalty_init
        self.frozen: float | None = None  # the weight once an epoch ended within budget
        self.reached: int | None = None  # that epoch
        self.names: list[str] = []  # the layers with a learned rate, in definition order
        self.sizes: Tensor | None = None  # n_l: prunable entries (weights) per rated layer
        self.logits: nn.Parameter | None = None  # r_l, trained with the scores
        self._offset: Tensor | None = None  # b_l
        self._start: Tensor | None = None  # initial rate, exact
        self._pending: dict[str, Any] | None = None

    @property
    def lower(self) -> float:
        """``lo``: no layer keeps less than this fraction of its entries."""
        return self.cfg.harp.min_rate_fraction * self.keep

    # ------------------------------------------------------------------ binding

    def attach(self, root: nn.Module) -> None:
        layers = scored_layers(root)
        # Definition order (as scored_layers lists them); channel pruning rates only the
        # layers it prunes (not the head, and for a FLOPs target only removable ones).
        self.names = [name for name, _ in layers if self.plan is None or name in self.counts]
        init = self.cfg.harp.init_rates
        if init and len(init) != len(self.names):
            shown = ", ".join(self.names[:6]) + (", ..." if len(self.names) > 6 else "")
            raise ConfigError(
                "harp.init_rates",
                f"has {len(init)} entries but {self.cfg.model.name} has {len(self.names)} pruned layers "
                f"({shown}); give one keep-rate per pruned layer or leave it empty for uniform",
            )
        for i, rate in enumerate(init):
            if rate < self.lower:
                raise ConfigError(
                    f"harp.init_rates[{i}]",
                    f"must be >= min_rate_fraction * target keep-rate = {self.lower:.4g}, got {rate}",
                )
        param = next(root.parameters())
        by_name = dict(layers)
        self.sizes = torch.tensor(
            [float(by_name[n].weight.numel()) for n in self.names], dtype=torch.float64, device=param.device
        )
        # float64: the initial rate must be exact so the first mask is HYDRA's top-k.
        self.logits = nn.Parameter(torch.zeros(len(self.names), dtype=torch.float64, device=param.device))
        self.logits.register_hook(_average_across_ranks)
        self._init_rates()
        index = {name: i for i, name in enumerate(self.names)}
        for name, layer in layers:
            layer.mask_fn = _RateMask(self, index[name]) if name in index else CountMask(None)
        if self._pending is not None:
            self.load_state_dict(self._pending)
            self._pending = None

    def _init_rates(self) -> None:
        assert self.logits is not None
        init = self.cfg.harp.init_rates or (self.keep,) * len(self.names)
        start = torch.tensor(init, dtype=torch.float64, device=self.logits.device)
        lo = self.lower
        frac = ((start - lo) / (1 - lo)).clamp(_EDGE, 1 - _EDGE)
        self._start = start
        self._offset = torch.log(frac) - torch.log1p(-frac)
        with torch.no_grad():
            self.logits.zero_()

    def prepare(self, model: nn.Module) -> None:
        super().prepare(model)
        self._init_rates()
        self.coef, self.frozen, self.reached = self.cfg.harp.penalty_init, None, None

    # ------------------------------------------------------------------ rates and budget

    def rates(self) -> Tensor:
        """The learned keep-rates ``k_l`` (float64, differentiable w.r.t. ``logits``).

        Written as ``start + f(r) - f(0)``, equal to ``f(r)`` up to rounding but exactly
        the initial strategy at ``r = 0``, then clamped into ``[lo, 1]``.
        """
        assert self.logits is not None and self._offset is not None and self._start is not None
        lo = self.lower
        f = lo + (1 - lo) * torch.sigmoid(self.logits + self._offset)
        f0 = lo + (1 - lo) * torch.sigmoid(self._offset)
        return (self._start + (f - f0)).clamp(lo, 1.0)

    def layer_rates(self) -> dict[str, float]:
        """Learned keep-rate per pruned layer (what the masks and the export use)."""
        with torch.no_grad():
            return dict(zip(self.names, self.rates().tolist(), strict=True))

    def budget_ratio(self) -> Tensor:
        """``sum_l n_l k_l / sum_l n_l / k_t - 1`` (or the FLOPs analogue); <= 0 within budget."""
        k = self.rates()
        factor = self.cfg.prune.flops_reduction
        if self.plan is not None and factor is not None:
            channels = {n: self.plan.nodes[n].out_channels * k[i] for i, n in enumerate(self.names)}
            return self.plan.flops(channels) / self.plan.dense_flops * factor - 1
        assert self.sizes is not None
        return (self.sizes * k).sum() / self.sizes.sum() / self.keep - 1

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        assert self.logits is not None
        return super().parameters(model) + [self.logits]

    def penalty(self, model: nn.Module) -> Tensor:
        return (self.coef * self.budget_ratio().clamp_min(0)).float()

    def on_epoch_start(self, model: nn.Module, phase: str, epoch: int) -> None:
        if phase == "prune":
            self.coef = self.frozen if self.frozen is not None else (epoch + 1) * self.cfg.harp.penalty_init
        return None

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        with torch.no_grad():
            ratio = float(self.budget_ratio())
        if self.frozen is None and ratio < _WITHIN:
            self.frozen, self.reached = self.coef, epoch
        rates = self.layer_rates()
        log.info(
            "harp epoch %d: budget %+.4f (%s), penalty weight %.4g%s, keep-rates %s",
            epoch,
            ratio,
            "over" if ratio >= _WITHIN else "within",
            self.coef,
            " (frozen)" if self.frozen is not None else "",
            " ".join(f"{v:.3f}" for v in rates.values()),
        )

    def admissible(self) -> bool:
        """HARP keeps checkpoints only once an epoch has ended within budget."""
        return self.reached is not None

    def finish_search(self, model: nn.Module) -> None:
        """With ``harp.enforce_budget``, move every logit down by one common shift (found by
        bisection) until the budget holds, so the frozen mask meets the target like HYDRA's.

        The shift keeps the learned ordering of the layers' rates; it is a no-op when the
        returned rates are already within budget.
        """
        assert self.logits is not None
        with torch.no_grad():
            over = float(self.budget_ratio())
            if not self.cfg.harp.enforce_budget or over <= 0:
                return
            learned = self.logits.detach().clone()
            lo, hi = -1e3, 0.0  # at -1e3 every rate sits at its lower bound: within budget
            for _ in range(100):
                mid = (lo + hi) / 2
                self.logits.copy_(learned + mid)
                if float(self.budget_ratio()) <= 0:
                    lo = mid
                else:
                    hi = mid
            self.logits.copy_(learned + lo)
        log.info(
            "harp: learned rates were %.2f%% over budget; shifted logits by %.4g to meet it exactly",
            100 * over,
            lo,
        )

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        if self.logits is None:
            return {}
        return {
            "logits": self.logits.detach().cpu().clone(),
            "coef": self.coef,
            "frozen": self.frozen,
            "reached": self.reached,
            "start": self._start.cpu().clone() if self._start is not None else None,
            "offset": self._offset.cpu().clone() if self._offset is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if self.logits is None:
            self._pending = state
            return
        device = self.logits.device
        with torch.no_grad():
            self.logits.copy_(state["logits"].to(device))
        self._start = state["start"].to(device)
        self._offset = state["offset"].to(device)
        self.coef = float(state["coef"])
        self.frozen, self.reached = state.get("frozen"), state.get("reached")


class _RateMask:
    """Top ``round(k_l * n_l)`` of ``|s_l|`` with straight-through gradients to the scores
    and ``dL/dk_l = sum_i dL/dM_i`` to the layer's rate."""

    def __init__(self, method: Harp, index: int) -> None:
        self.method = method
        self.index = index

    def __call__(self, layer: ScoredLayer) -> Tensor:
        k = self.method.rates()[self.index]
        count = keep_count(float(k.detach()), layer.scores.numel())
        mask = cached_topk(layer, count)
        magnitude = layer.scores.abs()
        return mask + (magnitude - magnitude.detach()) + (k - k.detach()).to(mask.dtype)


def _average_across_ranks(grad: Tensor) -> Tensor:
    """The rates live outside the DDP module; average their gradient like DDP would."""
    if is_distributed():
        grad = grad.clone()
        dist.all_reduce(grad)
        grad /= dist.get_world_size()
    return grad
