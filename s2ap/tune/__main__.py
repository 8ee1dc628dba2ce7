"""``python -m s2ap.tune SPEC.yaml [--address ADDR] [--resume] [--out DIR] [--quiet]``

Runs a search spec with Ray Tune (Optuna TPE inside each grid cell, ASHA on validation PGD
accuracy) over Ray Train DDP trials, and writes ``trials.parquet`` and ``epochs.parquet``.
Without ``--address`` (or ``RAY_ADDRESS``) it starts an embedded local Ray instance.
"""

from __future__ import annotations

import argparse
import logging
import sys

from s2ap.config import ConfigError


class _Parser(argparse.ArgumentParser):
    """Bad arguments: one ``error: <field>: <what is allowed>`` line and status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: arguments: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m s2ap.tune", description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="search spec YAML (see search_spaces/)")
    parser.add_argument(
        "--address", help="join this Ray cluster (default: RAY_ADDRESS, else an embedded Ray)"
    )
    parser.add_argument("--resume", action="store_true", help="continue the interrupted search in its folder")
    parser.add_argument("--out", help="search folder (default: <storage>/<name> from the spec)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no live view, only the summary")
    parser.add_argument("-v", "--verbose", action="store_true", help="also show the workers' logs")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from s2ap.tune.spec import load_spec

    try:
        import os

        joining = bool(args.address or os.environ.get("RAY_ADDRESS"))
        # On a cluster the resources are checked against its nodes once joined.
        spec = load_spec(args.spec, nodes=None if joining else "local")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from s2ap.tune.search import run_search, summary_lines

    try:
        outcome = run_search(
            spec,
            address=args.address,
            resume=args.resume,
            out=args.out,
            quiet=args.quiet,
            verbose=args.verbose,
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ConnectionError as exc:
        print(f"error: --address: cannot reach a Ray cluster there ({exc})", file=sys.stderr)
        return 2
    for line in summary_lines(spec, outcome):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
