"""Do ASHA's rungs carry signal? Record complete learning curves once, then replay ASHA.

1. ``record``: K trials of a digits gamma / learning-rate search (configs drawn from a seeded
   RNG, pretraining shared through the cache), each run to the end with ``run_experiment``.
   After every epoch the benchmark attacks every validation point with PGD-2 and PGD-10 and
   keeps, per point, whether it was still classified correctly; so any rung metric (a subset
   of n validation points, either attack, smoothed over the last epochs or not) can be
   computed afterwards from the same curves. Each trial is one JSON file; run it in pieces
   (``--start`` / ``--count``).
2. ``analyse``: for each rung metric, the Spearman correlation at every search epoch between
   the metric and the final validation robust accuracy (all validation points, PGD-10, after
   the last epoch), then ASHA (Ray's asynchronous successive halving rule, as
   ``AsyncHyperBandScheduler`` applies it) replayed over many random arrival orders, trials
   one at a time: the share of the grid's trial-epochs it used and the regret of its pick
   (best final validation robust accuracy of all trials minus that of the best trial ASHA let
   finish). Nothing is ranked by test accuracy; the test split is not touched.

    python benchmarks/bench_asha.py record DIR --start 0 --count 8
    python benchmarks/bench_asha.py analyse DIR [--orders 2000]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BASE: dict[str, Any] = {
    "seed": 0,
    "device": "cpu",
    "data": {
        "name": "digits",
        "image_size": 8,
        "train_limit": 600,
        "test_limit": 200,
        "batch_size": 64,
        "val_fraction": 0.25,
    },
    "attack": {"steps": 2},
    "objective": {"name": "trades"},
    "pretrain": {"epochs": 6, "lr": 0.01, "optimizer": "adam"},
    "prune": {"method": "hydra", "sparsity": 0.9, "epochs": 4, "lr": 0.1},
    "finetune": {"epochs": 8, "lr": 0.01},
    "s2ap": {"enabled": True, "gamma": 0.005, "warmup_epochs": 1},
    "eval": {"pgd_steps": 10, "autoattack": False, "val_pgd_steps": 2, "val_limit": 100},
}
STEPS = (2, 10)  # attacks recorded per epoch on every validation point


def trial_config(k: int) -> dict[str, Any]:
    """Trial k's searched values, from a seeded RNG (the same k gives the same trial)."""
    rng = random.Random(1000 + k)
    return {
        "s2ap.gamma": math.exp(rng.uniform(math.log(0.0005), math.log(0.05))),
        "prune.lr": math.exp(rng.uniform(math.log(0.01), math.log(1.0))),
        "finetune.lr": math.exp(rng.uniform(math.log(0.001), math.log(0.1))),
    }


# --------------------------------------------------------------------------- record


def record(out: Path, start: int, count: int, threads: int) -> None:
    import torch

    from s2ap.attacks import PGD, eval_mode
    from s2ap.experiment import from_dict, with_overrides
    from s2ap.pipeline import Pipeline
    from s2ap.tune.clock import search_epoch

    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    for k in range(start, start + count):
        path = out / f"trial-{k:03d}.json"
        if path.exists():
            continue
        values = trial_config(k)
        cfg = with_overrides(from_dict(BASE), values)
        curve: list[dict[str, Any]] = []
        holder: dict[str, Any] = {}

        def reporter(
            metrics: dict[str, Any],
            state: Path | None,
            cfg: Any = cfg,
            curve: list = curve,
            holder: dict = holder,
        ) -> None:
            p = holder["pipeline"]
            rng = torch.get_rng_state()
            flags: dict[str, list[int]] = {}
            loader = torch.utils.data.DataLoader(p.splits.val, batch_size=256)
            with eval_mode(p.model):
                for steps in STEPS:
                    torch.manual_seed(steps)  # the same attack start for every trial and epoch
                    a = cfg.attack
                    attack = PGD(a.eps, a.step_size, steps, a.random_start)
                    got: list[int] = []
                    for x, y in loader:
                        x_adv = attack(p.model, x, y)
                        with torch.no_grad():
                            got += (p.model(x_adv).argmax(1) == y).int().tolist()
                    flags[f"pgd{steps}"] = got
            torch.set_rng_state(rng)
            epoch = search_epoch(cfg, str(metrics["phase"]), int(metrics["epoch"]))
            if epoch > 0:
                curve.append({"search_epoch": epoch, "val_pgd_acc": metrics["val_pgd_acc"], **flags})

        began = time.perf_counter()
        pipeline = Pipeline(cfg, None, reporter, pretrain_cache=str(out / "cache"))
        holder["pipeline"] = pipeline
        final = pipeline.run()
        text = json.dumps({"k": k, "values": values, "curve": curve, "test_robust_acc": final["robust_acc"]})
        path.write_text(text)
        print(f"trial {k}: {len(curve)} epochs in {time.perf_counter() - began:.1f} s", flush=True)


