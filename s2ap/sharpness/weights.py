"""Sharpness-aware perturbations of the weights, all built on
:class:`~s2ap.sharpness.perturbation.Perturbation`.

* :func:`weight_perturbation`: AWP on the kept weights while finetuning (S2AP Algorithm 2),
  ``||nu_l|| <= gamma * ||w_l * m_l||``.
* :class:`SearchWeightPerturbation`: AWP *during the mask search* (the S2AP paper's
  Sect. B.5 / Table 13 ablation, ``s2ap.perturb: weights``). The scores still train; the
  frozen weights are perturbed within ``gamma * ||w_l||`` (Eq. 7's ball, the weight-space
  twin of S2AP's ``gamma * ||s_l||``) and the score gradient is taken at ``w + nu``. The
  step follows the weights' gradient, which is zero on pruned entries (the forward pass
  uses ``w * m``), so only the kept weights move.
* :class:`AdaptiveWeightPerturbation`: AdaSAP's per-neuron perturbation (Bair et al.,
  Algorithm 1): each neuron ``i`` gets its own radius ``rho_i`` that shrinks with its
  importance (Eq. 2-3) and an ASAM-shaped ascent step (Eq. 6). With
  ``rho_min == rho_max`` it is the uniform sharpness-aware step of the finetuning phase.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from s2ap.distributed import is_distributed
from s2ap.layers import ScoredLayer
from s2ap.sharpness.perturbation import LayerwisePerturbation, Perturbation, Support, _everywhere
from s2ap.sharpness.projection import DEFAULT_PROJECTION


def _kept(layers: Sequence[ScoredLayer], weights: Sequence[Tensor]) -> Support:
    """Where a layer's weights may move: its kept entries (all of them while dense)."""

    def kept(i: int) -> Tensor:
        return layers[i].full_mask() if layers[i].mode != "dense" else torch.ones_like(weights[i])

    return kept


def _weights(layers: Sequence[ScoredLayer]) -> list[nn.Parameter]:
    return [layer.weight for layer in layers]  # type: ignore[misc]


def weight_perturbation(
    layers: Sequence[ScoredLayer],
    gamma: float,
    projection: str = DEFAULT_PROJECTION,
    eta: float = 0.0,
    ascent: str = "fresh",
) -> LayerwisePerturbation:
    """AWP on the kept weights (Algorithm 2): ``||nu_l|| <= gamma * ||w_l * m_l||``."""
    weights = _weights(layers)
    kept = _kept(layers, weights)
    return LayerwisePerturbation(
        weights,
        gamma,
        reference=lambda i: weights[i].detach() * kept(i),
        support=kept,
        projection=projection,
        eta=eta,
        ascent=ascent,
    )


class SearchWeightPerturbation(LayerwisePerturbation):
    """AWP on the kept weights while the scores train.

    The weights are not trained in this phase, so nothing else zeroes their gradients:
    ``restore()`` drops them, and the next iteration's first backward starts from zero.
    Under DDP the weights' gradients are averaged here (the reducer only knows the
    tensors that were trainable when it was built), so every rank climbs the same way.
    """

    def __init__(
        self,
        layers: Sequence[ScoredLayer],
        gamma: float,
        projection: str = DEFAULT_PROJECTION,
        eta: float = 0.0,
        ascent: str = "fresh",
    ) -> None:
        weights = _weights(layers)
        super().__init__(
            weights,
            gamma,
            reference=lambda i: weights[i].detach(),
            support=_kept(layers, weights),
            projection=projection,
            eta=eta,
            ascent=ascent,
        )
        self.begin()

    def begin(self) -> None:
        # The frozen weights need gradients for the climb; the phase set them untrainable.
        for w in self.params:
            w.requires_grad_(True)

    def _global(self, grads: list[Tensor | None]) -> list[Tensor | None]:
        if is_distributed():
            world = dist.get_world_size()
            for g in grads:
                if g is not None:
                    dist.all_reduce(g)
                    g.div_(world)
        return grads

    def ascent(self) -> Iterator[Tensor | None]:
        if self.ascent_from == "fresh" or self.kept is None:  # .grad holds this rank's gradient
            self._global([p.grad for p in self.params])
        yield from super().ascent()

    @torch.no_grad()
    def restore(self) -> None:
        super().restore()
        for p in self.params:
            p.grad = None


