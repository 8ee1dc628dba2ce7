"""The SAM-shaped perturbation every sharpness-aware step in the tool is built on.

The shape is SAM's optimizer wrapper (Foret et al., 2021): with the gradient ``g`` at the
current point in each parameter's ``.grad``, :meth:`Perturbation.climb` saves the tensors
and moves each ``p_l`` to ``p_l + z_l``; the caller computes the gradient at the perturbed
point; :meth:`Perturbation.restore` copies the saved tensors back bit for bit; the base
optimizer then steps with that gradient. Subclasses only say what ``z_l`` is
(:meth:`Perturbation.step`):

* :class:`LayerwisePerturbation` projects onto a layer-wise ball,

      z_l = gamma * ||r_l|| * g_l / ||g_l||                  (S2AP Algorithm 1, lines 6-9)

  with ``r_l`` the layer's reference tensor (its scores for S2AP, its kept weights for
  AWP, Algorithm 2). One ascent step from z = 0 followed by the projection onto the ball
  ``||z_l|| <= gamma ||r_l||`` lands exactly on its surface, which is this closed form.
* :class:`~s2ap.sharpness.weights.AdaptiveWeightPerturbation` gives every neuron its own
  radius (AdaSAP).

The paper's Algorithm 1 steps at ``s + z`` and subtracts ``z`` afterwards; for SGD without
weight decay the two orders give the same update. Restoring first (as SAM does) means the
base optimizer's weight decay and momentum see the unperturbed scores, and the removal is
exact rather than ``(s + z) - z`` in floating point.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

Support = Callable[[int], Tensor | None]


def _everywhere(i: int) -> Tensor | None:
    return None


class Perturbation:
    """Perturbs ``params`` (one tensor per layer) where ``support(i)`` allows (None: all).

    ``fingerprint`` lists what the gradient depends on; equal before and after
    :meth:`climb` means the gradient at ``p + z`` is the gradient at ``p``, and the caller
    may skip the second pass exactly (``unchanged``).
    """

    def __init__(
        self,
        params: Sequence[nn.Parameter],
        support: Support = _everywhere,
        fingerprint: Callable[[], list[Tensor]] | None = None,
    ) -> None:
        self.params = list(params)
        self.support = support
        self.fingerprint = fingerprint
        self.unchanged = False
        self.last_norms: list[float] = []
        self._saved: list[Tensor] | None = None

    def begin(self) -> None:
        """Called when an epoch starts using this perturbation (before its first batch)."""

    def step(self, i: int, p: Tensor, g: Tensor) -> Tensor | None:
        """The perturbation ``z`` of layer ``i`` from its (supported) gradient ``g``; None
        leaves the layer where it is."""
        raise NotImplementedError

    def before_climb(self) -> None:
        """Hook: runs after the tensors are saved and before any layer moves."""

    @torch.no_grad()
    def climb(self) -> None:
        """``p <- p + z`` from the gradients currently in ``p.grad``."""
        if self._saved is not None:
            raise RuntimeError("climb() called twice without restore()")
        self._saved = [p.detach().clone() for p in self.params]
        before = self.fingerprint() if self.fingerprint is not None else None
        self.last_norms = []
        self.before_climb()
        for i, p in enumerate(self.params):
            g = p.grad
            z = None
            if g is not None:
                support = self.support(i)
                z = self.step(i, p, g if support is None else g * support)
            if z is None:
                self.last_norms.append(0.0)
                continue
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


class LayerwisePerturbation(Perturbation):
    """Each layer on the surface of its ball: ``||z_l|| = gamma * ||reference(l)||``."""

    def __init__(
        self,
        params: Sequence[nn.Parameter],
        gamma: float,
        reference: Callable[[int], Tensor],
        support: Support = _everywhere,
        fingerprint: Callable[[], list[Tensor]] | None = None,
    ) -> None:
        super().__init__(params, support, fingerprint)
        self.gamma = gamma
        self.reference = reference

    def step(self, i: int, p: Tensor, g: Tensor) -> Tensor | None:
        g_norm = g.norm()
        if g_norm == 0:
            return None
        return (self.gamma * self.reference(i).norm() / g_norm) * g
