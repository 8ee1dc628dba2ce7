"""Score-space sharpness and mask-stability measures (paper Sect. 4.3 and Appendix C).

* :func:`hamming` - mask stability, Eq. 13: the fraction of mask bits that differ from the
  first mask, over all pruned layers together.
* :func:`lambda_max` - the largest eigenvalue of the robust loss' Hessian with respect to
  the importance scores, by power iteration on Hessian-vector products (Eq. 10-11). The
  Hessian itself is never formed: a ResNet18 has 11M scores, its Hessian would not fit.
* :func:`loss_difference` - the reparameterisation-invariant loss difference of Eq. 12,
  maximised by an APGD-style ascent in score space (Croce & Hein, 2020).

Everything here is plain torch; the callers own data, models and adversarial inputs, and
pass the loss as a closure so that the same code measures any model or objective.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

HVP = Callable[[list[Tensor]], Sequence[Tensor]]


# --------------------------------------------------------------------------- mask stability


def hamming(m0: Mapping[str, Tensor], mt: Mapping[str, Tensor]) -> float:
    """Normalised Hamming distance ``||m0 xor mt||_1 / |m0|`` over all layers together (Eq. 13).

    Entries are read as bits (non-zero = kept). Layers are pooled rather than averaged so a
    large layer weighs in proportion to its size, as in the paper's single ``|m0|``. A
    layer-set or shape mismatch raises: silently comparing different models would give a
    plausible-looking but meaningless number.
    """
    if set(m0) != set(mt):
        only0 = sorted(set(m0) - set(mt))
        only_t = sorted(set(mt) - set(m0))
        raise ValueError(
            "hamming: the two masks cover different layers "
            f"(only in m0: {', '.join(only0) or '-'}; only in mt: {', '.join(only_t) or '-'})"
        )
    differing = 0
    total = 0
    for name, a in m0.items():
        b = mt[name]
        if a.shape != b.shape:
            raise ValueError(
                f"hamming: layer {name!r} has shape {tuple(a.shape)} in m0 but {tuple(b.shape)} in mt"
            )
        differing += int(torch.count_nonzero((a != 0) ^ (b.to(a.device) != 0)))
        total += a.numel()
    if total == 0:
        raise ValueError("hamming: the masks have no entries")
    return differing / total


# --------------------------------------------------------------------------- largest eigenvalue


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def _norm(a: Sequence[Tensor]) -> Tensor:
    return torch.sqrt(_dot(a, a))


def power_iteration(
    hvp: HVP,
    like: Sequence[Tensor],
    iters: int = 10,
    generator: torch.Generator | None = None,
) -> float:
    """Largest-magnitude eigenvalue of a symmetric operator given only its products ``hvp(v)``.

    ``like`` gives the shapes, dtypes and devices of the blocks of ``v`` (a model's
    parameters are many tensors; the vector is their concatenation, kept as a list to
    avoid copies). Starts from a random unit vector (Eq. 10) and returns the Rayleigh
    quotient ``<v, Hv>`` after ``iters`` steps (Eq. 11), which keeps the eigenvalue's sign.
    Works for any operator, so tests can check it on a plain matrix.
    """
    if iters < 1:
        raise ValueError(f"power_iteration: iters must be >= 1, got {iters}")
    if not like:
        raise ValueError("power_iteration: no tensors to iterate over")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    v = [
        torch.randn(t.shape, generator=generator, device=gen_device, dtype=t.dtype).to(t.device) for t in like
    ]
    norm = _norm(v)
    v = [x / norm for x in v]
    for _ in range(iters):
        hv = [h.detach() for h in hvp(v)]
        norm = _norm(hv)
        if float(norm) == 0.0:
            # The operator annihilates v: on a zero Hessian every eigenvalue is 0.
            return 0.0
        v = [h / norm for h in hv]
    hv = [h.detach() for h in hvp(v)]
    return float(_dot(v, hv))


def lambda_max(
    loss_fn: Callable[[], Tensor],
    params: Sequence[Tensor],
    iters: int = 10,
    generator: torch.Generator | None = None,
) -> float:
    """Largest Hessian eigenvalue of ``loss_fn()`` with respect to ``params`` (Eq. 10-11).

    One forward and one first-order backward build the gradient graph
    (``create_graph=True``); every power-iteration step is then one double-backward
    Hessian-vector product on that graph. With score-masked layers the straight-through
    term ``|s| - |s|.detach()`` makes the loss twice differentiable in the scores, so
    ``params=score_parameters(model)`` measures the score-space sharpness of the paper.
    Parameter ``.grad`` fields are not touched. The caller chooses train/eval mode (use
    eval so batch-norm statistics do not move while measuring).
    """
    params = list(params)
    if not params:
        raise ValueError("lambda_max: no parameters given")
    for i, p in enumerate(params):
        if not p.requires_grad:
            raise ValueError(f"lambda_max: params[{i}] does not require grad")
    with torch.enable_grad():
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    # A parameter the loss ignores, or one it depends on only linearly, has a zero
    # Hessian block; autograd cannot differentiate such a gradient again, so drop it.
    live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
    if not live:
        logger.debug("lambda_max: the gradient does not depend on the parameters; Hessian is zero")
        return 0.0
    live_grads = [grads[i] for i in live]
    live_params = [params[i] for i in live]

    def hvp(v: list[Tensor]) -> list[Tensor]:
        with torch.enable_grad():
            out = torch.autograd.grad(
                live_grads, live_params, grad_outputs=v, retain_graph=True, allow_unused=True
            )
        return [torch.zeros_like(p) if h is None else h for h, p in zip(out, live_params, strict=True)]

    value = power_iteration(hvp, live_params, iters=iters, generator=generator)
    if not math.isfinite(value):
        logger.warning("lambda_max: power iteration returned %r", value)
    return value


# --------------------------------------------------------------------------- loss difference


def _apgd_checkpoints(steps: int) -> list[int]:
    """APGD's step-size checkpoints w_j = ceil(p_j * N), p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (Croce & Hein, 2020, Sect. 3.1)."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    points = sorted({math.ceil(q * steps) for q in p if q <= 1.0})
    return [w for w in points if 0 < w <= steps]


