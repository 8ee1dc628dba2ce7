"""Which scheduler saves trial-epochs without losing the winner? Record searches once, replay.

1. ``record DIR --seeds 0 1 2``: runs ``search_spaces/asha_study.yaml`` (24 digits trials of a
   gamma / pruning-lr / finetuning-lr search, every trial to its end, probes after pruning
   epochs 1-3) once per spec seed, into ``DIR/seed-S``. Each seed samples other values and
   has its own data split, pretrained model and attack starts: independent recordings.
   ``--spec`` records a fifo spec of your own setting instead (probes optional).
2. ``analyse DIR``: per recording, Spearman's rho between each rung value (per-epoch
   ``val_pgd_acc``, each probe) and the final validation robust accuracy (PGD-10 on every
   validation point after the last epoch: what a search picks by); then every candidate
   scheduler (``asha_replay.py``: ASHA on epoch or probe rungs, synchronous halving on
   probes) replayed over ``--draws`` random brackets of ``--bracket`` trials in random
   order, per recording: the share of the bracket's trial-epochs it used (probes counted)
   and the regret of its pick (best final value in the bracket minus the pick's). Nothing
   is ranked or selected by test accuracy; the test split is never read.

   The goal (issue 30): <= 40% of trial-epochs at a median regret of at most one standard
   error (binomial, of the best trial's final validation accuracy). The rule that names the
   recommended scheduler: among candidates that meet the goal on every *selection*
   recording (``--select``), the lowest pooled median regret, then the lowest share; with
   none, the lowest pooled share among those whose median regret is within one SE on every
   selection recording. Recordings outside ``--select`` are reported as a check of that
   choice. Controls (halving by arrival order, no rung value) show what stopping without
   information gives; they are never recommended.

``--json FILE`` writes ``{"default": {...}, "recommended": {...}, "candidates": {...},
"recordings": [...]}``: "default" is the scheduler a search uses when its spec names none.

    python benchmarks/bench_asha.py record runs/asha_study --seeds 0 1 2 3 4 5 6
    python benchmarks/bench_asha.py analyse runs/asha_study --json asha.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from asha_replay import Recorded, Scheduler, replay, spearman  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "search_spaces" / "asha_study.yaml"
GOAL_SHARE = 0.40
RFS = (2.0, 3.0, 4.0)


# --------------------------------------------------------------------------- record


def record(out: Path, seeds: Sequence[int], samples: int | None, spec: Path = SPEC) -> None:
    """One search of ``spec`` per seed into ``out/seed-S`` (a finished one is kept)."""
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        folder = out / f"seed-{seed}"
        if (folder / "trials.parquet").is_file():
            print(f"seed {seed}: recorded already in {folder}")
            continue
        data = yaml.safe_load(spec.read_text(encoding="utf-8"))
        data["seed"] = seed
        data["base"]["seed"] = seed
        if samples is not None:
            data["num_samples"] = samples
        path = out / f"spec-seed-{seed}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        cmd = [sys.executable, "-m", "s2ap.tune", str(path), "--out", str(folder), "-q"]
        subprocess.run(cmd, check=True, cwd=ROOT)


def load(folder: Path) -> list[Recorded]:
    """The complete trials of a recorded search, in trial-id order."""
    import pandas as pd

    rows = pd.read_parquet(folder / "epochs.parquet")
    rows = rows[rows["search_epoch"] >= 1].sort_values(["trial_id", "search_epoch"])
    trials = []
    for _, t in rows.groupby("trial_id", sort=True):
        epoch_s = float(t["time_s"].mean())
        probes = {
            int(r.search_epoch): (float(r.probe_val_pgd_acc), float(r.probe_time_s) / epoch_s)
            for r in t.itertuples()
            if r.probe_val_pgd_acc is not None and not math.isnan(r.probe_val_pgd_acc)
        }
        trials.append(Recorded(tuple(float(v) for v in t["val_pgd_acc"]), probes))
    lengths = {t.epochs for t in trials}
    if len(lengths) != 1:
        raise SystemExit(f"{folder}: trials of different lengths {sorted(lengths)}: record with fifo")
    return trials


# --------------------------------------------------------------------------- analyse


def default_scheduler(spec_file: Path) -> Scheduler:
    """The scheduler a search of this spec gets when the spec names none (the code's own
    default, resolved as ``python -m s2ap.tune`` resolves it)."""
    import yaml

    from s2ap.tune.spec import AshaSpec, load_spec

    data = yaml.safe_load(spec_file.read_text(encoding="utf-8"))
    data.pop("scheduler", None)
    spec = load_spec(data, nodes=None)
    s = spec.scheduler
    if isinstance(s, AshaSpec) and s.rungs == "epochs":
        return Scheduler("asha", s.reduction_factor, rungs="epochs", grace=spec.grace_period())
    return Scheduler(s.type, s.reduction_factor, probe_after=spec.probe_after())


def candidates(default: Scheduler, probed: Sequence[int], epochs: int) -> list[Scheduler]:
    """The default first, then ASHA on epoch rungs with every first rung before the last
    epoch, then ASHA and halving on the recorded probes (each probe alone, the first two, all)."""
    out = [default]
    out += [Scheduler("asha", rf, rungs="epochs", grace=g) for g in range(1, epochs) for rf in RFS]
    for rf in RFS:
        out += [Scheduler("asha", rf, probe_after=s) for s in probe_sets(probed)]
        out += [Scheduler("halving", rf, probe_after=s) for s in probe_sets(probed)]
    return list({s.label: s for s in out}.values())


def controls(probed: Sequence[int]) -> list[Scheduler]:
    """Halving that keeps trials by arrival order (no rung value): what stopping without
    information costs, beside the schedulers that use one. Never recommended."""
    return [Scheduler("random", rf, probe_after=s) for rf in RFS for s in probe_sets(probed)[:1]]


def probe_sets(probed: Sequence[int]) -> list[tuple[int, ...]]:
    sets = [(p,) for p in probed] + [tuple(probed[:2]), tuple(probed)]
    return list(dict.fromkeys(s for s in sets if s))


def summarise(s: Scheduler, trials: list[Recorded], draws: list[list[int]], se: float) -> dict[str, float]:
    shares, regrets = [], []
    for order in draws:
        share, regret = replay(s, trials, order)
        shares.append(share)
        regrets.append(regret)
    return {
        "share": statistics.fmean(shares),
        "median_regret": statistics.median(regrets),
        "p90_regret": sorted(regrets)[int(0.9 * len(regrets))],
        "within_se": sum(r <= se for r in regrets) / len(regrets),
        "regret_se": se,
    }


def meets(m: dict[str, float]) -> bool:
    return m["share"] <= GOAL_SHARE and m["median_regret"] <= m["regret_se"]


def pooled(per: list[dict[str, float]]) -> dict[str, float]:
    """Across recordings: mean share, median regret and SE (equal weight per recording)."""
    keys = ("share", "median_regret", "p90_regret", "within_se", "regret_se")
    return {k: statistics.fmean(m[k] for m in per) for k in keys}


def choose(results: dict[str, dict[str, Any]], select: Sequence[int]) -> str:
    """The rule in the module docstring, on the selection recordings only."""

    def on(name: str) -> list[dict[str, float]]:
        return [results[name]["per_recording"][i] for i in select]

    ok = [n for n in results if all(meets(m) for m in on(n))]
    if ok:
        return min(ok, key=lambda n: (pooled(on(n))["median_regret"], pooled(on(n))["share"]))
    safe = [n for n in results if all(m["median_regret"] <= m["regret_se"] for m in on(n))]
    return min(safe or results, key=lambda n: pooled(on(n))["share"])


def analyse(out: Path, draws: int, bracket: int | None, select: Sequence[int]) -> dict[str, Any]:
    folders = sorted(out.glob("seed-*"), key=lambda p: int(p.name.split("-")[1]))
    if len(folders) < 2:
        raise SystemExit(f"{out}: need at least two recordings (seed-*), found {len(folders)}")
    seeds = [int(f.name.split("-")[1]) for f in folders]
    missing = [s for s in select if s not in seeds]
    if missing:
        raise SystemExit(f"--select: no recording for seed {missing[0]} in {out} (have {seeds})")
    recordings, results = [], {}
    rng = random.Random(0)
    schedulers: list[Scheduler] = []
    for folder, seed in zip(folders, seeds, strict=True):
        trials = load(folder)
        n_val = _validation_points(folder)
        finals = [t.final for t in trials]
        best = max(finals)
        se = math.sqrt(best * (1 - best) / n_val)
        probed = sorted(trials[0].probes)
        size = min(bracket or len(trials), len(trials))
        orders = [rng.sample(range(len(trials)), size) for _ in range(draws)]
        rho_epochs = [spearman([t.curve[e] for t in trials], finals) for e in range(trials[0].epochs)]
        rho_probes = {p: spearman([t.probes[p][0] for t in trials], finals) for p in probed}
        probe_cost = statistics.fmean(c for t in trials for _, c in t.probes.values())
        recordings.append(
            {
                "seed": seed,
                "folder": str(folder),
                "trials": len(trials),
                "epochs": trials[0].epochs,
                "validation_points": n_val,
                "best_final": best,
                "median_final": statistics.median(finals),
                "se_at_best": se,
                "bracket": size,
                "draws": draws,
                "probe_cost_epochs": probe_cost,
                "spearman_epochs": rho_epochs,
                "spearman_probes": {str(p): r for p, r in rho_probes.items()},
            }
        )
        if not schedulers:
            default = default_scheduler(out / f"spec-seed-{seed}.yaml")
            schedulers = candidates(default, probed, trials[0].epochs) + controls(probed)
        for s in schedulers:
            entry = results.setdefault(s.label, {"scheduler": s, "per_recording": []})
            entry["per_recording"].append(summarise(s, trials, orders, se))
    ranked = {n: r for n, r in results.items() if r["scheduler"].kind != "random"}
    chosen = choose(ranked, [seeds.index(s) for s in select])
    default = schedulers[0].label

    def entry(name: str) -> dict[str, Any]:
        per = results[name]["per_recording"]
        s = results[name]["scheduler"]
        return {
            "scheduler": name,
            "spec": _spec_of(s),
            **pooled(per),
            "meets_goal_on": [seeds[i] for i, m in enumerate(per) if meets(m)],
            "per_recording": {str(seeds[i]): m for i, m in enumerate(per)},
        }

    return {
        "goal": {"share": GOAL_SHARE, "median_regret": "<= regret_se"},
        "select": list(select),
        "default": entry(default),
        "recommended": entry(chosen),
        "candidates": {n: entry(n) for n in ranked},
        "controls": {n: entry(n) for n in results if n not in ranked},
        "recordings": recordings,
    }


def _validation_points(folder: Path) -> int:
    import pandas as pd

    rows = pd.read_parquet(folder / "epochs.parquet", columns=["val_pgd_acc_n"])
    return int(rows["val_pgd_acc_n"].dropna().iloc[-1])


def _spec_of(s: Scheduler) -> dict[str, Any] | None:
    """The spec lines that give a search this scheduler (None: a control, not offered)."""
    if s.kind == "random":
        return None
    if s.rungs == "epochs":
        return {"scheduler": {"type": "asha", "grace_period": s.grace, "reduction_factor": s.rf}}
    sched: dict[str, Any] = {"type": s.kind, "reduction_factor": s.rf}
    if s.kind == "asha":
        sched["rungs"] = "probe"
    return {"scheduler": sched, "base": {"prune": {"probe_after": list(s.probe_after)}}}


def show(result: dict[str, Any]) -> None:
    for r in result["recordings"]:
        print(
            f"seed {r['seed']}: {r['trials']} trials x {r['epochs']} search epochs, {r['validation_points']} "
            f"validation points; best final {r['best_final']:.4f} (SE {r['se_at_best']:.4f}), median "
            f"{r['median_final']:.4f}; a probe costs {r['probe_cost_epochs']:.2f} epochs"
        )
        print(
            "  Spearman with the final value, per search epoch: "
            + " ".join(f"{x:.2f}" for x in r["spearman_epochs"])
        )
        print(
            "  Spearman, probes: " + ", ".join(f"after {p}: {x:.2f}" for p, x in r["spearman_probes"].items())
        )
    draws, bracket = result["recordings"][0]["draws"], result["recordings"][0]["bracket"]
    print(f"\nreplayed over {draws} random brackets of {bracket} trials in random order, per recording")
    seeds = [str(r["seed"]) for r in result["recordings"]]
    print(f"  {'scheduler':<40} " + "  ".join(f"seed {s}: share regret " for s in seeds) + " goal met on")
    for name, c in [*result["candidates"].items(), *result["controls"].items()]:
        cols = "  ".join(
            f"{c['per_recording'][s]['share']:13.1%} {c['per_recording'][s]['median_regret']:.4f}"
            for s in seeds
        )
        print(f"  {name:<40} {cols}  {c['meets_goal_on']}")
    d, r = result["default"], result["recommended"]
    print(
        f"\ndefault ({d['scheduler']}): share {d['share']:.1%}, median regret {d['median_regret']:.4f}, SE {d['regret_se']:.4f}"
    )
    print(
        f"recommended by the rule on seeds {result['select']} ({r['scheduler']}): share {r['share']:.1%}, "
        f"median regret {r['median_regret']:.4f}, SE {r['regret_se']:.4f}; goal met on seeds {r['meets_goal_on']}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="run the recording searches")
    rec.add_argument("out")
    rec.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    rec.add_argument("--samples", type=int, help="trials per recording (default: the spec's)")
    rec.add_argument("--spec", default=str(SPEC), help="a fifo search spec of your own setting to record")
    ana = sub.add_parser("analyse", help="replay the schedulers over the recordings")
    ana.add_argument("out")
    ana.add_argument("--draws", type=int, default=1000)
    ana.add_argument("--bracket", type=int, default=16, help="trials per replayed bracket (0: all)")
    ana.add_argument(
        "--select", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds the rule chooses on"
    )
    ana.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    if args.command == "record":
        record(Path(args.out), args.seeds, args.samples, Path(args.spec))
        return 0
    result = analyse(Path(args.out), args.draws, args.bracket or None, args.select)
    show(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
