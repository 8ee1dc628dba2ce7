"""Final evaluation: AutoAttack vs PGD ordering, gradient-masking flags, CIFAR-10-C layout."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from s2ap.attacks import PGD
from s2ap.config import AttackConfig, EvalConfig
from s2ap.evaluate import (
    autoattack_accuracy,
    check_gradient_masking,
    clean_accuracy,
    corruption_accuracy,
    evaluate,
    pgd_accuracy,
    zero_gradient_fraction,
)

EPS = 0.08
N_CLASSES = 4


def _quadrant_images(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """1x8x8 images in [0, 1]; the class is the brighter quadrant. Learnable in seconds,
    yet small-eps perturbations break some points, so robust accuracy is in (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, N_CLASSES, (n,), generator=g)
    x = 0.35 + 0.15 * torch.rand(n, 1, 8, 8, generator=g)
    contrast = 0.05 + 0.25 * torch.rand(n, generator=g)
    for i in range(n):
        r, c = divmod(int(y[i]), 2)
        x[i, 0, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += contrast[i]
    return x.clamp(0, 1), y


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, N_CLASSES))


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    x, y = _quadrant_images(512, seed=1)
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    xt, yt = _quadrant_images(48, seed=2)
    return model, xt, yt


def _loader(x: Tensor, y: Tensor, batch_size: int = 16) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def test_clean_and_pgd_accuracy_are_fractions_and_ordered(trained: tuple[nn.Module, Tensor, Tensor]) -> None:
    model, x, y = trained
    model.train()  # the functions must evaluate in eval mode and restore the caller's mode
    clean = clean_accuracy(model, _loader(x, y), "cpu")
    robust = pgd_accuracy(model, _loader(x, y), PGD(eps=EPS, step_size=EPS / 4, steps=10), "cpu")
    assert model.training
    assert 0.8 <= clean <= 1.0
    assert 0.0 <= robust <= clean


def test_autoattack_no_higher_than_pgd(trained: tuple[nn.Module, Tensor, Tensor]) -> None:
    model, x, y = trained
    n = x.shape[0]
    pgd = pgd_accuracy(model, _loader(x, y), PGD(eps=EPS, step_size=EPS / 4, steps=20), "cpu")
    # A fast subset for the test; the library default is the standard version.
    aa = autoattack_accuracy(
        model, x, y, EPS, "cpu", batch_size=64, version="custom", attacks=["apgd-ce", "apgd-t"]
    )
    assert 0.0 <= aa <= pgd + 1.0 / n
    assert aa < clean_accuracy(model, _loader(x, y), "cpu")  # the attack does something


def test_autoattack_standard_runs_with_few_classes(trained: tuple[nn.Module, Tensor, Tensor]) -> None:
    """Standard AA targets 9 classes; with 4 the library must fit the targets, not crash."""
    model, x, y = trained
    aa = autoattack_accuracy(model, x[:16], y[:16], EPS, "cpu", batch_size=16)
    assert 0.0 <= aa <= 1.0