def search_weight_perturbation(
    layers: Sequence[ScoredLayer],
    gamma: float,
    projection: str = DEFAULT_PROJECTION,
    eta: float = 0.0,
    ascent: str = "fresh",
) -> SearchWeightPerturbation:
    """``s2ap.perturb: weights``: perturb the kept weights instead of the scores."""
    return SearchWeightPerturbation(layers, gamma, projection, eta, ascent)


def neuron_importance(weight: Tensor, channel: bool, criterion: str = "l2") -> Tensor:
    """One importance per neuron: the l2 (or l1) norm of each output channel's weights,
    or ``|w|`` per weight when every weight is its own neuron (AdaSAP, Sect. 3.1)."""
    if not channel:
        return weight.detach().abs().flatten()
    rows = weight.detach().flatten(1)
    return rows.norm(dim=1) if criterion == "l2" else rows.abs().sum(dim=1)


def adaptive_radii(importance: Tensor, rho_min: float, rho_max: float) -> Tensor:
    """AdaSAP Eq. 2-3: radii spread linearly over ``[rho_min, rho_max]`` by importance.

    The least important neuron (``s_min``) gets ``rho_max`` (it is likely to be pruned, so
    it is pushed into a flat region) and the most important (``s_max``) gets ``rho_min``:
    ``rho_i = rho_max - (s_i - s_min) / (s_max - s_min) * (rho_max - rho_min)``. (The
    paper's printed Eq. 2-3 is garbled; this is the map its text and Algorithm 1 describe.)
    ``s_min`` and ``s_max`` are taken per layer: pruning here ranks neurons within a layer.
    """
    lo, hi = importance.min(), importance.max()
    if not bool(hi > lo):
        return torch.full_like(importance, (rho_min + rho_max) / 2)
    return rho_max - (importance - lo) / (hi - lo) * (rho_max - rho_min)


class AdaptiveWeightPerturbation(Perturbation):
    """AdaSAP's ascent step on the scored layers' weights (Algorithm 1).

    For neuron ``i`` with gradient ``g_i`` and ``T_i = |w_i| + eta`` (ASAM, elementwise;
    ``T_i = 1`` for plain SAM), the perturbation is

        eps_i = rho_i * T_i^2 g_i / ||T_i g_i||            (Eq. 6, per neuron)

    so that ``||T_i^{-1} eps_i|| = rho_i``: every neuron sits exactly on its own ball.
    ``support(i)`` restricts the step to kept weights once neurons are pruned.
    """

    def __init__(
        self,
        layers: Sequence[ScoredLayer],
        rho_min: float,
        rho_max: float,
        adaptive: bool = True,
        eta: float = 0.01,
        criterion: str = "l2",
        support: Support = _everywhere,
    ) -> None:
        super().__init__(_weights(layers), support)
        self.channel = [layer.granularity == "channel" for layer in layers]
        self.rho_min, self.rho_max = rho_min, rho_max
        self.adaptive, self.eta, self.criterion = adaptive, eta, criterion
        self.last_radii: list[Tensor] = []

    def radii(self, i: int) -> Tensor:
        """Per-neuron radii of layer ``i`` from its current (kept) weights."""
        w = self.params[i].detach()
        support = self.support(i)
        if support is not None:
            w = w * support
        return adaptive_radii(
            neuron_importance(w, self.channel[i], self.criterion), self.rho_min, self.rho_max
        )

    def ascent(self) -> Iterator[Tensor | None]:
        # Every layer's radii from the unperturbed weights (a layer's radii depend only on
        # its own weights, so this equals computing them layer by layer).
        self.last_radii = [self.radii(i) for i in range(len(self.params))]
        for i, p in enumerate(self.params):
            g = self.gradient(i)
            yield None if g is None else self._eps(i, p, g)

    def _eps(self, i: int, p: Tensor, g: Tensor) -> Tensor:
        t = p.detach().abs() + self.eta if self.adaptive else torch.ones_like(p)
        rows = p.shape[0] if self.channel[i] else p.numel()
        tg = (t * g).reshape(rows, -1)
        denom = tg.norm(dim=1, keepdim=True).clamp_min(1e-12)
        eps = self.last_radii[i].view(rows, 1).to(p.dtype) * (t * t * g).reshape(rows, -1) / denom
        return eps.view_as(p)
