"""``python -m s2ap.run CONFIG.yaml [--set key=value ...]``: one experiment, one run folder.

The folder holds the resolved config, the state saved at every epoch (``--resume``
continues from it), the masks, a dense pruned checkpoint loadable into the plain model,
and the per-epoch and final metrics as Parquet.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from s2ap import cli
from s2ap.errors import TrainingDiverged
from s2ap.experiment import load
from s2ap.results import describe_accuracy


def arguments() -> cli.Parser:
    parser = cli.parser("python -m s2ap.run", __doc__)
    parser.add_argument("config", help="experiment YAML")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set prune.sparsity=0.95 (repeatable)",
    )
    parser.add_argument("--out", help="run folder (default: out_dir from the config)")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's state.pt")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar, warnings only")
    return parser


def run(args: argparse.Namespace) -> int:
    cfg = load(args.config, args.overrides)
    run_dir = Path(args.out or cfg.out_dir)
    state = run_dir / "state.pt"
    if args.resume and not state.exists():
        raise cli.Failure(f"--resume: no saved state at {state}")

    import torch

    from s2ap.pipeline import run_experiment

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        final = run_experiment(
            cfg, run_dir, resume_from=state if args.resume else None, progress=not args.quiet
        )
    except TrainingDiverged as exc:
        raise cli.Failure(f"training diverged: {exc}; epochs before it are in {run_dir}", status=1) from None
    print(summary(final, run_dir))
    return 0


def summary(final: dict[str, Any], run_dir: Path) -> str:
    """The run's result line: the headline triple on one set of test points, each figure with
    its 95% interval and point count, then the mask and where the files are."""
    attack = "AutoAttack" if final.get("robust_attack") == "autoattack" else "PGD"
    figures = [("clean", "clean_acc"), ("PGD", "pgd_acc")] + (
        [("AutoAttack", "aa_acc")] if attack == "AutoAttack" else []
    )
    shown = ", ".join(describe_accuracy(final, k, label) for label, k in figures)
    return (
        f"done: {shown} (robust = {attack}; 95% Wilson intervals, same test points); "
        f"density {final['density']:.4f}, mask from pruning epoch {final['best_mask_epoch']}"
        + (" (BEFORE S2AP began)" if final["best_mask_before_s2ap"] else "")
        + f"; results in {run_dir}"
    )


def main(argv: list[str] | None = None) -> int:
    args = arguments().parse_args(argv)
    cli.setup_logging(logging.WARNING if args.quiet else logging.INFO)
    return cli.guarded(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
