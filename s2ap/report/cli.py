"""Paper-style tables (Table 1, Table 5) and figures from run/trial Parquet tables.

``python -m s2ap.report PATH [PATH ...] [--out DIR]``: 0 on success; bad input is one
``error:`` line and status 2, a report that cannot be written one line and status 1.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from s2ap.cli import Failure, guarded, parser, setup_logging
from s2ap.report.build import build_report
from s2ap.report.load import ReportError


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: 0 on success, 2 on bad input (one ``error:`` line on stderr, no traceback)."""
    cli = parser("python -m s2ap.report", __doc__)
    cli.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="final.parquet, trials.parquet, or a folder with one; local or a URI (s3://bucket/searches/name)",
    )
    cli.add_argument(
        "--out",
        metavar="DIR",
        help="output folder (default: report/ beside the first PATH; ./report for a URI)",
    )
    args = cli.parse_args(argv)
    setup_logging(logging.WARNING)

    def body() -> int:
        try:
            report = build_report(args.paths, args.out)
        except ReportError as exc:
            raise Failure(str(exc)) from None
        except OSError as exc:
            raise Failure(f"cannot write the report: {exc}", status=1) from None
        for path in report.files:
            print(f"wrote {path}")
        for msg in report.skipped:
            print(f"skipped {msg}")
        print(f"report in {report.out_dir}")
        return 0

    return guarded(body)
