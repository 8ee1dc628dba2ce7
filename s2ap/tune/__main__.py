"""``python -m s2ap.tune SPEC.yaml [--address ADDR] [--resume | --extend [N]] [--out DIR] [--quiet]``

Runs a search spec with Ray Tune (Optuna TPE inside each grid cell, ASHA on validation PGD
accuracy) over Ray Train DDP trials, and writes ``trials.parquet`` and ``epochs.parquet``.
Without ``--address`` (or ``RAY_ADDRESS``) it starts an embedded local Ray instance.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from s2ap import storage
from s2ap.cli import Failure, guarded, parser, setup_logging

EXIT_STATUS = (
    "exit status: 0 when at least one trial of every grid cell finished (failed trials are then "
    "counted in a warning line with the first one's error); 1 when a grid cell has no finished "
    "trial, with an 'error:' line naming the first trial's own error; 2 for bad input (the spec, "
    "a missing data set, a model that does not build), found before any trial runs"
)


def main(argv: list[str] | None = None) -> int:
    p = parser("python -m s2ap.tune", __doc__)
    p.epilog = EXIT_STATUS
    p.add_argument("spec", help="search spec YAML (see search_spaces/)")
    p.add_argument("--address", help="join this Ray cluster (default: RAY_ADDRESS, else an embedded Ray)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the interrupted search in its folder")
    again.add_argument(
        "--extend",
        type=int,
        nargs="?",
        const=0,
        metavar="N",
        help="extend the finished search in its folder: N more samples per grid cell (default 0), plus "
        "any grid values or samples the spec adds; only the new trials run, the tables keep the old ones",
    )
    p.add_argument("--out", help="search folder (default: <storage>/<name> from the spec)")
    p.add_argument(
        "--preflight",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="open every data set and build every model before Ray starts (default: on without "
        "--address / RAY_ADDRESS, when the data is on this machine; off when joining a cluster)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no live view, only the summary")
    p.add_argument("-v", "--verbose", action="store_true", help="also show the workers' logs")
    args = p.parse_args(argv)
    setup_logging(logging.INFO if args.verbose else logging.WARNING)

    def body() -> int:
        from s2ap.tune.spec import load_spec

        # On a cluster the resources are checked against its nodes once joined.
        joining = bool(args.address or os.environ.get("RAY_ADDRESS"))
        spec = load_spec(args.spec, nodes=None if joining else "local")
        out = None if args.out is None else storage.check(args.out, "--out")  # parsed here, once

        from s2ap.tune.search import failure_lines, run_search, summary_lines

        try:
            outcome = run_search(
                spec,
                address=args.address,
                resume=args.resume,
                extend_by=args.extend,
                out=out,
                quiet=args.quiet,
                verbose=args.verbose,
                preflight=args.preflight,
            )
        except ConnectionError as exc:
            raise Failure(f"--address: cannot reach a Ray cluster there ({exc})", 2) from None
        for line in summary_lines(spec, outcome):
            print(line)
        status, last = failure_lines(spec, outcome)
        sys.stdout.flush()
        for line in last:
            print(line, file=sys.stderr if status else sys.stdout)
        return status

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
