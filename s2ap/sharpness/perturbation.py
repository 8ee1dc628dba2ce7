"""The SAM-shaped perturbation every sharpness-aware step in the tool is built on.

The shape is SAM's optimizer wrapper (Foret et al., 2021), two verbs: with the gradient ``g``
at the current point in each parameter's ``.grad``, :meth:`Perturbation.climb` saves the
tensors and moves each ``p_l`` to ``p_l + z_l``; the caller computes the gradient at the
perturbed point; :meth:`Perturbation.restore` copies the saved tensors back bit for bit; the
base optimizer then steps with that gradient. Subclasses only say what ``z_l`` is
(:meth:`Perturbation.ascent`):

* :class:`LayerwisePerturbation` bounds each layer by ``gamma * ||r_l||``, with ``r_l`` the
  layer's reference tensor (its scores for S2AP, its kept weights for AWP, Algorithm 2),
  placed in that ball by a :mod:`~s2ap.sharpness.projection` (``s2ap.projection``).
* :class:`~s2ap.sharpness.weights.AdaptiveWeightPerturbation` gives every neuron its own
  radius (AdaSAP).

Algorithm 1 as printed carries ``z`` over iterations and takes the ascent gradient at
``s + z_prev``, not at ``s``: before climbing, :meth:`Perturbation.to_ascent_point` moves
the tensors there and says whether the caller must compute the gradient again. Under the
straight-through estimator that gradient equals the one at ``s`` whenever ``z_prev`` changes
no mask entry and no score sign (the ``fingerprint``), so the extra pass is skipped then.

``ascent="previous"`` (``s2ap.ascent``) is the cheap variant: line 6's ascent direction is the
gradient the previous iteration's update used (the one at ``s + z`` a step earlier), kept at
:meth:`Perturbation.restore`, so no pass is spent on the ascent. ``z`` is then known before the
step's first pass (:meth:`LayerwisePerturbation.plan_ascent`): the pass at ``s`` computes only
the loss, and one forward/backward at ``s + z`` gives the update's gradient (or, where ``s + z``
has the fingerprint of ``s``, the pass at ``s`` gives it and is the only one). The first
iteration with nothing kept takes a fresh step.

The paper's Algorithm 1 steps at ``s + z`` and subtracts ``z`` afterwards; for SGD without
weight decay the two orders give the same update. Restoring first (as SAM does) means the
base optimizer's weight decay and momentum see the unperturbed scores, and the removal is
exact rather than ``(s + z) - z`` in floating point.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from s2ap.sharpness.projection import DEFAULT_PROJECTION, PROJECTIONS, Projection, make_projection

Support = Callable[[int], Tensor | None]
ASCENTS = ("fresh", "previous")
__all__ = ["ASCENTS", "PROJECTIONS", "LayerwisePerturbation", "Perturbation", "Support"]


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
        self._norms: list[Tensor] = []  # this climb's ||z_l||, on the device
        self.moved = False  # this step's ascent gradient was taken away from p (at p + z_prev)
        self._saved: list[Tensor] | None = None
        self._held: list[Tensor] | None = None  # the fingerprint where the gradient in .grad is
        self._away = False  # moved to the ascent point, not yet climbed
        self._pending: list[Tensor | None] | None = None  # this step's z, formed before its first pass

    @property
    def last_norms(self) -> list[float]:
        """The last climb's ``||z_l||`` per layer (reads the device: for tests and reports)."""
        return [float(n) for n in self._norms]

    def norm(self) -> Tensor | None:
        """The last climb's ``||z||`` over all layers, a 0-d float64 tensor on the device
        (None before any climb); the training loop sums these and reads them once per epoch."""
        if not self._norms:
            return None
        return torch.stack([n.detach().double() for n in self._norms]).square().sum().sqrt()

    def begin(self) -> None:
        """Called when an epoch starts using this perturbation (before its first batch)."""

    def ascent(self) -> Iterator[Tensor | None]:
        """Yields ``z_l`` for each layer in turn from the gradients in ``.grad`` (None leaves
        the layer where it is); layer ``l`` moves before ``z_{l+1}`` is asked for."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """What must survive a resume (a carried-over ``z``)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def gradient(self, i: int) -> Tensor | None:
        """Layer ``i``'s gradient where it may move (None: it has none)."""
        g = self.params[i].grad
        support = self.support(i)
        return g if g is None or support is None else g * support

    def plan_ascent(self) -> bool:
        """Whether this step's ascent gradient is taken away from ``p`` (see
        :meth:`to_ascent_point`). Asked before the step's first pass: when True, the gradient
        at ``p`` would be overwritten unused, so that pass need only compute the loss."""
        return False

    @torch.no_grad()
    def to_ascent_point(self) -> bool:
        """Move to where the ascent gradient is taken, when that is not ``p`` itself (a
        carried-over ``z``). True: the tensors moved and their gradients were dropped, so
        the caller computes the gradient there before :meth:`climb`."""
        return False

    @torch.no_grad()
    def climb(self) -> None:
        """``p <- p + z`` from the gradients currently in ``p.grad``."""
        if self._away:
            self._away = False
            self._put_back()
        else:
            self._save()
        norms = []
        zs, self._pending = self._pending or self.ascent(), None
        for p, z in zip(self.params, zs, strict=True):
            if z is None:
                norms.append(torch.zeros((), device=p.device))
                continue
            p.add_(z)
            norms.append(z.norm())
        self._norms = norms  # read per epoch, not per step
        # Unchanged: p + z has the fingerprint of the point whose gradient .grad holds (p, or
        # p + z_prev after to_ascent_point), so that gradient is the one at p + z.
        self.unchanged = self._held is not None and _equal(self._held, self.fingerprint())  # type: ignore[misc]

    @torch.no_grad()
    def restore(self) -> None:
        """Put the saved tensors back exactly."""
        if self._saved is None:
            raise RuntimeError("restore() called before climb()")
        self._put_back()
        self._saved, self._held, self._away = None, None, False

    def _save(self, fingerprint: list[Tensor] | None = None) -> None:
        if self._saved is not None:
            raise RuntimeError("climb() called twice without restore()")
        self._saved = [p.detach().clone() for p in self.params]
        if fingerprint is None and self.fingerprint is not None:
            fingerprint = self.fingerprint()
        self._held = fingerprint
        self.moved = False

    def _put_back(self) -> None:
        for p, saved in zip(self.params, self._saved, strict=True):  # type: ignore[arg-type]
            p.copy_(saved)