class _StepModel(nn.Module):
    """Piecewise-constant logits: gradients are exactly zero everywhere (masked)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, N_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return torch.round(4 * self.linear(x.flatten(1)))


def test_zero_gradient_model_raises_masking_warning(caplog: pytest.LogCaptureFixture) -> None:
    x, y = _quadrant_images(32, seed=3)
    model = _StepModel()
    assert zero_gradient_fraction(model, x, y, "cpu") == 1.0
    cfg = EvalConfig(pgd_steps=2, autoattack=False)
    with caplog.at_level(logging.WARNING, logger="s2ap.evaluate"):
        result = evaluate(model, _loader(x, y), cfg, AttackConfig(eps=EPS, step_size=EPS / 4), "cpu")
    assert result["gradient_masking"] is True
    assert any(
        "GRADIENT MASKING" in r.getMessage() and "zero input gradient" in r.getMessage()
        for r in caplog.records
    )
    assert any("flags_doc" in r.getMessage() for r in caplog.records)  # points to the AA checks


def test_masking_check_flags_autoattack_above_pgd(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="s2ap.evaluate"):
        assert check_gradient_masking(pgd_acc=0.40, aa_acc=0.45) is True
    assert "AutoAttack accuracy 0.4500 exceeds PGD accuracy 0.4000" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="s2ap.evaluate"):
        assert (
            check_gradient_masking(clean_acc=0.9, pgd_acc=0.45, aa_acc=0.40, zero_grad_fraction=0.0) is False
        )
    assert caplog.text == ""


def test_evaluate_keys_without_autoattack(
    trained: tuple[nn.Module, Tensor, Tensor], caplog: pytest.LogCaptureFixture
) -> None:
    model, x, y = trained
    cfg = EvalConfig(pgd_steps=5, pgd_restarts=2, autoattack=False)
    with caplog.at_level(logging.WARNING, logger="s2ap.evaluate"):
        result = evaluate(model, _loader(x, y), cfg, AttackConfig(eps=EPS, step_size=EPS / 4), "cpu")
    accuracies = (
        "clean_acc",
        "pgd_acc",
        "aa_acc",
        "robust_acc",
        "clean_acc_full",
        "pgd_acc_full",
        "corruption_acc",
    )
    assert set(result) == {
        *accuracies,
        *(f"{k}_n" for k in accuracies),
        "robust_attack",
        "gradient_masking",
        "predictions",
    }
    assert result["aa_acc"] is None and result["corruption_acc"] is None
    points = result["predictions"]
    assert points["index"] == list(range(len(y))) and points["label"] == y.tolist() and points["aa"] is None
    assert sum(points["clean"]) == round(result["clean_acc"] * len(y))
    assert sum(points["pgd"]) == round(result["pgd_acc"] * len(y))
    assert result["robust_acc"] == result["pgd_acc"] and result["robust_attack"] == "pgd"
    # Without AutoAttack the headline is every test point.
    assert result["clean_acc_n"] == result["pgd_acc_n"] == result["clean_acc_full_n"] == len(y)
    assert result["clean_acc"] == result["clean_acc_full"]
    assert result["gradient_masking"] is False
    assert "GRADIENT MASKING" not in caplog.text


def test_evaluate_with_autoattack_subset(trained: tuple[nn.Module, Tensor, Tensor]) -> None:
    model, x, y = trained
    cfg = EvalConfig(pgd_steps=10, autoattack=True, test_points=12)
    result = evaluate(model, _loader(x, y), cfg, AttackConfig(eps=EPS, step_size=EPS / 4), "cpu")
    assert result["aa_acc"] is not None
    assert result["robust_acc"] == result["aa_acc"] and result["robust_attack"] == "autoattack"
    assert round(result["aa_acc"] * 12) == pytest.approx(result["aa_acc"] * 12)  # 12 points
    # One point set per headline: clean, PGD and AutoAttack all on the same 12 points.
    assert result["clean_acc_n"] == result["pgd_acc_n"] == result["aa_acc_n"] == result["robust_acc_n"] == 12
    for key in ("clean_acc", "pgd_acc"):
        assert round(result[key] * 12) == pytest.approx(result[key] * 12)
    assert result["clean_acc_full_n"] == result["pgd_acc_full_n"] == len(y) > 12
    points = result["predictions"]
    assert len(points["index"]) == len(points["aa"]) == 12
    assert sum(points["aa"]) == round(result["aa_acc"] * 12)


def test_test_points_cut_the_headline_without_autoattack(trained: tuple[nn.Module, Tensor, Tensor]) -> None:
    model, x, y = trained
    cfg = EvalConfig(pgd_steps=3, autoattack=False, test_points=10)
    result = evaluate(model, _loader(x, y), cfg, AttackConfig(eps=EPS, step_size=EPS / 4), "cpu")
    assert result["clean_acc_n"] == result["pgd_acc_n"] == result["robust_acc_n"] == 10
    assert len(result["predictions"]["clean"]) == 10 and result["clean_acc_full_n"] == len(y)


class _Constant(nn.Module):
    """Always predicts class 0, so corruption accuracy is the share of label-0 images."""

    def forward(self, x: Tensor) -> Tensor:
        assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.float32 and float(x.max()) <= 1.0
        logits = torch.zeros(x.shape[0], 10)
        logits[:, 0] = 1.0
        return logits


def test_corruption_accuracy_reads_the_right_severity(tmp_path, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    per = 4  # images per severity (10000 in the real data)
    labels = np.array([1, 1, 1, 1, 0, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0], dtype=np.int64)
    np.save(tmp_path / "labels.npy", labels)
    rng = np.random.default_rng(0)
    for name in ("fog", "snow"):
        np.save(tmp_path / f"{name}.npy", rng.integers(0, 256, (5 * per, 32, 32, 3), dtype=np.uint8))
    model = _Constant()
    for severity, expected in [(1, 0.0), (2, 0.25), (3, 0.5), (4, 0.75), (5, 1.0)]:
        assert corruption_accuracy(model, tmp_path, severity, "cpu") == pytest.approx(expected)
    # Severity 3 is labels[8:12] = 0, 0, 1, 1: the first two images only are all class 0.
    assert corruption_accuracy(model, tmp_path, 3, "cpu", limit=2) == pytest.approx(1.0)
    with caplog.at_level(logging.INFO, logger="s2ap.evaluate"):
        assert corruption_accuracy(model, tmp_path / "absent", 3, "cpu") is None
    assert "no CIFAR-10-C data" in caplog.text
    with pytest.raises(ValueError, match="severity"):
        corruption_accuracy(model, tmp_path, 6, "cpu")