# --------------------------------------------------------------------------- analyse


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    def ranks(v: Sequence[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for m in range(i, j + 1):
                r[order[m]] = (i + j) / 2
            i = j + 1
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    sa = math.sqrt(sum((x - ma) ** 2 for x in ra))
    sb = math.sqrt(sum((y - mb) ** 2 for y in rb))
    return cov / (sa * sb) if sa and sb else float("nan")


def metric_curves(trials: list[dict[str, Any]], attack: str, n: int | None, smooth: int) -> list[list[float]]:
    """Per trial, per search epoch: robust accuracy on the first n validation points under
    ``attack``, averaged over the last ``smooth`` epochs."""
    out = []
    for t in trials:
        raw = []
        for e in t["curve"]:
            flags = e[attack][:n] if n else e[attack]
            raw.append(sum(flags) / len(flags))
        out.append([statistics.fmean(raw[max(0, i - smooth + 1) : i + 1]) for i in range(len(raw))])
    return out


def asha_replay(
    curves: list[list[float]], finals: list[float], grace: int, rf: float, order: Sequence[int]
) -> tuple[int, int]:
    """Ray's ASHA rule (``_Bracket.on_result`` with ``stop_last_trials=False`` and the
    project's ``max_t`` = last epoch - 1), trials one at a time in ``order``: returns the
    trial-epochs used and the pick (the finished trial with the best final value)."""
    import numpy as np

    max_t = len(curves[0]) - 1
    n_rungs = int(math.log(max_t / grace) / math.log(rf) + 1)
    rungs = [grace * rf**k for k in reversed(range(n_rungs))]  # descending, as Ray keeps them
    recorded: dict[float, list[float]] = {m: [] for m in rungs}
    used, finished = 0, []
    for i in order:
        judged: set[float] = set()
        stopped = False
        for t, value in enumerate(curves[i], start=1):
            used += 1
            for m in rungs:
                if t >= m and m in judged:
                    break  # the decision at this rung is made: train on
                if t < m:
                    continue
                values = recorded[m]
                cutoff = float(np.nanpercentile(values, (1 - 1 / rf) * 100)) if values else None
                values.append(value)
                judged.add(m)
                stopped = cutoff is not None and value < cutoff
                break
            if stopped:
                break
        if not stopped:
            finished.append(i)
    return used, max(finished, key=lambda j: finals[j])


def analyse(out: Path, orders: int, graces: Sequence[int], only: str | None) -> None:
    trials = sorted((json.loads(p.read_text()) for p in out.glob("trial-*.json")), key=lambda t: t["k"])
    if len(trials) < 4:
        raise SystemExit(f"only {len(trials)} recorded trials in {out}")
    epochs = len(trials[0]["curve"])
    n_val = len(trials[0]["curve"][-1]["pgd10"])
    finals = [statistics.fmean(t["curve"][-1]["pgd10"]) for t in trials]
    best = max(finals)
    se = math.sqrt(best * (1 - best) / n_val)
    print(f"{len(trials)} complete curves, {epochs} search epochs each, {n_val} validation points")
    print(
        f"final validation robust accuracy (PGD-10, all points): best {best:.4f}, median "
        f"{statistics.median(finals):.4f}, worst {min(finals):.4f}; standard error at the best {se:.4f}"
    )
    variants = [
        ("PGD-2, 100 points (the old rung metric)", "pgd2", 100, 1),
        ("PGD-2, all points", "pgd2", None, 1),
        ("PGD-10, 100 points", "pgd10", 100, 1),
        ("PGD-10, all points", "pgd10", None, 1),
        ("PGD-10, all points, mean of 2 epochs", "pgd10", None, 2),
        ("PGD-2, all points, mean of 2 epochs", "pgd2", None, 2),
    ]
    print("\nSpearman correlation with the final validation robust accuracy, per search epoch:")
    print(" " * 42 + " ".join(f"{e:>5d}" for e in range(1, epochs + 1)))
    all_curves = {}
    variants = [v for v in variants if only is None or only in v[0]]
    for label, attack, n, smooth in variants:
        curves = metric_curves(trials, attack, n, smooth)
        all_curves[label] = curves
        rho = [spearman([c[e] for c in curves], finals) for e in range(epochs)]
        print(f"  {label:<40} " + " ".join(f"{r:5.2f}" for r in rho))
    print(f"\nASHA replayed over {orders} random arrival orders, one trial at a time:")
    print(f"  {'rung metric':<40} grace rf  epochs used  median regret  p90 regret  regret<=SE")
    rng = random.Random(0)
    perms = [rng.sample(range(len(trials)), len(trials)) for _ in range(orders)]
    rows = []
    for label, curves in all_curves.items():
        for grace in graces:
            for rf in (2.0, 3.0, 4.0):
                if grace > epochs - 1:
                    continue  # no rung before the last epoch
                used, regrets = [], []
                for perm in perms:
                    u, pick = asha_replay(curves, finals, grace, rf, perm)
                    used.append(u / (epochs * len(trials)))
                    regrets.append(best - finals[pick])
                regrets.sort()
                rows.append(
                    (label, grace, rf, statistics.fmean(used), statistics.median(regrets),
                     regrets[int(0.9 * len(regrets))], sum(r <= se for r in regrets) / len(regrets))
                )  # fmt: skip
    for label, grace, rf, used, med, p90, ok in rows:
        print(f"  {label:<40} {grace:5d} {rf:3.0f} {used:11.1%} {med:14.4f} {p90:11.4f} {ok:10.1%}")
    goal = [r for r in rows if r[3] <= 0.40 and r[4] <= se]
    print(
        f"\ngoal (<= 40% of trial-epochs, median regret <= SE {se:.4f}): "
        + ("met by " + "; ".join(f"{r[0]} grace {r[1]} rf {r[2]:g}" for r in goal) if goal else "not met")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("out")
    rec.add_argument("--start", type=int, default=0)
    rec.add_argument("--count", type=int, default=8)
    rec.add_argument("--threads", type=int, default=1)
    ana = sub.add_parser("analyse")
    ana.add_argument("out")
    ana.add_argument("--orders", type=int, default=2000)
    ana.add_argument("--graces", default="1,2,3,4,5,6,7", help="grace periods to replay (comma-separated)")
    ana.add_argument("--only", help="only the rung metrics whose label contains this")
    args = parser.parse_args()
    if args.command == "record":
        record(Path(args.out), args.start, args.count, args.threads)
    else:
        analyse(Path(args.out), args.orders, [int(g) for g in args.graces.split(",")], args.only)
    return None


if __name__ == "__main__":
    sys.exit(main())
