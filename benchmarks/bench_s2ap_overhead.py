"""Per-iteration cost of S2AP's variants against the original method, in one process.

Every variant prunes the same model from the same scores on the same batches with TRADES and
PGD-10 (HYDRA 90%); iterations are interleaved (off, surface, algorithm1, previous, off, ...)
so drift in machine load hits all of them alike. For each iteration the variant's time is
divided by that iteration's time of S2AP off; the table shows the median of those ratios, the
median milliseconds, and the passes each variant spent on the training loss (forwards with
and without a backward, per iteration) and how often each shortcut fired:

* ``off``: the original method (one forward/backward at s);
* ``surface``: ``s2ap.projection: surface``, ``ascent: fresh``;
* ``algorithm1``: the default, Algorithm 1 as printed (``ascent: fresh``, z carried over);
* ``previous``: ``algorithm1`` with ``s2ap.ascent: previous`` (no pass on the ascent).

    python benchmarks/bench_s2ap_overhead.py [--iters 25] [--threads 1] [--json FILE]

The paper measured 1.06x-1.18x on GPUs (mean 1.15x, Table 7). Targets: paper-literal
(algorithm1) <= 1.15x, cheap (previous) <= 1.05x.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from s2ap import layers as L
from s2ap.data import load_splits
from s2ap.experiment import from_dict
from s2ap.models import build_model
from s2ap.objectives import Objective, build_objective
from s2ap.pruning import build_method
from s2ap.sharpness import LayerwisePerturbation, score_perturbation
from s2ap.train import Trainer

# name -> (projection, ascent); None: S2AP off
VARIANTS: dict[str, tuple[str, str] | None] = {
    "off": None,
    "surface": ("surface", "fresh"),
    "algorithm1": ("algorithm1", "fresh"),
    "previous": ("algorithm1", "previous"),
}


class Counted:
    """The objective, counting the training-loss passes (the attack's are not counted)."""

    def __init__(self, objective: Objective) -> None:
        self.objective = objective
        self.with_backward = self.forward_only = 0

    def craft(self, *args: Any, **kwargs: Any) -> Any:
        return self.objective.craft(*args, **kwargs)

    def loss(self, *args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():
            self.with_backward += 1
        else:
            self.forward_only += 1
        return self.objective.loss(*args, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iters", type=int, default=25, help="timed iterations per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    parser.add_argument("--gamma", type=float, default=0.001)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    cfg = from_dict(
        {
            "data": {"name": args.data, "image_size": args.image_size, "batch_size": args.batch},
            "model": {"name": args.model},
            "prune": {"method": "hydra", "sparsity": 0.9},
        }
    )
    splits = load_splits(cfg.data, 0)
    i = splits.info
    torch.manual_seed(0)
    base = build_model(args.model, i.num_classes, i.in_channels, args.image_size, i.mean, i.std).to(device)
    build_method(cfg).prepare(base)
    runs: dict[str, dict[str, Any]] = {}
    for name, variant in VARIANTS.items():
        model = copy.deepcopy(base)
        scores = L.score_parameters(model)
        for p in model.parameters():
            p.requires_grad_(any(p is s for s in scores))
        pert: LayerwisePerturbation | None = None
        if variant is not None:
            layers = [layer for _, layer in L.scored_layers(model)]
            pert = score_perturbation(layers, args.gamma, variant[0], cfg.prune.lr, variant[1])
        objective = Counted(build_objective(cfg.objective, cfg.attack))  # TRADES, PGD-10
        opt = torch.optim.SGD(scores, lr=cfg.prune.lr, momentum=0.9)
        trainer = Trainer(model, objective, opt, device)  # type: ignore[arg-type]
        runs[name] = {"trainer": trainer, "pert": pert, "objective": objective, "times": []}
        runs[name].update(second=0, ascent=0)

    loader = torch.utils.data.DataLoader(splits.train, batch_size=args.batch, shuffle=True, drop_last=True)
    batches: list[Any] = []
    total = args.iters + args.warmup
    while len(batches) < total:
        batches.extend(loader)
    for it, (x, y) in enumerate(batches[:total]):
        x, y = x.to(device), y.to(device)
        if it == args.warmup:
            for r in runs.values():
                r["objective"].with_backward = r["objective"].forward_only = r["second"] = r["ascent"] = 0
        for r in runs.values():
            torch.manual_seed(it)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            r["trainer"].step(x, y, perturbation=r["pert"])
            if device.type == "cuda":
                torch.cuda.synchronize()
            if it >= args.warmup:
                r["times"].append(time.perf_counter() - t0)
                r["second"] += int(r["pert"] is not None and not r["pert"].unchanged)
                r["ascent"] += int(r["pert"] is not None and r["pert"].moved)

    off = runs["off"]["times"]
    out: dict[str, Any] = {
        "device": str(device),
        "threads": args.threads,
        "setup": f"{args.model}, {args.data} {args.image_size}px, batch {args.batch}, TRADES PGD-10, "
        f"HYDRA 90%, gamma {args.gamma}, eta {cfg.prune.lr}",
        "iterations": args.iters,
        "variants": {},
    }
    print(f"device {device} ({args.threads} threads); {out['setup']}; {args.iters} iterations each")
    print(
        f"{'variant':11s} {'ms/iter':>8s} {'ratio':>6s} {'fwd+bwd':>8s} {'fwd only':>8s} "
        f"{'ascent pass':>11s} {'pass at s+z':>11s}"
    )
    for name, r in runs.items():
        ratio = statistics.median(t / o for t, o in zip(r["times"], off, strict=True))
        n = len(r["times"])
        row = {
            "ms_per_iter": statistics.median(r["times"]) * 1000,
            "ratio_median": ratio,
            "fwd_bwd_per_iter": r["objective"].with_backward / n,
            "fwd_only_per_iter": r["objective"].forward_only / n,
            "ascent_pass_iters": r["ascent"] if r["pert"] is not None else None,
            "second_pass_iters": r["second"] if r["pert"] is not None else None,
        }
        out["variants"][name] = row
        extra = "" if r["pert"] is None else f"{r['ascent']:>6d}/{n:<4d} {r['second']:>6d}/{n:<4d}"
        print(
            f"{name:11s} {row['ms_per_iter']:8.1f} {ratio:5.3f}x {row['fwd_bwd_per_iter']:8.2f} "
            f"{row['fwd_only_per_iter']:8.2f} {extra}"
        )
    print("targets: algorithm1 <= 1.15x, previous <= 1.05x (the paper: 1.06-1.18x, mean 1.15x, on GPUs)")
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
