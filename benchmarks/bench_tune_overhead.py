"""Per-trial framework overhead of the Tune + Train layer.

The same small digits experiment runs (a) directly, in this process, via
``run_experiment``; (b) as Tune trials, each a Ray Train run with 1 worker; (c) with 2 DDP
workers; (d) 1 worker, two trials at a time (how much of the overhead concurrency hides).
Prints the fixed seconds each trial costs on top of the direct run, and the ratio.

    python benchmarks/bench_tune_overhead.py [--trials 3] [--keep DIR]

Trial time is Tune's wall time of the trial (its trainable start to its end: Train
controller, worker group, torch.distributed, imports, data loading, the experiment,
checkpointing). Ray's own start-up is reported separately, once per search.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

EXPERIMENT: dict[str, Any] = {
    "seed": 0,
    "device": "cpu",
    "data": {"name": "digits", "image_size": 8, "train_limit": 512, "test_limit": 128, "batch_size": 32},
    "attack": {"steps": 2},
    "objective": {"name": "trades"},
    "pretrain": {"epochs": 0},  # pretraining is cached in real searches: leave it out here
    "prune": {"method": "hydra", "sparsity": 0.9, "epochs": 3},
    "finetune": {"epochs": 2, "lr": 0.01},
    "s2ap": {"enabled": True, "gamma": 0.005, "warmup_epochs": 1},
    "eval": {"pgd_steps": 5, "autoattack": False, "val_pgd_steps": 2, "val_limit": 64},
}


def direct(repeats: int) -> float:
    """Median seconds of the experiment run in-process (imports already paid)."""
    import torch

    from s2ap.experiment import from_dict
    from s2ap.pipeline import run_experiment

    torch.set_num_threads(1)
    cfg = from_dict(EXPERIMENT)
    run_experiment(cfg)  # warm-up: first-call costs (data, kernels) are not the framework's
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as run_dir:
            run_experiment(cfg, run_dir)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tune_trials(root: Path, name: str, trials: int, workers: int, concurrent: int) -> dict[str, float]:
    """Run ``trials`` identical-cost trials through the real search; seconds per trial."""
    import pyarrow.parquet as pq
    import ray

    from s2ap.tune.cluster import runtime_env
    from s2ap.tune.search import run_search
    from s2ap.tune.spec import load_spec

    spec = load_spec(
        {
            "name": name,
            "base": EXPERIMENT,
            "grid": {"seed": list(range(trials))},
            "scheduler": {"type": "fifo"},
            "resources": {"workers": workers, "cpus_per_worker": 1},
            "max_concurrent": concurrent,
            "storage": str(root),
        },
        nodes=None,
    )
    start = time.perf_counter()
    ray.init(
        address="local",
        num_cpus=max(2, workers * concurrent + 1),
        runtime_env=runtime_env(),
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    ray_up = time.perf_counter() - start
    try:
        search_start = time.perf_counter()
        outcome = run_search(spec, quiet=True)
        search_wall = time.perf_counter() - search_start
    finally:
        ray.shutdown()
    rows = pq.read_table(outcome.trials_path).to_pylist()
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    return {
        "ray_start_s": ray_up,
        "trial_s": statistics.median(r["trial_time_s"] for r in rows),
        "experiment_s": statistics.median(r["wall_time_s"] for r in rows),
        "wall_per_trial_s": search_wall / len(rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3, help="trials per configuration")
    parser.add_argument("--keep", help="keep the searches here instead of a temporary folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = Path(args.keep or tempfile.mkdtemp(prefix="s2ap-bench-tune-"))
    print(f"cpu cores: {os.cpu_count()}, trials per configuration: {args.trials}")
    base = direct(args.trials)
    print(f"direct run_experiment (in-process):            {base:6.2f} s")
    results = {}
    try:
        for label, workers, conc in (
            ("1 worker", 1, 1),
            ("2 DDP workers", 2, 1),
            ("1 worker, 2 at a time", 1, 2),
        ):
            r = tune_trials(root, label.replace(" ", "_").replace(",", ""), args.trials, workers, conc)
            results[label] = r
            print(
                f"Tune trial, {label:<22} {r['trial_s']:6.2f} s per trial "
                f"(experiment inside {r['experiment_s']:.2f} s; search wall per trial {r['wall_per_trial_s']:.2f} s; "
                f"Ray start {r['ray_start_s']:.1f} s)"
            )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print()
    for label, r in results.items():
        fixed = r["trial_s"] - base
        print(f"{label:<24} fixed {fixed:6.2f} s per trial, ratio trial / direct {r['trial_s'] / base:5.2f}x")
    hidden = results["1 worker, 2 at a time"]["wall_per_trial_s"]
    print(
        f"with 2 trials at a time the search spends {hidden:.2f} s of wall time per trial "
        f"({hidden - base:+.2f} s over the direct run)"
    )


if __name__ == "__main__":
    main()
