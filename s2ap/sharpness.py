"""Layer-wise sharpness-aware perturbations: S2AP in score space and AWP in weight space.

Both follow the SAM optimizer-wrapper shape (Foret et al., 2021): with the gradient ``g`` at
the current point in each parameter's ``.grad``, ``climb()`` moves every tensor ``p_l`` to
``p_l + z_l`` with

    z_l = gamma * ||r_l|| * g_l / ||g_l||                    (S2AP Algorithm 1, lines 6-9)

where ``r_l`` is the layer's reference tensor (its scores for S2AP, its kept weights for
AWP, Algorithm 2). One ascent step from z = 0 followed by the projection onto the ball
``||z_l|| <= gamma ||r_l||`` lands exactly on its surface, which is this closed form.
The caller then computes the gradient at the perturbed point, ``restore()`` copies the
saved tensors back bit for bit, and the base optimizer steps with that gradient.

The paper's Algorithm 1 steps at ``s + z`` and subtracts ``z`` afterwards; for SGD without
weight decay the two orders give the same update. Restoring first (as SAM does) means the
base optimizer's weight decay and momentum see the unperturbed scores, and the removal is
exact rather than ``(s + z) - z`` in floating point.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from s2ap.pruning.layers import ScoredLayer


class LayerwisePerturbation:
    """Perturbs ``params`` (one tensor per layer) within ``gamma * ||reference(l)||``."""

    def __init__(
        self,
        params: Sequence[nn.Parameter],
        gamma: float,
        reference: Callable[[int], Tensor],
        support: Callable[[int], Tensor | None] = lambda i: None,
    ) -> None:
        self.params = list(params)
        self.gamma = gamma
        self.reference = reference
        self.support = support  # where the perturbation may be non-zero (AWP: kept weights)
        self._saved: list[Tensor] | None = None
        self.last_norms: list[float] = []

    @torch.no_grad()
    def climb(self) -> None:
        """``p <- p + z`` from the gradients currently in ``p.grad``."""
        if self._saved is not None:
            raise RuntimeError("climb() called twice without restore()")
        self._saved = [p.detach().clone() for p in self.params]
        self.last_norms = []
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                self.last_norms.append(0.0)
                continue
            support = self.support(i)
            if support is not None:
                g = g * support
            g_norm = g.norm()
            if g_norm == 0:
                self.last_norms.append(0.0)
                continue
            z = (self.gamma * self.reference(i).norm() / g_norm) * g
            p.add_(z)
            self.last_norms.append(float(z.norm()))

    @torch.no_grad()
    def restore(self) -> None:
        """Put the saved tensors back exactly."""
        if self._saved is None:
            raise RuntimeError("restore() called before climb()")
        for p, saved in zip(self.params, self._saved, strict=True):
            p.copy_(saved)
        self._saved = None


def score_perturbation(layers: Sequence[ScoredLayer], gamma: float) -> LayerwisePerturbation:
    """S2AP: perturb each layer's scores within ``gamma * ||s_l||``."""
    scores = [layer.scores for layer in layers]
    return LayerwisePerturbation(scores, gamma, reference=lambda i: scores[i].detach())


def weight_perturbation(layers: Sequence[ScoredLayer], gamma: float) -> LayerwisePerturbation:
    """AWP on the kept weights (Algorithm 2): ``||nu_l|| <= gamma * ||w_l * m_l||``."""
    weights: list[nn.Parameter] = [layer.weight for layer in layers]  # type: ignore[misc]

    def kept(i: int) -> Tensor:
        return layers[i].full_mask() if layers[i].mode != "dense" else torch.ones_like(weights[i])

    return LayerwisePerturbation(
        weights, gamma, reference=lambda i: weights[i].detach() * kept(i), support=kept
    )
