"""Final evaluation of a (pruned) model: clean, PGD, AutoAttack and common-corruption accuracy.

All accuracies are **fractions in [0, 1]** (the result tables store them that way; the
report multiplies by 100 for display).

Robust accuracy is only meaningful if the attacks actually work on the model. Pruning can
produce models with dead or saturated paths whose gradients vanish, and a gradient-based
attack then overestimates robustness (gradient masking; Athalye et al., 2018). Following the
checks of Croce & Hein (2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks") we flag a model when AutoAttack - the stronger
evaluation - scores *higher* than PGD on the same points, when many test points have an
exactly zero input gradient, or when AutoAttack's own checks complain. The flag is returned
and every reason is logged as a warning, because a masked model's numbers must not be read
as robustness.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s2ap.attacks import PGD, eval_mode
from s2ap.autoattack import MASKING_HINTS, autoattack_accuracy, run_autoattack
from s2ap.config import AttackConfig, EvalConfig
from s2ap.results import PREDICTIONS

logger = logging.getLogger(__name__)

Device = torch.device | str
Loader = Iterable[tuple[Tensor, Tensor]]

MASKING_REFERENCE = (
    "see Croce & Hein 2020 (AutoAttack), Sect. 'checks' and "
    "https://github.com/fra31/auto-attack/blob/master/flags_doc.md; Athalye et al. 2018"
)
# Test points whose input gradient is checked for zeros when AutoAttack does not already
# collect a larger subset.
GRADIENT_CHECK_POINTS = 512


# --------------------------------------------------------------------------- clean and PGD


def clean_accuracy(model: nn.Module, loader: Loader, device: Device) -> float:
    """Fraction (0..1) of the loader's points the model classifies correctly, in eval mode."""
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = 0
    with eval_mode(model), torch.no_grad():
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            correct += (model(x).argmax(1) == y).sum()
            total += y.numel()
    return _fraction(correct, total)


def _fraction(correct: Tensor, total: int) -> float:
    # One device sync at the end instead of one per batch.
    return float(correct.item()) / total if total else float("nan")


