"""How far apart are the three ``s2ap.projection`` choices in practice?

From one pretrained model and one set of initial scores, prunes the same batches three times
(``surface``, ``algorithm1_reset``, ``algorithm1``) with S2AP on from the first iteration and
reports, per layer, the mean of ``||z_l|| / (gamma ||s_l||)`` over the iterations (1.0 = on
the ball's surface), the share of iterations a layer was projected, how often the carried-
over z needed the extra pass at ``s + z_prev``, how often S2AP changed the update, and the
normalised Hamming distance between the final masks of each pair.

    python benchmarks/bench_projection.py [--model cnn] [--data digits] [--gamma 0.01]
        [--eta 0.1] [--pretrain 10] [--epochs 2]

The pretraining is clean (cross-entropy) to keep the measurement to minutes on a CPU; the
pruning uses TRADES with PGD as configured (``--steps``).
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from torch.utils.data import DataLoader

from s2ap import layers as L
from s2ap.config import AttackConfig, ObjectiveConfig
from s2ap.data import load_splits
from s2ap.experiment import from_dict
from s2ap.metrics import hamming
from s2ap.models import build_model
from s2ap.objectives import build_objective
from s2ap.pruning import build_method
from s2ap.sharpness import score_perturbation
from s2ap.train import Trainer, build_optimizer

PROJECTIONS = ("surface", "algorithm1_reset", "algorithm1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--gamma", type=float, default=0.01)
    parser.add_argument("--eta", type=float, default=0.1, help="the ascent step (the pruning lr)")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--pretrain", type=int, default=10, help="clean pretraining epochs")
    parser.add_argument("--epochs", type=int, default=2, help="pruning epochs per projection")
    parser.add_argument("--steps", type=int, default=10, help="PGD steps of the training attack")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = from_dict(
        {
            "data": {"name": args.data, "image_size": args.image_size, "train_limit": args.train_limit},
            "model": {"name": args.model},
            "prune": {"sparsity": args.sparsity},
        }
    )
    splits = load_splits(cfg.data, cfg.seed)
    info = splits.info
    model = build_model(
        args.model, info.num_classes, info.in_channels, info.image_size, info.mean, info.std, masked=True
    )
    loader = DataLoader(
        splits.train, batch_size=args.batch, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    clean = build_objective(ObjectiveConfig(name="clean"), AttackConfig())
    L.set_mode(model, "dense")
    weights = [p for n, p in model.named_parameters() if not n.endswith("scores")]
    for p in model.parameters():
        p.requires_grad_(any(p is w for w in weights))
    opt = build_optimizer(weights, "sgd", 0.05, 0.9, 5e-4)
    for _ in range(args.pretrain):
        for x, y in loader:
            Trainer(model, clean, opt).step(x, y)
    method = build_method(cfg)
    method.prepare(model)
    start = copy.deepcopy(model)
    trades = build_objective(ObjectiveConfig(name="trades"), AttackConfig(steps=args.steps))
    batches = [
        (x, y)
        for _ in range(args.epochs)
        for x, y in DataLoader(
            splits.train, batch_size=args.batch, shuffle=True, generator=torch.Generator().manual_seed(1)
        )
    ]
    names = [name for name, _ in L.scored_layers(model)]
    masks = {}
    print(f"{args.model} on {args.data}: gamma {args.gamma}, eta {args.eta}, {len(batches)} iterations")
    for projection in PROJECTIONS:
        net = copy.deepcopy(start)
        layers = [layer for _, layer in L.scored_layers(net)]
        params = [layer.scores for layer in layers]
        for p in net.parameters():
            p.requires_grad_(any(p is q for q in params))
        opt = build_optimizer(params, "sgd", args.eta, 0.9, 1e-4)
        pert = score_perturbation(layers, args.gamma, projection, args.eta)
        regrads = changed = 0
        original = pert.to_ascent_point

        def counting(to_ascent_point=original) -> bool:
            nonlocal regrads
            moved = to_ascent_point()
            regrads += int(moved)  # the loop takes the gradient again at s + z_prev
            return moved

        pert.to_ascent_point = counting  # type: ignore[method-assign]
        ratios: list[list[float]] = [[] for _ in layers]
        torch.manual_seed(2)
        for x, y in batches:
            bounds = [args.gamma * float(layer.scores.detach().norm()) for layer in layers]
            _, _, did = Trainer(net, trades, opt).step(x, y, torch.zeros_like(x), perturbation=pert)
            changed += int(did)
            for i, (norm, bound) in enumerate(zip(pert.last_norms, bounds, strict=True)):
                ratios[i].append(norm / bound if bound > 0 else 0.0)
        masks[projection] = {k: v.bool() for k, v in L.masks(net).items()}
        print(
            f"\n{projection}: S2AP changed the update in {changed}/{len(batches)} iterations, "
            f"extra pass at s + z_prev in {regrads}"
        )
        for name, r in zip(names, ratios, strict=True):
            on = sum(v > 1 - 1e-4 for v in r) / len(r)
            print(
                f"  {name:28s} mean ||z||/bound {statistics.mean(r):.3f}  min {min(r):.3f}  on the bound {on:.0%}"
            )
    print()
    for a in range(len(PROJECTIONS)):
        for b in range(a + 1, len(PROJECTIONS)):
            pa, pb = PROJECTIONS[a], PROJECTIONS[b]
            print(f"Hamming(final mask {pa}, {pb}) = {hamming(masks[pa], masks[pb]):.5f}")


if __name__ == "__main__":
    main()
