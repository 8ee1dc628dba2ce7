"""AutoAttack (Croce & Hein, 2020) through ``pyautoattack``, fitted to any class count, its
progress output kept quiet and its warnings (gradient-masking flags) reported once."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from s2ap.attacks import eval_mode

logger = logging.getLogger(__name__)

Device = torch.device | str
# AutoAttack messages that point at gradient masking (as opposed to configuration notes).
MASKING_HINTS = ("zero gradient", "Square Attack has decreased")


class _Collect(logging.Handler):
    """Keeps AutoAttack's warnings so they can be reported once, through our logger."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _quiet_autoattack() -> Iterator[list[str]]:
    """Silence AutoAttack's progress logging unless our logger is at DEBUG.

    pyautoattack logs every batch of every attack through the ``auto-attack`` logger and
    emits some checks through ``warnings``. Its warnings matter (they are gradient-masking
    flags), so they are collected, deduplicated and re-logged once as warnings here.
    """
    aa_logger = logging.getLogger("auto-attack")
    verbose = logger.isEnabledFor(logging.DEBUG)
    saved = (aa_logger.level, aa_logger.propagate)
    handler = _Collect()
    aa_logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
    aa_logger.propagate = verbose
    aa_logger.addHandler(handler)
    messages: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
        messages.extend(handler.messages)
        messages.extend(str(w.message) for w in caught)
    finally:
        aa_logger.removeHandler(handler)
        aa_logger.setLevel(saved[0])
        aa_logger.propagate = saved[1]
    unique = list(dict.fromkeys(messages))
    messages[:] = unique
    if not verbose:
        for msg in unique:
            logger.warning("AutoAttack: %s", msg)


def run_autoattack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    device: Device,
    batch_size: int,
    version: str,
    attacks: list[str] | None,
    seed: int,
) -> tuple[Tensor, list[str]]:
    """Per-point robustness flags under AutoAttack, and AutoAttack's warnings."""
    from pyautoattack import AutoAttack  # imported lazily: it is slow to import

    if x.shape[0] == 0:
        raise ValueError("autoattack_accuracy: no points given")
    with eval_mode(model):
        with torch.no_grad():
            n_classes = int(model(x[:1].to(device)).shape[1])
        with _quiet_autoattack() as messages:
            adversary = AutoAttack(
                model,
                attacks=attacks if version == "custom" else None,
                device=device,
                eps=eps,
                norm="Linf",
                seed=seed,
                version=version,  # type: ignore[arg-type]
            )
            _fit_targets(adversary, n_classes)
            _, y_adv = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    return (y_adv.cpu() == y.cpu()), messages


def _fit_targets(adversary: object, n_classes: int) -> None:
    """Fit the targeted attacks to the number of classes.

    The standard version targets the 9 most likely wrong classes, which only exists for
    10+ classes; with fewer, APGD-T would index past the logits. Use every wrong class
    instead, and drop APGD-T below 4 classes where its targeted DLR loss is undefined.
    """
    targets = max(1, n_classes - 1)
    for name in ("apgd_targeted", "fab"):
        attack = getattr(adversary, name)
        if attack.n_target_classes > targets:
            logger.info(
                "AutoAttack: %s uses %d target classes (model has %d classes)", name, targets, n_classes
            )
            attack.n_target_classes = targets
    run = adversary.attacks_to_run  # type: ignore[attr-defined]
    if n_classes < 4 and "apgd-t" in run:
        logger.info("AutoAttack: dropping apgd-t, its targeted DLR loss needs at least 4 classes")
        adversary.attacks_to_run = [a for a in run if a != "apgd-t"]  # type: ignore[attr-defined]
    if n_classes < 3 and "apgd-dlr" in run:
        adversary.attacks_to_run = [a for a in adversary.attacks_to_run if a != "apgd-dlr"]  # type: ignore[attr-defined]


def autoattack_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    device: Device,
    batch_size: int = 256,
    *,
    version: str = "standard",
    attacks: list[str] | None = None,
    seed: int = 0,
) -> float:
    """Fraction (0..1) of ``(x, y)`` that L-inf AutoAttack at radius ``eps`` does not break.

    ``version="standard"`` (APGD-CE, APGD-T, FAB-T, Square) is what papers report;
    ``version="custom"`` with ``attacks=[...]`` exists for fast tests. ``seed`` fixes the
    attacks' randomness (pyautoattack otherwise seeds from the clock). The model runs in
    eval mode; AutoAttack's progress output is shown only when this module logs at DEBUG.
    """
    robust, _ = run_autoattack(model, x, y, eps, device, batch_size, version, attacks, seed)
    return float(robust.float().mean())