def _pgd_pass(
    model: nn.Module,
    loader: Loader,
    attack: PGD,
    device: Device,
    collect: int | None = 0,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One lean pass: clean and PGD correctness and the label per point, plus the first
    ``collect`` points.

    ``collect=None`` keeps every point (AutoAttack on the whole test set). Flags stay on the
    device until the end so the loop never waits for the accelerator.
    """
    clean_flags: list[Tensor] = []
    adv_flags: list[Tensor] = []
    xs: list[Tensor] = []
    ys: list[Tensor] = []
    labels: list[Tensor] = []
    kept = 0
    with eval_mode(model):
        for x, y in loader:
            if collect is None or kept < collect:
                take = x.shape[0] if collect is None else min(x.shape[0], collect - kept)
                xs.append(x[:take].detach().cpu())
                ys.append(y[:take].detach().cpu())
                kept += take
            labels.append(y.detach().cpu())
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            x_adv = attack(model, x, y)
            with torch.no_grad():
                clean_flags.append(model(x).argmax(1) == y)
                adv_flags.append(model(x_adv).argmax(1) == y)
    if not adv_flags:
        raise ValueError("evaluation loader yielded no batches")
    return (
        torch.cat(clean_flags).cpu(),
        torch.cat(adv_flags).cpu(),
        torch.cat(xs) if xs else torch.empty(0),
        torch.cat(ys) if ys else torch.empty(0, dtype=torch.long),
        torch.cat(labels),
    )


def pgd_accuracy(model: nn.Module, loader: Loader, attack: PGD, device: Device) -> float:
    """Fraction (0..1) of points still classified correctly after ``attack`` (eval mode)."""
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = 0
    with eval_mode(model):
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            x_adv = attack(model, x, y)
            with torch.no_grad():
                correct += (model(x_adv).argmax(1) == y).sum()
            total += y.numel()
    return _fraction(correct, total)


# --------------------------------------------------------------------------- gradient masking


def zero_gradient_fraction(
    model: nn.Module, x: Tensor, y: Tensor, device: Device, batch_size: int = 256
) -> float:
    """Fraction of points whose cross-entropy input gradient is exactly zero (eval mode).

    Honest networks have non-zero input gradients almost everywhere (softmax never
    saturates to exact zeros in float32 for reasonable logits), so many exact zeros mean
    the attack has nothing to follow: shattered or masked gradients.
    """
    if x.shape[0] == 0:
        return 0.0
    zeros = 0
    with eval_mode(model):
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size].to(device).requires_grad_(True)
            yb = y[start : start + batch_size].to(device)
            with torch.enable_grad():
                loss = F.cross_entropy(model(xb), yb, reduction="sum")
                if not loss.requires_grad:  # the output does not depend on x at all
                    zeros += xb.shape[0]
                    continue
                (grad,) = torch.autograd.grad(loss, xb, allow_unused=True)
            if grad is None:
                zeros += xb.shape[0]
                continue
            zeros += int((grad.flatten(1).abs().sum(1) == 0).sum())
    return zeros / x.shape[0]


def check_gradient_masking(
    *,
    clean_acc: float | None = None,
    pgd_acc: float | None = None,
    aa_acc: float | None = None,
    zero_grad_fraction: float | None = None,
    autoattack_messages: Iterable[str] = (),
    max_zero_grad_fraction: float = 0.1,
    tolerance: float = 0.0,
) -> bool:
    """True (and a loud warning per reason) when the evaluation shows signs of gradient masking.

    ``pgd_acc`` and ``aa_acc`` must be measured on the same points: AutoAttack contains an
    APGD that dominates PGD, so AA > PGD means the attacks are not finding the loss'
    ascent direction. ``tolerance`` allows for that much (fraction) of noise.
    """
    reasons = []
    if pgd_acc is not None and aa_acc is not None and aa_acc > pgd_acc + tolerance:
        reasons.append(
            f"AutoAttack accuracy {aa_acc:.4f} exceeds PGD accuracy {pgd_acc:.4f} on the same points"
        )
    if clean_acc is not None and pgd_acc is not None and pgd_acc > clean_acc + tolerance:
        reasons.append(f"PGD accuracy {pgd_acc:.4f} exceeds clean accuracy {clean_acc:.4f}")
    if zero_grad_fraction is not None and zero_grad_fraction > max_zero_grad_fraction:
        reasons.append(
            f"{zero_grad_fraction:.1%} of the checked test points have a zero input gradient "
            f"(threshold {max_zero_grad_fraction:.0%})"
        )
    for msg in autoattack_messages:
        if any(hint in msg for hint in MASKING_HINTS):
            reasons.append(f"AutoAttack check: {msg}")
    for reason in reasons:
        logger.warning(
            "POSSIBLE GRADIENT MASKING: %s - the robust accuracy may be overestimated; %s",
            reason,
            MASKING_REFERENCE,
        )
    return bool(reasons)


# --------------------------------------------------------------------------- corruptions


def corruption_accuracy(
    model: nn.Module,
    root: str | Path,
    severity: int,
    device: Device,
    limit: int | None = None,
    batch_size: int = 500,
) -> float | None:
    """Mean accuracy (0..1) over the CIFAR-10-C corruptions at one severity, or None.

    Layout (Hendrycks & Dietterich, 2019): ``root/<corruption>.npy`` with 50000x32x32x3
    uint8 images, five severities of the 10000 test images stacked in order, and
    ``root/labels.npy``. ``limit`` uses the first N images of each corruption. Returns
    None with an info log when the data is absent, since it is an optional extra.
    """
    if not 1 <= severity <= 5:
        raise ValueError(f"corruption severity must be in 1..5, got {severity}")
    root = Path(root)
    labels_path = root / "labels.npy"
    files = sorted(p for p in root.glob("*.npy") if p.name != "labels.npy") if root.is_dir() else []
    if not labels_path.is_file() or not files:
        logger.info("no CIFAR-10-C data at %s (need labels.npy and <corruption>.npy); skipping", root)
        return None
    labels = np.load(labels_path, mmap_mode="r")
    per_severity = labels.shape[0] // 5
    start = (severity - 1) * per_severity
    stop = start + per_severity if limit is None else start + min(limit, per_severity)
    y_all = torch.from_numpy(np.array(labels[start:stop], dtype=np.int64))  # a writable copy
    accuracies: dict[str, float] = {}
    with eval_mode(model), torch.no_grad():
        for path in files:
            images = np.load(path, mmap_mode="r")
            if images.shape[0] != labels.shape[0] or images.ndim != 4:
                logger.warning(
                    "skipping %s: shape %s does not match labels %s", path.name, images.shape, labels.shape
                )
                continue
            correct = torch.zeros((), dtype=torch.long, device=device)
            for lo in range(start, stop, batch_size):
                hi = min(lo + batch_size, stop)
                x = torch.from_numpy(np.array(images[lo:hi])).to(device)  # copy out of the memory map
                x = x.permute(0, 3, 1, 2).float().div_(255.0)
                y = y_all[lo - start : hi - start].to(device)
                correct += (model(x).argmax(1) == y).sum()
            accuracies[path.stem] = _fraction(correct, stop - start)
            logger.debug("corruption %s severity %d: %.4f", path.stem, severity, accuracies[path.stem])
    if not accuracies:
        logger.info("no usable CIFAR-10-C files at %s; skipping", root)
        return None
    return sum(accuracies.values()) / len(accuracies)


# --------------------------------------------------------------------------- all together


def evaluate(
    model: nn.Module,
    test_loader: Loader,
    cfg: EvalConfig,
    attack_cfg: AttackConfig,
    device: Device,
    *,
    corruption_limit: int | None = None,
    autoattack_batch_size: int | None = None,
) -> dict[str, Any]:
    """The final metrics of a run, as fractions in [0, 1], each ``X`` with its points ``X_n``.

    The headline triple is measured on one set of points, the first ``cfg.test_points`` test
    points (every point when None): ``clean_acc``, ``pgd_acc``
    (PGD-``cfg.pgd_steps`` with ``cfg.pgd_restarts`` restarts at ``attack_cfg``'s radius and
    step), ``aa_acc`` (standard AutoAttack; None when disabled) and ``robust_acc`` (AutoAttack
    when run, else PGD; ``robust_attack`` names it). ``clean_acc_full`` / ``pgd_acc_full`` are
    the same on every test point. Also ``gradient_masking`` and ``corruption_acc`` (None
    unless ``cfg.corruption_root`` holds CIFAR-10-C). Clean and PGD share one pass over the
    loader. ``predictions`` holds the headline points' outcomes (position in the loader, label,
    and clean / PGD / AutoAttack correctness; AutoAttack None when not run), one entry each.
    """
    attack = PGD(
        eps=attack_cfg.eps,
        step_size=attack_cfg.step_size,
        steps=cfg.pgd_steps,
        random_start=attack_cfg.random_start,
        restarts=cfg.pgd_restarts,
        loss="ce",
    )
    limit = cfg.test_points
    collect = GRADIENT_CHECK_POINTS
    if cfg.autoattack:
        collect = None if limit is None else max(limit, GRADIENT_CHECK_POINTS)
    clean_flags, pgd_flags, xs, ys, labels = _pgd_pass(model, test_loader, attack, device, collect)
    n_all = len(pgd_flags)
    n = n_all if limit is None else min(limit, n_all)  # the headline points: the first n
    clean_acc = float(clean_flags[:n].float().mean())
    pgd_acc = float(pgd_flags[:n].float().mean())
    logger.info("clean accuracy %.4f, %s accuracy %.4f (%d points)", clean_acc, attack, pgd_acc, n)

    aa_acc: float | None = None
    aa_flags: Tensor | None = None
    messages: list[str] = []
    if cfg.autoattack:
        batch_size = autoattack_batch_size or getattr(test_loader, "batch_size", None) or 256
        robust, messages = run_autoattack(
            model, xs[:n], ys[:n], attack_cfg.eps, device, batch_size, "standard", None, seed=0
        )
        aa_flags = robust.bool().cpu()
        aa_acc = float(aa_flags.float().mean())
        logger.info("AutoAttack accuracy %.4f on the same %d points", aa_acc, n)

    check_n = min(GRADIENT_CHECK_POINTS, xs.shape[0])
    zero_frac = zero_gradient_fraction(model, xs[:check_n], ys[:check_n], device)
    masking = check_gradient_masking(
        clean_acc=clean_acc,
        pgd_acc=pgd_acc,
        aa_acc=aa_acc,
        zero_grad_fraction=zero_frac,
        autoattack_messages=messages,
    )

    corruption: tuple[float, int] | None = None
    if cfg.corruption_root:
        acc = corruption_accuracy(
            model, cfg.corruption_root, cfg.corruption_severity, device, limit=corruption_limit
        )
        if acc is not None:
            corruption = (acc, corruption_points(cfg.corruption_root, corruption_limit))
    return {
        "clean_acc": clean_acc,
        "clean_acc_n": n,
        "pgd_acc": pgd_acc,
        "pgd_acc_n": n,
        "aa_acc": aa_acc,
        "aa_acc_n": n if aa_acc is not None else None,
        "robust_acc": aa_acc if aa_acc is not None else pgd_acc,
        "robust_acc_n": n,
        "robust_attack": "autoattack" if aa_acc is not None else "pgd",
        "clean_acc_full": float(clean_flags.float().mean()),
        "clean_acc_full_n": n_all,
        "pgd_acc_full": float(pgd_flags.float().mean()),
        "pgd_acc_full_n": n_all,
        "gradient_masking": masking,
        "corruption_acc": corruption[0] if corruption else None,
        "corruption_acc_n": corruption[1] if corruption else None,
        PREDICTIONS: {
            "index": list(range(n)),
            "label": labels[:n].tolist(),
            "clean": clean_flags[:n].tolist(),
            "pgd": pgd_flags[:n].tolist(),
            "aa": None if aa_flags is None else aa_flags.tolist(),
        },
    }


def corruption_points(root: str | Path, limit: int | None = None) -> int:
    """Test images per corruption that :func:`corruption_accuracy` scores (its interval's n:
    the corruptions reuse the same images, so they are not independent points)."""
    per_severity = int(np.load(Path(root) / "labels.npy", mmap_mode="r").shape[0]) // 5
    return per_severity if limit is None else min(limit, per_severity)


__all__ = [
    "autoattack_accuracy",
    "check_gradient_masking",
    "clean_accuracy",
    "corruption_accuracy",
    "corruption_points",
    "evaluate",
    "pgd_accuracy",
    "zero_gradient_fraction",
]
