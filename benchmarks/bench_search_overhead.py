"""What a search costs on top of running its trials by hand: wall time, one run.

The same small digits experiment, 4 seeds, run (a) as 4 direct ``python -m s2ap.run``
processes one after the other and (b) as one FIFO search, ``python -m s2ap.tune`` on an
embedded Ray, 4 one-worker trials one at a time. Both are whole command lines, timed from
start to exit (the search includes starting and stopping Ray). Prints the ratio search /
direct, and the timeline of the first trial (a fresh actor) and the second (a reused one)
from the files the search leaves: ``trials.parquet`` (when the driver started and ended each
trial), ``trials/<id>/workers/*.json`` (when the trial body began, when its process started)
and ``trials/<id>/epochs.jsonl`` (when each epoch and the final evaluation were reported).

    python benchmarks/bench_search_overhead.py [--trials 4] [--keep DIR]
    python benchmarks/bench_search_overhead.py --concurrent 2 --trials 6

``--concurrent K`` runs K at a time on both sides: K direct processes at once (the next starts
as one ends), and the search with ``max_concurrent: K``; the direct side's wall time is from
the first start to the last exit.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
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


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return wall


def timeline(
    search_dir: Path, row: dict[str, Any], epochs: list[dict[str, Any]], reused: bool
) -> list[tuple[str, float]]:
    """Where one trial's wall time went, in order. Tune notes a trial's start once its actor
    is up, so a fresh actor's process start and imports come before the trial's wall time:
    the first line shows them (0 for a reused actor)."""
    from s2ap.tune.layout import read_epochs, read_workers, trial_store

    store = trial_store(search_dir, row["trial_id"])
    worker = read_workers(store)[0]
    reports = read_epochs(store)
    start, end = row["started_at"].timestamp(), row["ended_at"].timestamp()
    entered, proc = worker["time"], worker.get("process_started") or start
    first, last_epoch, final = reports[0]["time"], reports[-2]["time"], reports[-1]["time"]
    train = [float(e["time_s"]) for e in sorted(epochs, key=lambda e: e["global_epoch"])]
    return [
        ("(before the trial) actor process up to trial start", 0.0 if reused else max(0.0, start - proc)),
        ("trial start to trial body (Tune set-up)", entered - start),
        ("data, model, first epoch's validation", first - entered - train[0]),
        ("training, every epoch", sum(train)),
        ("validation, checkpoints, Tune between epochs", last_epoch - first - sum(train[1:])),
        ("final evaluation", final - last_epoch),
        ("final report to the driver's end of trial", end - final),
    ]


def report(search_dir: Path, rows: list[dict[str, Any]], epochs: list[dict[str, Any]]) -> None:
    outside = []
    for i, row in enumerate(rows):
        reused = i > 0 and bool(set(row["pids"]) & set(rows[i - 1]["pids"]))
        parts = timeline(search_dir, row, [e for e in epochs if e["trial_id"] == row["trial_id"]], reused)
        outside.append(parts[1][1] + parts[-1][1])
        if i > 1:
            continue
        label = "first trial (fresh actor)" if i == 0 else "second trial (reused actor)"
        print(
            f"timeline of the {label}: wall {row['trial_time_s']:.2f} s, outside_training_s {row['outside_training_s']:.2f} s "
            f"(wall - training), outside the trial body {outside[-1]:.2f} s"
        )
        for name, seconds in parts:
            print(f"  {name:<52} {seconds:6.2f} s")
    print("outside the trial body, per trial: " + ", ".join(f"{x:.2f} s" for x in outside))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4, help="experiments (seeds) in each")
    parser.add_argument("--keep", help="keep the runs here instead of a temporary folder")
    parser.add_argument("--concurrent", type=int, default=1, help="experiments at a time on both sides")
    parser.add_argument("--timeline", metavar="SEARCH_DIR", help="only print the timelines of a kept search")
    args = parser.parse_args()
    import pyarrow.parquet as pq

    if args.timeline:
        search_dir = Path(args.timeline)
        rows = sorted(pq.read_table(search_dir / "trials.parquet").to_pylist(), key=lambda r: r["started_at"])
        report(search_dir, rows, pq.read_table(search_dir / "epochs.parquet").to_pylist())
        return
    root = Path(args.keep or tempfile.mkdtemp(prefix="s2ap-bench-search-"))
    root.mkdir(parents=True, exist_ok=True)
    exp = root / "experiment.yaml"
    exp.write_text(yaml.safe_dump(EXPERIMENT))
    spec = root / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "overhead",
                "base": EXPERIMENT,
                "grid": {"seed": list(range(args.trials))},
                "scheduler": {"type": "fifo"},
                "resources": {"workers": 1, "cpus_per_worker": 1},
                "max_concurrent": args.concurrent,
                "storage": str(root / "tune"),
            }
        )
    )
    env_note = f"cpu cores: {os.cpu_count()}, experiments: {args.trials} (seeds 0..{args.trials - 1})"
    print(env_note)
    try:
        commands = [
            [
                sys.executable,
                "-m",
                "s2ap.run",
                str(exp),
                "--set",
                f"seed={s}",
                "--out",
                str(root / f"direct{s}"),
                "--threads",
                "1",
                "-q",
            ]
            for s in range(args.trials)
        ]
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.concurrent) as pool:
            list(pool.map(timed, commands))
        direct = time.perf_counter() - start
        search_dir = root / "tune" / "overhead"
        search = timed([sys.executable, "-m", "s2ap.tune", str(spec), "--out", str(search_dir), "-q"])
        rows = sorted(pq.read_table(search_dir / "trials.parquet").to_pylist(), key=lambda r: r["started_at"])
        epochs = pq.read_table(search_dir / "epochs.parquet").to_pylist()
        assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
        print(f"{args.trials} x python -m s2ap.run, {args.concurrent} at a time: {direct:6.1f} s wall")
        print(f"python -m s2ap.tune, {args.trials} trials {args.concurrent} at a time: {search:6.1f} s wall")
        print(f"ratio search / direct: {search / direct:.2f}x")
        span = rows[-1]["ended_at"].timestamp() - rows[0]["started_at"].timestamp()
        print(f"  of the search: Ray start, spec and tables {search - span:.1f} s; trials {span:.1f} s")
        report(search_dir, rows, epochs)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