def loss_difference(
    loss_fn: Callable[[], Tensor],
    scores: Sequence[nn.Parameter],
    rho: float,
    steps: int = 20,
    *,
    random_start: bool = False,
    generator: torch.Generator | None = None,
    callback: Callable[[list[Tensor]], None] | None = None,
) -> tuple[float, float]:
    """Score-space sharpness by loss difference (Eq. 12); returns ``(reference, increase)``.

    Maximises ``L(s + nu) - L(s)`` over ``|nu_i| <= rho * |s_i|`` (``c = |s|`` makes the
    measure invariant to rescaling the scores, the problem Dinh et al. 2017 raise for
    Hessian measures). The ascent is APGD (Croce & Hein, 2020) in the box: sign-gradient
    steps scaled per entry by the box width, projection every step, momentum 0.75, and the
    step size halved - restarting from the best point - at checkpoints where fewer than 75%
    of the steps since the last one improved the loss, or where neither the step size nor
    the best loss changed. Entries with ``s_i = 0`` have a zero-width box and stay put.

    ``loss_fn`` must evaluate the robust loss at the *current* scores on fixed adversarial
    inputs (crafted once by the caller), otherwise the difference mixes in attack noise.
    The scores are modified in place while searching and restored bit-for-bit afterwards,
    also on error. ``callback`` sees every evaluated ``nu`` (tests check the box with it).
    The increase is the best over all evaluated points including ``nu = 0``, so it is >= 0.
    """
    scores = list(scores)
    if not scores:
        raise ValueError("loss_difference: no score tensors given")
    if rho < 0:
        raise ValueError(f"loss_difference: rho must be >= 0, got {rho}")
    for i, s in enumerate(scores):
        if not s.requires_grad:
            raise ValueError(f"loss_difference: scores[{i}] does not require grad")

    original = [s.detach().clone() for s in scores]
    width = [rho * s.abs() for s in original]  # the box half-width c * rho, per entry

    def project(nu: list[Tensor]) -> list[Tensor]:
        return [torch.maximum(torch.minimum(n, w), -w) for n, w in zip(nu, width, strict=True)]

    def evaluate(nu: list[Tensor]) -> tuple[float, list[Tensor]]:
        with torch.no_grad():
            for s, s0, n in zip(scores, original, nu, strict=True):
                s.copy_(s0 + n)
        if callback is not None:
            callback([n.clone() for n in nu])
        with torch.enable_grad():
            loss = loss_fn()
            grads = torch.autograd.grad(loss, scores, allow_unused=True)
        grads = [torch.zeros_like(s) if g is None else g.detach() for g, s in zip(grads, scores, strict=True)]
        return float(loss.detach()), grads

    try:
        nu = [torch.zeros_like(w) for w in width]
        if rho == 0 or steps < 1:
            with torch.no_grad():
                return float(loss_fn().detach()), 0.0
        reference, grad = evaluate(nu)
        f_cur, grad_zero = reference, grad
        if random_start:
            gen_device = generator.device if generator is not None else torch.device("cpu")
            nu = [
                (
                    torch.rand(w.shape, generator=generator, device=gen_device, dtype=w.dtype).to(w.device)
                    * 2
                    - 1
                )
                * w
                for w in width
            ]
            f_cur, grad = evaluate(nu)

        checkpoints = set(_apgd_checkpoints(steps))
        alpha = 0.75  # momentum
        eta = 2.0  # step size in units of the box half-width (APGD's 2 * eps)
        # nu = 0 is feasible, so the best point is at least the reference.
        if f_cur >= reference:
            f_best, nu_best, grad_best = f_cur, [n.clone() for n in nu], grad
        else:
            f_best, nu_best, grad_best = reference, [torch.zeros_like(w) for w in width], grad_zero
        nu_prev = [n.clone() for n in nu]
        successes = 0
        last_check = 0
        eta_at_check = eta
        f_best_at_check = f_best

        for k in range(steps):
            with torch.no_grad():
                z = project([n + eta * w * g.sign() for n, w, g in zip(nu, width, grad, strict=True)])
                if k == 0:
                    nu_next = z
                else:
                    nu_next = project(
                        [
                            n + alpha * (zz - n) + (1 - alpha) * (n - p)
                            for n, zz, p in zip(nu, z, nu_prev, strict=True)
                        ]
                    )
            f_next, grad_next = evaluate(nu_next)
            if f_next > f_cur:
                successes += 1
            nu_prev, nu, f_cur, grad = nu, nu_next, f_next, grad_next
            if f_cur > f_best:
                f_best, nu_best, grad_best = f_cur, [n.clone() for n in nu], grad

            step = k + 1
            if step in checkpoints and step < steps:
                span = step - last_check
                too_few = successes < 0.75 * span
                stalled = eta_at_check == eta and f_best_at_check == f_best
                eta_at_check, f_best_at_check = eta, f_best
                if too_few or stalled:
                    eta /= 2.0
                    # Restart from the best point; momentum starts afresh there.
                    nu = [n.clone() for n in nu_best]
                    nu_prev = [n.clone() for n in nu_best]
                    grad, f_cur = grad_best, f_best
                successes = 0
                last_check = step

        increase = max(f_best - reference, 0.0)
        logger.debug("loss_difference: rho=%g reference=%.6f increase=%.6f", rho, reference, increase)
        return reference, increase
    finally:
        with torch.no_grad():
            for s, s0 in zip(scores, original, strict=True):
                s.copy_(s0)


__all__ = ["hamming", "lambda_max", "loss_difference", "power_iteration"]
