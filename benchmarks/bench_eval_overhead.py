"""Evaluation overhead: the project's PGD-50 evaluation against a plain torch loop doing the
same attack on the same batches, alternating rounds so machine load hits both equally.

    python benchmarks/bench_eval_overhead.py [--model cnn] [--image-size 16] [--rounds 5]

Target: ratio <= 1.05x.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from s2ap.attacks import PGD
from s2ap.config import DataConfig
from s2ap.data import load_splits
from s2ap.evaluate import pgd_accuracy
from s2ap.models import build_model


def plain_pgd_accuracy(model, batches, eps: float, alpha: float, steps: int) -> float:
    """The reference: PGD written inline, nothing but torch."""
    model.eval()
    correct = total = 0
    for x, y in batches:
        x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(model(x_adv), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
            with torch.no_grad():
                x_adv = torch.min(torch.max(x_adv + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
        with torch.no_grad():
            correct += int((model(x_adv).argmax(1) == y).sum())
        total += y.numel()
    return correct / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--points", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    splits = load_splits(DataConfig(name="digits", image_size=args.image_size, test_limit=args.points), 0)
    i = splits.info
    model = build_model(
        args.model, i.num_classes, i.in_channels, args.image_size, i.mean, i.std, masked=False
    )
    loader = torch.utils.data.DataLoader(splits.test, batch_size=args.batch)
    batches = list(loader)  # the same tensors for both
    eps, alpha, steps = 8 / 255, 2 / 255, 50
    attack = PGD(eps=eps, step_size=alpha, steps=steps)

    times: dict[str, list[float]] = {"project": [], "plain": []}
    for r in range(args.rounds + 1):
        for name in ("project", "plain"):
            torch.manual_seed(r)
            t0 = time.perf_counter()
            if name == "project":
                acc = pgd_accuracy(model, batches, attack, torch.device("cpu"))
            else:
                acc = plain_pgd_accuracy(model, batches, eps, alpha, steps)
            if r:  # round 0 warms up
                times[name].append(time.perf_counter() - t0)
            last = acc
    project, plain = statistics.median(times["project"]), statistics.median(times["plain"])
    print(
        f"PGD-50 evaluation, model {args.model}, {args.points} digits points at {args.image_size}px, "
        f"{args.rounds} rounds (median); last accuracy {last:.3f}"
    )
    print(f"project  {project:7.3f} s")
    print(f"plain    {plain:7.3f} s")
    print(f"ratio project/plain = {project / plain:.3f}x (target <= 1.05x)")


if __name__ == "__main__":
    main()
