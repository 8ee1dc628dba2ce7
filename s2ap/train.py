"""The one training loop. Pretraining, pruning and finetuning differ only in which tensors
train, the objective, and whether a sharpness-aware perturbation wraps the step.

One iteration (Algorithm 1 when ``perturbation`` is the score perturbation, Algorithm 2 when
it is AWP on the kept weights, the plain method when it is None):

    x' = attack(model at p)                          # adversarial batch, crafted once
    L(p) on x'; grad at p                            # the robust loss that is tracked
    [p <- p + z_prev] grad at p + z_prev             # algorithm1's carried z, when it matters
    [p <- p + z]      L(p + z) on x'; grad at p + z  # only with a perturbation
    [p <- p]          base optimizer step with the last gradient

With ``s2ap.ascent: previous`` the ascent takes the gradient the last update used, so ``z`` is
known before the first pass: that pass computes only the loss, and no pass runs at ``p + z_prev``.

:class:`Trainer` holds what a phase trains with; :class:`Epoch` is one epoch's context.

Only the pass at ``p`` updates batch-norm running statistics: the passes at perturbed points
(and the one at a carried-over ``z``, ``s2ap.projection: algorithm1``) run with the batch's own
statistics and leave the running ones alone, as SAM's reference implementation does, so a
sharpness-aware run ends with the evaluation-time statistics a plain run would have.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from s2ap import layers as L
from s2ap.distributed import ShardedBatches
from s2ap.errors import TrainingDiverged
from s2ap.objectives import Objective
from s2ap.sharpness import Perturbation

log = logging.getLogger(__name__)


@dataclass
class EpochResult:
    """Sums over this rank's share of the epoch (all-reduce them, then divide by ``n``)."""

    loss_sum: float
    correct: float
    n: int
    time_s: float
    perturbation_norms: list[float] = field(default_factory=list)
    perturbed_frac: float | None = None  # iterations that ran the pass at the perturbed point
    ascent_pass_frac: float | None = None  # iterations that ran the extra pass at p + z_prev


def _global_noise(objective: Objective, x: Tensor, batch_len: int, lo: int) -> Tensor | None:
    """Attack start noise drawn for the whole global batch, so it is partition-independent."""
    attack = objective.attack
    if attack is None:
        return None
    noise = attack.start_noise(torch.empty((batch_len, *x.shape[1:]), device=x.device))
    return None if noise is None else noise[lo : lo + x.shape[0]]


@contextmanager
def frozen_batch_norm(model: nn.Module) -> Iterator[None]:
    """Batch norm in training mode normalises with the batch statistics but, inside this
    block, updates neither its running statistics nor its batch counter."""
    touched = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    for m in touched:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in touched:
            m.track_running_stats = True


def no_penalty() -> Tensor | None:
    return None


@dataclass
class Epoch:
    """One epoch's context: where it is, what wraps its steps, what watches them."""

    phase: str = "train"
    index: int = 0
    perturbation: Perturbation | None = None
    on_iteration: Callable[[int], None] | None = None  # after each step, with the step index
    # Each step's robust loss (the mean over this rank's n points, read from the device once
    # with the step's other losses) while the parameters are those it was computed at: the
    # per-iteration best mask (Algorithm 1, 13-15).
    before_update: Callable[[float, int], None] | None = None
    progress: bool = False


