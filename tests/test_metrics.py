"""Sharpness and stability measures: exact values where they exist, invariants elsewhere."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s2ap.layers import (
    MaskedLinear,
    init_scores,
    masks,
    score_parameters,
    set_keep,
    set_mode,
)
from s2ap.metrics import hamming, lambda_max, loss_difference, power_iteration

# --------------------------------------------------------------------------- hamming


def test_hamming_exact_on_hand_made_masks() -> None:
    m0 = {"a": torch.tensor([[1.0, 0.0], [1.0, 1.0]]), "b": torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0])}
    mt = {"a": torch.tensor([[0.0, 0.0], [1.0, 1.0]]), "b": torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 1.0])}
    # 1 differing bit in a, 2 in b, 10 entries in all: layers are pooled, not averaged.
    assert hamming(m0, mt) == pytest.approx(3 / 10, abs=0)
    assert hamming(m0, m0) == 0.0
    flipped = {k: 1 - v for k, v in m0.items()}
    assert hamming(m0, flipped) == 1.0


def test_hamming_accepts_bool_masks_and_is_symmetric() -> None:
    m0 = {"w": torch.tensor([True, False, True, False])}
    mt = {"w": torch.tensor([True, True, False, False])}
    assert hamming(m0, mt) == 0.5
    assert hamming(mt, m0) == 0.5


def test_hamming_rejects_mismatched_layers_and_shapes() -> None:
    with pytest.raises(ValueError, match="different layers.*only in m0: b"):
        hamming({"a": torch.ones(2), "b": torch.ones(2)}, {"a": torch.ones(2)})
    with pytest.raises(ValueError, match="layer 'a' has shape"):
        hamming({"a": torch.ones(2, 2)}, {"a": torch.ones(4)})


# --------------------------------------------------------------------------- eigenvalues


def _spd(n: int, generator: torch.Generator) -> Tensor:
    """A symmetric matrix with a clear gap between its two largest eigenvalues."""
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    eigenvalues = torch.tensor([7.0, 3.0, 2.0, 1.0, 0.5, -1.0], dtype=torch.float64)[:n]
    return q @ torch.diag(eigenvalues) @ q.T


def test_power_iteration_recovers_largest_eigenvalue_of_a_matrix() -> None:
    g = torch.Generator().manual_seed(1)
    a = _spd(6, g)
    expected = float(torch.linalg.eigvalsh(a).max())
    got = power_iteration(lambda v: [a @ v[0]], [torch.zeros(6, dtype=torch.float64)], iters=60, generator=g)
    assert got == pytest.approx(expected, rel=1e-6)


def test_lambda_max_on_quadratic_matches_eigvalsh() -> None:
    g = torch.Generator().manual_seed(2)
    a = _spd(6, g)
    expected = float(torch.linalg.eigvalsh(a).max())
    # Split the variable over two tensors to exercise the multi-block vector.
    x1 = torch.randn(2, dtype=torch.float64, requires_grad=True)
    x2 = torch.randn(4, dtype=torch.float64, requires_grad=True)

    def loss() -> Tensor:
        x = torch.cat([x1, x2])
        return 0.5 * x @ a @ x

    got = lambda_max(loss, [x1, x2], iters=60, generator=g)
    assert got == pytest.approx(expected, rel=1e-6)
    assert x1.grad is None and x2.grad is None  # HVPs never touch .grad


def test_lambda_max_zero_for_linear_loss() -> None:
    x = torch.randn(3, requires_grad=True)
    assert lambda_max(lambda: (2.0 * x).sum(), [x]) == 0.0


def _scored_model(keep: float = 0.5) -> nn.Module:
    model = nn.Sequential(MaskedLinear(6, 16), nn.Tanh(), MaskedLinear(16, 3))
    init_scores(model, "scaled")
    set_keep(model, keep)
    set_mode(model, "scores")
    return model


def _data(n: int = 32) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_lambda_max_on_scored_model_is_finite_and_nonzero() -> None:
    model = _scored_model()
    x, y = _data()
    value = lambda_max(
        lambda: F.cross_entropy(model(x), y),
        score_parameters(model),
        iters=5,
        generator=torch.Generator().manual_seed(0),
    )
    assert math.isfinite(value)
    assert value != 0.0  # the straight-through term makes the score Hessian non-trivial
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------- loss difference


@pytest.mark.parametrize("random_start", [False, True])
def test_loss_difference_stays_in_box_and_restores_scores(random_start: bool) -> None:
    model = _scored_model()
    x, y = _data()
    scores = score_parameters(model)
    # A zero score has a zero-width box: it must never move.
    with torch.no_grad():
        scores[0][0, 0] = 0.0
    before = [s.detach().clone() for s in scores]
    mask_before = masks(model)
    rho = 0.05
    seen: list[list[Tensor]] = []

    ref, increase = loss_difference(
        lambda: F.cross_entropy(model(x), y),
        scores,
        rho=rho,
        steps=12,
        random_start=random_start,
        generator=torch.Generator().manual_seed(0),
        callback=seen.append,
    )

    assert len(seen) >= 13  # reference + every step
    for nu in seen:
        for n, s0 in zip(nu, before, strict=True):
            assert bool((n.abs() <= rho * s0.abs()).all())
        assert float(nu[0][0, 0]) == 0.0
    for s, s0 in zip(scores, before, strict=True):
        assert torch.equal(s.detach(), s0)  # bit-for-bit (NaN-free tensors)
        assert s.grad is None
    assert hamming(mask_before, masks(model)) == 0.0
    with torch.no_grad():
        assert ref == pytest.approx(float(F.cross_entropy(model(x), y)), abs=1e-7)
    assert increase >= 0.0
    assert math.isfinite(increase)


def test_loss_difference_finds_increase_and_grows_with_rho() -> None:
    model = _scored_model(keep=0.3)
    x, y = _data()
    scores = score_parameters(model)
    loss = lambda: F.cross_entropy(model(x), y)  # noqa: E731
    _, small = loss_difference(loss, scores, rho=0.01, steps=10)
    _, large = loss_difference(loss, scores, rho=0.5, steps=10)
    assert large > 0.0
    assert large >= small


def test_loss_difference_restores_scores_on_error() -> None:
    model = _scored_model()
    scores = score_parameters(model)
    before = [s.detach().clone() for s in scores]
    calls = {"n": 0}
    x, y = _data()

    def failing() -> Tensor:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return F.cross_entropy(model(x), y)

    with pytest.raises(RuntimeError, match="boom"):
        loss_difference(failing, scores, rho=0.1, steps=5)
    for s, s0 in zip(scores, before, strict=True):
        assert torch.equal(s.detach(), s0)
