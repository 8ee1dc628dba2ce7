"""Search efficiency of ASHA on a gamma search.

Runs a seeded gamma search on digits with ASHA, then runs every trial ASHA stopped to the
end (same config, so the same result it would have had), and compares:

* the fraction of trial-epochs (after pretraining, which is shared and cached) ASHA used
  against running every trial to the end;
* the best final robust accuracy each finds (points = percentage points).

Trials ASHA let finish are not re-run: their configs are identical, so their full-run
results are the ones already measured.

    python benchmarks/bench_tune_asha.py [--samples 12] [--reduction-factor 4] [--keep DIR]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

BASE: dict[str, Any] = {
    "seed": 0,
    "device": "cpu",
    "data": {"name": "digits", "image_size": 8, "train_limit": 600, "test_limit": 200, "batch_size": 64},
    "attack": {"steps": 2},
    "objective": {"name": "trades"},
    "pretrain": {"epochs": 6, "lr": 0.01, "optimizer": "adam"},
    "prune": {"method": "hydra", "sparsity": 0.9, "epochs": 4, "lr": 0.1},
    "finetune": {"epochs": 8, "lr": 0.01},
    "s2ap": {"enabled": True, "gamma": 0.005, "warmup_epochs": 1},
    "eval": {"pgd_steps": 10, "autoattack": False, "val_pgd_steps": 2, "val_limit": 100},
}


def search(root: Path, name: str, spec: dict[str, Any]) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    from s2ap.tune.search import run_search
    from s2ap.tune.spec import load_spec

    loaded = load_spec({"name": name, "base": BASE, "storage": str(root), **spec}, nodes=None)
    outcome = run_search(loaded, quiet=True)
    return pq.read_table(outcome.trials_path).to_pylist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=12, help="trials in the gamma search")
    parser.add_argument("--reduction-factor", type=float, default=4.0, help="ASHA's reduction factor")
    parser.add_argument("--keep", help="keep the searches here instead of a temporary folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = Path(args.keep or tempfile.mkdtemp(prefix="s2ap-bench-asha-"))
    try:
        start = time.perf_counter()
        asha = search(
            root,
            "asha",
            {
                "search": {"s2ap.gamma": {"type": "loguniform", "low": 0.0005, "high": 0.05}},
                "num_samples": args.samples,
                # Grace period: the warm-up (1) + 1 epoch; rungs at 2 and 8 of 12 epochs.
                "scheduler": {"type": "asha", "reduction_factor": args.reduction_factor},
                "max_concurrent": 2,
            },
        )
        asha_s = time.perf_counter() - start
        stopped = [r for r in asha if r["status"] == "stopped"]
        start = time.perf_counter()
        rerun = (
            search(
                root,
                "to_the_end",
                {
                    "grid": {"s2ap.gamma": [r["s2ap.gamma"] for r in stopped]},
                    "scheduler": {"type": "fifo"},
                    "max_concurrent": 2,
                },
            )
            if stopped
            else []
        )
        full_s = time.perf_counter() - start
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    per_trial = BASE["prune"]["epochs"] + BASE["finetune"]["epochs"]
    used = sum(r["search_epochs_run"] for r in asha)
    total = per_trial * len(asha)
    finished = [r for r in asha if r["status"] == "ok"]
    full = finished + [r for r in rerun if r["status"] == "ok"]
    best_asha = max(r["robust_acc"] for r in finished)
    best_full = max(r["robust_acc"] for r in full)
    errors = [r for r in asha + rerun if r["status"] == "error"]
    print(
        f"trials: {len(asha)} ({len(finished)} finished, {len(stopped)} stopped by ASHA, {len(errors)} errored)"
    )
    print(f"ASHA search wall {asha_s:.0f} s; re-running the stopped trials to the end took {full_s:.0f} s")
    print(f"trial-epochs used by ASHA: {used} of {total} = {used / total:.1%}")
    print(
        f"best final robust accuracy: ASHA {100 * best_asha:.2f}%, all trials to the end {100 * best_full:.2f}%, "
        f"gap {100 * (best_full - best_asha):.2f} points"
    )
    print("per trial (gamma: ASHA status / epochs, robust acc to the end):")
    ends = {round(r["s2ap.gamma"], 12): r for r in full}
    for r in sorted(asha, key=lambda r: r["s2ap.gamma"]):
        end = ends.get(round(r["s2ap.gamma"], 12))
        robust = f"{100 * end['robust_acc']:.2f}%" if end and end["robust_acc"] is not None else "-"
        print(f"  {r['s2ap.gamma']:.5f}: {r['status']:<7} {r['search_epochs_run']:>2} epochs, {robust}")


if __name__ == "__main__":
    main()