class LayerwisePerturbation(Perturbation):
    """Layer ``l`` within ``||z_l|| <= gamma * ||reference(l)||``, placed by ``projection``
    (:mod:`~s2ap.sharpness.projection`); ``eta`` is the ascent step of the Algorithm 1 ones."""

    def __init__(
        self,
        params: Sequence[nn.Parameter],
        gamma: float,
        reference: Callable[[int], Tensor],
        support: Support = _everywhere,
        fingerprint: Callable[[], list[Tensor]] | None = None,
        projection: str = DEFAULT_PROJECTION,
        eta: float = 0.0,
        ascent: str = "fresh",
    ) -> None:
        super().__init__(params, support, fingerprint)
        if ascent not in ASCENTS:
            raise ValueError(f"ascent must be one of {', '.join(ASCENTS)}, got {ascent!r}")
        self.gamma = gamma
        self.ascent_from = ascent
        # ``previous``: the gradient the last update used, per tensor (None: none kept yet).
        self.kept: list[Tensor | None] | None = None
        self.reference = reference
        self.projection: Projection = make_projection(projection, eta, len(self.params))
        # plan_ascent's answer for this step: the fingerprints at p and p + z_prev, and
        # whether the ascent gradient is taken at p + z_prev.
        self._plan: tuple[list[Tensor] | None, list[Tensor] | None, bool] | None = None
        self.random_seed: int | None = None  # set: the random-direction control (randomize)
        self._rng: torch.Generator | None = None

    def randomize(self, seed: int) -> None:
        """The random-direction control (``s2ap.direction: random``): every ``z_l`` the
        projection forms is turned to a Gaussian direction drawn from ``seed`` (within the
        layer's support), its norm kept. The same ball, the same projection, the same per-layer
        norms as the gradient's direction would get, and no gradient information in the
        direction. The generator's state is part of :meth:`state_dict`, so a resume is exact."""
        self.random_seed, self._rng = seed, None

    def _generator(self) -> torch.Generator:
        if self._rng is None:
            self._rng = torch.Generator(device=self.params[0].device)
            self._rng.manual_seed(self.random_seed or 0)
        return self._rng

    def _random_like(self, i: int, z: Tensor) -> Tensor:
        """``z``'s norm in a seeded Gaussian direction (zero where the layer may not move)."""
        r = self._supported(
            i, torch.randn(z.shape, generator=self._generator(), device=z.device, dtype=z.dtype)
        )
        r_norm = r.norm()
        return z if r_norm == 0 else r * (z.norm() / r_norm)

    @property
    def eta(self) -> float:
        return self.projection.eta

    @property
    def z(self) -> list[Tensor | None]:
        """The carried-over perturbation (``algorithm1``; all None otherwise)."""
        return self.projection.carried or [None] * len(self.params)

    def _supported(self, i: int, t: Tensor) -> Tensor:
        support = self.support(i)
        return t if support is None else t * support

    @torch.no_grad()
    def plan_ascent(self) -> bool:
        if self.ascent_from == "previous" and self.kept is not None:
            return self._plan_from_kept()
        # Where a carried z_prev changes no mask entry and no score sign, the gradient at
        # s + z_prev is the one at s (the fingerprint); else the ascent needs its own pass.
        carried = self.projection.carried
        self._plan = (None, None, False)
        if carried is None or all(z is None for z in carried):
            return False
        saved = [p.detach().clone() for p in self.params]
        here = self.fingerprint() if self.fingerprint is not None else None
        self._move_by(carried)
        there = self.fingerprint() if self.fingerprint is not None else None
        for p, s in zip(self.params, saved, strict=True):
            p.copy_(s)
        away = here is None or there is None or not _equal(here, there)
        self._plan = (here, there, away)
        return away

    def _plan_from_kept(self) -> bool:
        # ``previous``: z from the kept gradient, formed now. The pass at p is forward only
        # unless p + z has p's fingerprint, when p's gradient is the one at p + z.
        zs = list(self.ascent())
        saved = [p.detach().clone() for p in self.params]
        here = self.fingerprint() if self.fingerprint is not None else None
        self._move_by(zs, supported=False)
        there = self.fingerprint() if self.fingerprint is not None else None
        for p, s in zip(self.params, saved, strict=True):
            p.copy_(s)
        away = here is None or there is None or not _equal(here, there)
        self._plan = (None if away else here, None, False)
        self._pending = zs
        return away

    @torch.no_grad()
    def to_ascent_point(self) -> bool:
        if self._plan is None:
            self.plan_ascent()
        here, there, away = self._plan  # type: ignore[misc]
        self._plan = None
        self._save(here)
        self._away = True  # saved already: climb from here
        if not away:
            return False
        self._move_by(self.projection.carried)  # type: ignore[arg-type]
        for p in self.params:
            p.grad = None
        self._held, self.moved = there, True
        return True

    def _move_by(self, carried: list[Tensor | None], supported: bool = True) -> None:
        for i, (p, z) in enumerate(zip(self.params, carried, strict=True)):
            if z is not None:
                p.add_(self._supported(i, z) if supported else z)

    def ascent_gradients(self) -> list[Tensor | None]:
        """Each layer's ascent gradient where it may move: the one in ``.grad`` (``fresh``),
        or the one the last update used (``previous``, once there is one)."""
        if self.ascent_from == "previous" and self.kept is not None:
            return [None if g is None else self._supported(i, g) for i, g in enumerate(self.kept)]
        return [self.gradient(i) for i in range(len(self.params))]

    @torch.no_grad()
    def restore(self) -> None:
        if self.ascent_from == "previous" and self._saved is not None:
            # The gradient this step's update uses: the next step's ascent direction.
            self.kept = self._global(
                [None if p.grad is None else p.grad.detach().clone() for p in self.params]
            )
        super().restore()

    def _global(self, grads: list[Tensor | None]) -> list[Tensor | None]:
        """``grads`` as every rank has them (they are already, where DDP averaged them)."""
        return grads

    def ascent(self) -> Iterator[Tensor | None]:
        grads = self.ascent_gradients()
        self.projection.prepare(grads)
        carried = self.projection.carried
        for i, g in enumerate(grads):
            if g is None:
                yield None
                continue
            bound = self.gamma * self.reference(i).norm()
            previous = None if carried is None else carried[i]
            start = None if previous is None else self._supported(i, previous)
            z = self.projection.step(g, bound, start)
            if z is not None and self.random_seed is not None:
                z = self._random_like(i, z)
            if carried is not None and z is not None:
                carried[i] = self.projection.carry(previous, z).detach().clone()
            yield z

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.projection.carried is not None:
            out["z"] = _to_cpu(self.projection.carried)
        if self.kept is not None:
            out["kept_grad"] = _to_cpu(self.kept)
        if self._rng is not None:
            out["rng"] = self._rng.get_state()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.random_seed is not None and state.get("rng") is not None:
            self._generator().set_state(state["rng"])
        saved, kept = state.get("z"), state.get("kept_grad")
        if saved is not None and self.projection.carried is not None:
            self.projection.carried[:] = self._on_device(saved)
        if kept is not None and self.ascent_from == "previous":
            self.kept = self._on_device(kept)

    def _on_device(self, tensors: list[Tensor | None]) -> list[Tensor | None]:
        return [None if t is None else t.to(p.device) for t, p in zip(tensors, self.params, strict=True)]


def _to_cpu(tensors: list[Tensor | None]) -> list[Tensor | None]:
    return [None if t is None else t.detach().cpu().clone() for t in tensors]


def _equal(a: list[Tensor], b: list[Tensor]) -> bool:
    """Whether two fingerprints are equal entry for entry: one reduction on the device and
    one read, however many tensors they hold."""
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b, strict=True)):
        return False
    if not a:
        return True
    differs = torch.stack([torch.ne(x, y).any() for x, y in zip(a, b, strict=True)]).any()
    return not bool(differs)
