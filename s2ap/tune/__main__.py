"""``python -m s2ap.tune SPEC.yaml [--address ADDR] [--resume] [--out DIR] [--quiet]``

Runs a search spec with Ray Tune (Optuna TPE inside each grid cell, ASHA on validation PGD
accuracy) over Ray Train DDP trials, and writes ``trials.parquet`` and ``epochs.parquet``.
Without ``--address`` (or ``RAY_ADDRESS``) it starts an embedded local Ray instance.
"""

from __future__ import annotations

import logging
import os
import sys

from s2ap import storage
from s2ap.cli import Failure, guarded, parser, setup_logging


def main(argv: list[str] | None = None) -> int:
    p = parser("python -m s2ap.tune", __doc__)
    p.add_argument("spec", help="search spec YAML (see search_spaces/)")
    p.add_argument("--address", help="join this Ray cluster (default: RAY_ADDRESS, else an embedded Ray)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted search in its folder")
    p.add_argument("--out", help="search folder (default: <storage>/<name> from the spec)")
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

        from s2ap.tune.search import run_search, summary_lines

        try:
            outcome = run_search(
                spec,
                address=args.address,
                resume=args.resume,
                out=out,
                quiet=args.quiet,
                verbose=args.verbose,
            )
        except ConnectionError as exc:
            raise Failure(f"--address: cannot reach a Ray cluster there ({exc})", 2) from None
        for line in summary_lines(spec, outcome):
            print(line)
        return 0

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
