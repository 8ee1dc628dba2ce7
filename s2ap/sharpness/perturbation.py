"""The SAM-shaped perturbation every sharpness-aware step in the tool is built on.

The shape is SAM's optimizer wrapper (Foret et al., 2021): with the gradient ``g`` at the
current point in each parameter's ``.grad``, :meth:`Perturbation.climb` saves the tensors
and moves each ``p_l`` to ``p_l + z_l``; the caller computes the gradient at the perturbed
point; :meth:`Perturbation.restore` copies the saved tensors back bit for bit; the base
optimizer then steps with that gradient. Subclasses only say what ``z_l`` is
(:meth:`Perturbation.step`):

* :class:`LayerwisePerturbation` bounds each layer by ``gamma * ||r_l||``, with ``r_l`` the
  layer's reference tensor (its scores for S2AP, its kept weights for AWP, Algorithm 2), in
  one of three ways (``s2ap.projection``):

  - ``algorithm1``, as printed (Algorithm 1, lines 1 and 6-9; Algorithm 2, lines 1 and 5-8):
    ``z`` starts at 0 once and is kept across iterations;
    ``z <- z + eta * g / ||g||`` with ``g`` the gradient at ``s + z`` and its norm taken over
    *all* layers, then each layer with ``||z_l|| > gamma ||r_l||`` is scaled back onto its
    ball and every other layer is left as it is. ``eta`` is the phase's learning rate;
  - ``algorithm1_reset``: the same step from ``z = 0`` at every iteration (AWP's reference
    code also starts its ascent afresh each iteration), so ``g`` is the gradient at ``s``;
  - ``surface``: every layer on the surface of its ball,
    ``z_l = gamma * ||r_l|| * g_l / ||g_l||`` (AWP's reference code rescales each layer's
    ascent direction to its bound the same way).

  With ``algorithm1``, the gradient at ``s + z_prev`` is the one at ``s`` whenever ``z_prev``
  changes no mask entry and no score sign (the straight-through estimator sees the scores
  only through them); otherwise one extra forward/backward at ``s + z_prev`` computes it.

  ``surface`` equals ``algorithm1_reset`` only in the layers that the step of size ``eta``
  pushes past their bound; the others get ``eta * ||g_l|| / ||g||``, less than the bound.
* :class:`~s2ap.sharpness.weights.AdaptiveWeightPerturbation` gives every neuron its own
  radius (AdaSAP).

The paper's Algorithm 1 steps at ``s + z`` and subtracts ``z`` afterwards; for SGD without
weight decay the two orders give the same update. Restoring first (as SAM does) means the
base optimizer's weight decay and momentum see the unperturbed scores, and the removal is
exact rather than ``(s + z) - z`` in floating point.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

Support = Callable[[int], Tensor | None]
PROJECTIONS = ("algorithm1", "algorithm1_reset", "surface")


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

    def start_point(self) -> bool:
        """Hook: move the tensors to where the ascent gradient is taken, if that is not
        ``p`` itself (a carried-over ``z``); True when they moved."""
        return False

    def state_dict(self) -> dict[str, Any]:
        """What must survive a resume (a carried-over ``z``)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    @torch.no_grad()
    def climb(self, regrad: Callable[[], None] | None = None) -> None:
        """``p <- p + z`` from the gradients currently in ``p.grad``.

        When the ascent gradient belongs at another point (:meth:`start_point`), ``regrad``
        recomputes ``.grad`` there; it is skipped when the fingerprint proves the gradient
        there equal to the one already held.
        """
        if self._saved is not None:
            raise RuntimeError("climb() called twice without restore()")
        self._saved = [p.detach().clone() for p in self.params]
        before = self.fingerprint() if self.fingerprint is not None else None
        self.last_norms = []
        if regrad is not None and self.start_point():
            same = before is not None and _equal(before, self.fingerprint())  # type: ignore[misc]
            if not same:
                for p in self.params:
                    p.grad = None
                with torch.enable_grad():
                    regrad()
            for p, saved in zip(self.params, self._saved, strict=True):
                p.copy_(saved)
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
        self.unchanged = before is not None and _equal(before, self.fingerprint())  # type: ignore[misc]

    @torch.no_grad()
    def restore(self) -> None:
        """Put the saved tensors back exactly."""
        if self._saved is None:
            raise RuntimeError("restore() called before climb()")
        for p, saved in zip(self.params, self._saved, strict=True):
            p.copy_(saved)
        self._saved = None


class LayerwisePerturbation(Perturbation):
    """Layer ``l`` within ``||z_l|| <= gamma * ||reference(l)||``, by ``projection`` (see the
    module docstring); ``eta`` is the ascent step of the ``algorithm1`` projections."""

    def __init__(
        self,
        params: Sequence[nn.Parameter],
        gamma: float,
        reference: Callable[[int], Tensor],
        support: Support = _everywhere,
        fingerprint: Callable[[], list[Tensor]] | None = None,
        projection: str = "surface",
        eta: float = 0.0,
    ) -> None:
        super().__init__(params, support, fingerprint)
        if projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {', '.join(PROJECTIONS)}, got {projection!r}")
        self.gamma = gamma
        self.reference = reference
        self.projection = projection
        self.eta = eta
        self.carry = projection == "algorithm1"
        self.z: list[Tensor | None] = [None] * len(self.params)  # carried over (algorithm1)
        self._scale: Tensor | None = None  # eta / ||g|| over all layers

    def _supported(self, i: int, t: Tensor) -> Tensor:
        support = self.support(i)
        return t if support is None else t * support

    def start_point(self) -> bool:
        moved = False
        for i, (p, z) in enumerate(zip(self.params, self.z, strict=True)):
            if z is not None:
                p.add_(self._supported(i, z))
                moved = True
        return moved

    def before_climb(self) -> None:
        if self.projection == "surface":
            return
        squares = [
            self._supported(i, p.grad).square().sum() for i, p in enumerate(self.params) if p.grad is not None
        ]
        total = torch.stack(squares).sum().sqrt() if squares else None
        self._scale = None if total is None or not bool(total > 0) else self.eta / total

    def step(self, i: int, p: Tensor, g: Tensor) -> Tensor | None:
        bound = self.gamma * self.reference(i).norm()
        if self.projection == "surface":
            g_norm = g.norm()
            return None if g_norm == 0 else (bound / g_norm) * g
        if self._scale is None:
            return None
        z = self._scale * g
        previous = self.z[i]
        if self.carry and previous is not None:
            z = z + self._supported(i, previous)
        norm = z.norm()
        z = z * torch.where(norm > bound, bound / norm.clamp_min(torch.finfo(z.dtype).tiny), 1.0)
        if self.carry:
            self.z[i] = z.detach().clone()
        return z

    def state_dict(self) -> dict[str, Any]:
        if not self.carry:
            return {}
        return {"z": [None if z is None else z.detach().cpu().clone() for z in self.z]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("z")
        if saved is None:
            return
        self.z = [None if z is None else z.to(p.device) for z, p in zip(saved, self.params, strict=True)]


def _equal(a: list[Tensor], b: list[Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
