"""Where each layer's perturbation sits in its ball ``||z_l|| <= bound_l`` (``s2ap.projection``).

Three small classes, one per choice; :class:`~s2ap.sharpness.perturbation.LayerwisePerturbation`
hands each layer's (supported) gradient ``g_l`` and bound to :meth:`Projection.step`:

* :class:`Surface`: every layer on the surface of its ball, ``z_l = bound_l * g_l / ||g_l||``
  (AWP's reference code rescales each layer's ascent direction to its bound the same way);
* :class:`Algorithm1Reset`: Algorithm 1's step (lines 6-9; Algorithm 2, lines 5-8) from
  ``z = 0`` at every iteration: ``z = eta * g / ||g||`` with the norm over *all* layers, then
  a layer past its bound is scaled back onto it and every other layer is left as it is;
* :class:`Algorithm1`, as printed: the same step, but ``z`` starts at 0 once and is carried
  over, ``z <- z + eta * g / ||g||``, with ``g`` the gradient at ``s + z_prev``.

``Surface`` equals ``Algorithm1Reset`` only in the layers that the step of size ``eta``
pushes past their bound; the others get ``eta * ||g_l|| / ||g||``, less than the bound.
"""

from __future__ import annotations

import torch
from torch import Tensor


class Projection:
    """One way to place ``z_l``; ``carried`` holds the ``z`` kept across iterations, if any."""

    name = ""
    eta = 0.0
    carried: list[Tensor | None] | None = None

    def prepare(self, grads: list[Tensor | None]) -> None:
        """Sees every layer's gradient before the first :meth:`step` of a climb."""

    def step(self, g: Tensor, bound: Tensor, start: Tensor | None) -> Tensor | None:
        """``z_l`` from the layer's gradient, its bound and its carried-over ``z`` (None:
        the layer stays where it is)."""
        raise NotImplementedError

    def carry(self, previous: Tensor | None, z: Tensor) -> Tensor:
        """What is carried over after a step that returned ``z`` (``previous``: the carried
        ``z`` before it)."""
        return z


class Surface(Projection):
    name = "surface"

    def step(self, g: Tensor, bound: Tensor, start: Tensor | None) -> Tensor | None:
        # On the device, no read: a zero gradient gives z = 0 (the layer stays where it is).
        g_norm = g.norm()
        return torch.where(g_norm > 0, bound / g_norm, 0.0) * g


class Algorithm1Reset(Projection):
    name = "algorithm1_reset"

    def __init__(self, eta: float) -> None:
        self.eta = eta
        self._scale: Tensor | None = None  # eta / ||g|| over all layers
        self._moves: Tensor | None = None  # ||g|| > 0: a zero gradient moves no layer

    def prepare(self, grads: list[Tensor | None]) -> None:
        # On the device, no read: with ||g|| = 0 every layer stays and the carried z is kept.
        squares = [g.square().sum() for g in grads if g is not None]
        if not squares:
            self._scale = self._moves = None
            return
        total = torch.stack(squares).sum().sqrt()
        self._moves = total > 0
        self._scale = torch.where(self._moves, self.eta / total, 0.0)

    def step(self, g: Tensor, bound: Tensor, start: Tensor | None) -> Tensor | None:
        if self._scale is None:
            return None
        z = self._scale * g
        if start is not None:
            z = z + start
        # Lines 7-9: back onto the ball only when past it.
        norm = z.norm()
        z = z * torch.where(norm > bound, bound / norm.clamp_min(torch.finfo(z.dtype).tiny), 1.0)
        return torch.where(self._moves, z, 0.0)  # type: ignore[arg-type]

    def carry(self, previous: Tensor | None, z: Tensor) -> Tensor:
        if previous is None or self._moves is None:
            return z
        return torch.where(self._moves, z, previous)


class Algorithm1(Algorithm1Reset):
    name = "algorithm1"

    def __init__(self, eta: float, layers: int) -> None:
        super().__init__(eta)
        self.carried = [None] * layers  # line 1: z <- 0, once


PROJECTIONS = ("algorithm1", "algorithm1_reset", "surface")
# The library's default is the config's (``s2ap.projection``): Algorithm 1 as printed.
DEFAULT_PROJECTION = "algorithm1"


def make_projection(name: str, eta: float, layers: int) -> Projection:
    """The projection called ``name`` (``eta``: the ascent step of the Algorithm 1 ones)."""
    if name == "surface":
        return Surface()
    if name in PROJECTIONS and not eta > 0:
        raise ValueError(
            f"projection {name!r} needs the ascent step eta > 0 (Algorithm 1 uses the phase's "
            f"learning rate), got eta={eta!r}; or use projection='surface', which needs none"
        )
    if name == "algorithm1_reset":
        return Algorithm1Reset(eta)
    if name == "algorithm1":
        return Algorithm1(eta, layers)
    raise ValueError(f"projection must be one of {', '.join(PROJECTIONS)}, got {name!r}")