@dataclass
class Trainer:
    """What a phase trains with, the same for each of its epochs. ``model`` may be
    DDP-wrapped (and compiled); the attack runs on ``attack_model``, by default the module
    inside DDP, so it never touches DDP's gradient reducer (under DDP with ``compile`` the
    pipeline hands the compiled inner module, so the attack's forwards are compiled too)."""

    model: nn.Module
    objective: Objective
    optimizer: torch.optim.Optimizer
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    penalty: Callable[[], Tensor | None] = no_penalty  # the method's own term (HARP)
    amp: bool = False  # bf16 autocast, CUDA only
    attack_model: nn.Module | None = None

    def __post_init__(self) -> None:
        # A compiled model reads the top-k masks from buffers refreshed once per point.
        self.refresh = any(hasattr(m, "_orig_mod") for m in (self.model, self.attack_model))

    def autocast(self) -> torch.autocast:
        on = self.amp and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=on)

    def epoch(
        self, loader: Iterable[tuple[Tensor, Tensor]], batches: ShardedBatches, ctx: Epoch
    ) -> EpochResult:
        """One pass over ``loader``."""
        self.model.train()
        # Sums kept on the device and read once at the end. What still reads the device every
        # step: the step's losses (one read: the divergence check and the per-iteration best
        # mask) and, with a perturbation, whether it changes the fingerprint (Trainer.step).
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss * n, correct
        count, perturbed, ascents = 0, 0, 0
        norms: list[Tensor] = []
        start = time.perf_counter()
        global_sizes = [len(b) for b in batches.global_batches()]
        iterator = zip(loader, global_sizes, strict=True)
        if ctx.progress:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, total=len(global_sizes), desc=f"{ctx.phase} {ctx.index}", leave=False)
        for step, ((x, y), global_len) in enumerate(iterator):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            lo, _ = batches.chunk(global_len)
            noise = _global_noise(self.objective, x, global_len, lo)
            try:
                loss, logits, changed = self.step(x, y, noise, ctx.perturbation, ctx.before_update)
            except TrainingDiverged as exc:
                where = f"in phase {ctx.phase}, epoch {ctx.index}, step {step}"
                raise TrainingDiverged(f"{exc} {where}") from None
            if ctx.perturbation is not None:
                norm = ctx.perturbation.norm()
                if norm is not None:
                    norms.append(norm)
                perturbed += int(changed)
                ascents += int(ctx.perturbation.moved)
            n = y.shape[0]
            sums += torch.stack([loss.double() * n, (logits.argmax(1) == y).sum().double()])
            count += n
            if ctx.on_iteration is not None:
                ctx.on_iteration(step)
        steps = len(global_sizes)
        shares = (
            (perturbed / steps, ascents / steps) if ctx.perturbation is not None and steps else (None, None)
        )
        loss_sum, correct = sums.tolist()
        norm_values = torch.stack(norms).tolist() if norms else []
        return EpochResult(loss_sum, correct, count, time.perf_counter() - start, norm_values, *shares)

    def step(
        self,
        x: Tensor,
        y: Tensor,
        noise: Tensor | None = None,
        perturbation: Perturbation | None = None,
        before_update: Callable[[float, int], None] | None = None,
    ) -> tuple[Tensor, Tensor, bool]:
        """One iteration; returns the robust loss at p, its logits, and whether the
        perturbation changed the gradient (False when it was skipped as provably without
        effect).

        The device is read at most three times: whether a carried or planned ``z`` moves the
        fingerprint (:meth:`Perturbation.plan_ascent`), whether ``p + z`` does
        (:meth:`Perturbation.climb`), and once for every loss of the step together, before
        the update (the divergence check and ``before_update``)."""
        inner = self.attack_model or getattr(self.model, "module", self.model)
        if self.refresh:
            L.refresh_topk(self.model)
        with self.autocast():
            batch = self.objective.craft(inner, x, y, noise)  # x', crafted once at p
        inner.train()
        # Algorithm 1's carried z_prev: when the ascent gradient is taken at p + z_prev, the
        # one at p would be overwritten unused, so the pass at p only computes the loss.
        away = perturbation is not None and perturbation.plan_ascent()

        self.optimizer.zero_grad(set_to_none=True)
        # Compiled, the forward-only pass keeps autograd on (its graph dropped unused): a no-grad
        # pass would compile a graph of its own.
        with self.autocast(), torch.set_grad_enabled(not away or self.refresh):
            loss, logits = self.objective.loss(self.model, batch)
            extra = self.penalty()
            total = loss if extra is None else loss + extra
        if away:  # no backward from this pass: its graph goes now
            loss, logits = loss.detach(), logits.detach()
            del total
        else:
            total.backward()  # the gradient at p (all-reduced under DDP: z is the same on every rank)
        losses = [("loss", loss.detach())]  # checked finite together, before the update
        changed = False
        if perturbation is not None:
            if perturbation.to_ascent_point():  # Algorithm 1's carried z: the gradient at s + z_prev
                losses.append(("carried-over perturbation's loss", self._backward_perturbed(batch)))
            perturbation.climb()  # p + z
            if not perturbation.unchanged:  # else the gradient held is provably the one at p + z
                losses.append(("perturbed loss", self._backward_perturbed(batch)))
            changed = perturbation.moved or not perturbation.unchanged  # the step's gradient is not p's
            perturbation.restore()  # back to p, bit for bit; the step uses the last gradient
        # One read for all of the step's losses; a non-finite one stops before the update.
        values = torch.stack([value.float() for _, value in losses]).tolist()
        for (what, _), value in zip(losses, values, strict=True):
            if not math.isfinite(value):
                raise TrainingDiverged(f"{what} is {value}")
        if before_update is not None:  # the parameters are p again, bit for bit
            before_update(values[0], int(y.shape[0]))
        self.optimizer.step()
        return loss.detach(), logits.detach(), changed

    def _backward_perturbed(self, batch: Any) -> Tensor:
        """The gradient at the current (perturbed) point; batch-norm statistics untouched.
        Returns the loss there (checked finite by :meth:`step`, with the others)."""
        if self.refresh:
            L.refresh_topk(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast(), frozen_batch_norm(self.model):
            here, _ = self.objective.loss(self.model, batch)
            extra = self.penalty()
            total = here if extra is None else here + extra
        total.backward()
        return here.detach()


def on_device(model: nn.Module, fast: dict[str, bool], device: torch.device) -> nn.Module:
    """``model`` moved to ``device`` in the fast path's memory format (channels_last on CUDA:
    NHWC convolutions, and with bf16 the tensor-core kernels); says in the log what runs."""
    settings = ("on" if fast[k] else "off" for k in ("amp", "channels_last", "compile"))
    cuda_only = "" if device.type == "cuda" else " (autocast and channels_last are CUDA-only)"
    log.info(
        "fast path on %s: bf16 autocast %s, channels_last %s, torch.compile %s%s",
        device,
        *settings,
        cuda_only,
    )
    fmt = torch.channels_last if fast["channels_last"] else torch.preserve_format
    return model.to(device, memory_format=fmt)


def compiled(model: nn.Module, on: bool, backend: str = "inductor") -> nn.Module:
    """``torch.compile(model)`` when ``on``. The compiled forward reads the score masks from
    buffers that :class:`Trainer` refreshes once per point (:func:`s2ap.layers.refresh_topk`),
    so changing scores cause neither a graph break nor a recompile per step
    (``benchmarks/bench_gpu_epoch.py`` counts both)."""
    return torch.compile(model, backend=backend) if on else model  # type: ignore[return-value]


def build_optimizer(
    params: Sequence[nn.Parameter], name: str, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch."""
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    if schedule == "step":
        milestones = [max(1, int(epochs * 0.5)), max(1, int(epochs * 0.75))]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
