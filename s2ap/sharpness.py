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
        fingerprint: Callable[[], list[Tensor]] | None = None,
    ) -> None:
        self.params = list(params)
        self.gamma = gamma
        self.reference = reference
        self.support = support  # where the perturbation may be non-zero (AWP: kept weights)
        # What the gradient depends on; equal before and after climb() means the gradient
        # at p + z is the gradient at p, and the second pass can be skipped exactly.
        self.fingerprint = fingerprint
        self.unchanged = False
        self._saved: list[Tensor] | None = None
        self.last_norms: list[float] = []

    @torch.no_grad()
    def climb(self) -> None:
        """``p <- p + z`` from the gradients currently in ``p.grad``."""
        if self._saved is not None:
            raise RuntimeError("climb() called twice without restore()")
        self._saved = [p.detach().clone() for p in self.params]
        before = self.fingerprint() if self.fingerprint is not None else None
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
        self.unchanged = before is not None and all(
            torch.equal(a, b)
            for a, b in zip(before, self.fingerprint(), strict=True)  # type: ignore[misc]
        )

    @torch.no_grad()
    def restore(self) -> None:
        """Put the saved tensors back exactly."""
        if self._saved is None:
            raise RuntimeError("restore() called before climb()")
        for p, saved in zip(self.params, self._saved, strict=True):
            p.copy_(saved)
        self._saved = None


def score_perturbation(layers: Sequence[ScoredLayer], gamma: float) -> LayerwisePerturbation:
    """S2AP: perturb each layer's scores within ``gamma * ||s_l||``.

    Under the straight-through estimator the network sees the scores only through the
    binary mask, and the score gradient is ``dL/dW * w * sign(s)``. When ``s + z`` keeps
    every layer's mask and every score's sign, the gradient at ``s + z`` is exactly the
    gradient at ``s``: the perturbation changes nothing and the second forward/backward is
    skipped. How often that happens is reported per epoch (``perturbed_frac``), which says
    whether gamma is large enough to matter at all.
    """
    scores = [layer.scores for layer in layers]

    def fingerprint() -> list[Tensor]:
        with torch.no_grad():
            out = [layer.current_mask().detach().clone() for layer in layers]
            return out + [torch.signbit(s) for s in scores]

    return LayerwisePerturbation(
        scores, gamma, reference=lambda i: scores[i].detach(), fingerprint=fingerprint
    )


def weight_perturbation(layers: Sequence[ScoredLayer], gamma: float) -> LayerwisePerturbation:
    """AWP on the kept weights (Algorithm 2): ``||nu_l|| <= gamma * ||w_l * m_l||``."""
    weights: list[nn.Parameter] = [layer.weight for layer in layers]  # type: ignore[misc]

    def kept(i: int) -> Tensor:
        return layers[i].full_mask() if layers[i].mode != "dense" else torch.ones_like(weights[i])

    return LayerwisePerturbation(
        weights, gamma, reference=lambda i: weights[i].detach() * kept(i), support=kept
    )
