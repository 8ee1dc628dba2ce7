"""L-inf PGD as an object: configured once, called as ``attack(model, x, y)``.

The model's train/eval mode is saved and restored around the call; gradients are taken
with respect to the input only, so no parameter gradient is touched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LossFn = Callable[[Tensor, Tensor, Tensor], Tensor]  # (adv_logits, y, clean_logits) -> loss


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluate in eval mode (no dropout, frozen BN statistics) and restore the caller's mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def ce_loss(adv_logits: Tensor, y: Tensor, clean_logits: Tensor | None = None) -> Tensor:
    return F.cross_entropy(adv_logits, y, reduction="sum")


def kl_loss(adv_logits: Tensor, y: Tensor, clean_logits: Tensor | None) -> Tensor:
    """TRADES' inner maximisation: KL(f(x) || f(x'))."""
    assert clean_logits is not None
    return F.kl_div(F.log_softmax(adv_logits, 1), F.softmax(clean_logits, 1), reduction="sum")


class PGD:
    """Projected gradient ascent in the L-inf ball of radius ``eps`` intersected with [0, 1].

    ``loss="ce"`` is Madry et al.'s attack; ``loss="kl"`` is TRADES' (starting from a small
    Gaussian around x, as in Zhang et al., 2019). ``restarts`` keeps, per point, the first
    restart that fools the model.
    """

    def __init__(
        self,
        eps: float = 8 / 255,
        step_size: float = 2 / 255,
        steps: int = 10,
        random_start: bool = True,
        restarts: int = 1,
        loss: str = "ce",
        eval_mode: bool = True,
    ) -> None:
        self.eps = eps
        self.step_size = step_size
        self.steps = steps
        self.random_start = random_start
        self.restarts = restarts
        self.loss_name = loss
        self.loss_fn: LossFn = {"ce": ce_loss, "kl": kl_loss}[loss]
        self.eval_mode = eval_mode

    def __repr__(self) -> str:
        return (
            f"PGD(eps={self.eps:.5f}, step_size={self.step_size:.5f}, steps={self.steps}, "
            f"restarts={self.restarts}, loss={self.loss_name!r})"
        )

    def start_noise(self, like: Tensor) -> Tensor | None:
        """The random start, the one place it is drawn, shaped like ``like``: a small
        Gaussian for TRADES' KL attack (Zhang et al., 2019), uniform in the eps-ball for
        Madry et al.'s; None without a random start."""
        if not self.random_start:
            return None
        if self.loss_name == "kl":
            return 0.001 * torch.randn_like(like)
        return torch.empty_like(like).uniform_(-self.eps, self.eps)

    def _start(self, x: Tensor, noise: Tensor | None) -> Tensor:
        if not self.random_start:
            return x.clone()
        if noise is None:
            noise = self.start_noise(x)
        return (x + noise).clamp(0.0, 1.0)

    def perturb_once(self, model: nn.Module, x: Tensor, y: Tensor, noise: Tensor | None = None) -> Tensor:
        clean_logits = None
        if self.loss_name == "kl":
            # A compiled model keeps autograd on (the graph dropped at once): a no-grad pass
            # would compile a graph of its own for this one forward.
            with torch.set_grad_enabled(hasattr(model, "_orig_mod")):
                clean_logits = model(x).detach()
        x_adv = self._start(x, noise)
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                loss = self.loss_fn(model(x_adv), y, clean_logits)
                (grad,) = torch.autograd.grad(loss, x_adv)
            with torch.no_grad():
                x_adv = x_adv + self.step_size * grad.sign()
                x_adv = torch.min(torch.max(x_adv, x - self.eps), x + self.eps).clamp(0.0, 1.0)
        return x_adv.detach()

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, noise: Tensor | None = None) -> Tensor:
        was_training = model.training
        if self.eval_mode:
            model.eval()
        try:
            x_adv = self.perturb_once(model, x, y, noise)
            for _ in range(self.restarts - 1):
                with torch.no_grad():
                    still_right = model(x_adv).argmax(1) == y
                if not still_right.any():
                    break
                candidate = self.perturb_once(model, x, y)
                with torch.no_grad():
                    fooled = model(candidate).argmax(1) != y
                    replace = still_right & fooled
                    x_adv[replace] = candidate[replace]
        finally:
            model.train(was_training)
        return x_adv
