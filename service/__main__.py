"""``python -m service [--host H] [--port P] [--local-only]``: serve the job API.

Without ``S2AP_API_TOKEN`` the service refuses to start unless ``--local-only`` is given,
and then it binds to 127.0.0.1 only. ``--stop-ray`` stops the embedded Ray head kept for
unfinished jobs in ``S2AP_DATA_DIR`` and exits.
"""

from __future__ import annotations

import argparse
import logging
import sys

from s2ap.cli import Failure, guarded, parser, setup_logging
from service.settings import Settings, SettingsError, is_loopback


def main(argv: list[str] | None = None) -> int:
    cli = parser("python -m service", __doc__)
    cli.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    cli.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    cli.add_argument(
        "--local-only",
        action="store_true",
        help="allow running without S2AP_API_TOKEN; binds to 127.0.0.1 only",
    )
    cli.add_argument(
        "--stop-ray",
        action="store_true",
        help="stop the embedded Ray head recorded in the data directory, then exit",
    )
    cli.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = cli.parse_args(argv)
    setup_logging(getattr(logging, args.log_level.upper()))
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Ray poll is noise
    return guarded(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env(local_only=True if args.local_only or args.stop_ray else None)
    except SettingsError as exc:
        raise Failure(str(exc)) from None

    if args.stop_ray:
        from service.cluster.ray_head import EmbeddedRayHead

        head = EmbeddedRayHead(settings.ray_dir)
        if head.record() is None:
            print(f"no embedded Ray head recorded in {settings.data_root}")
            return 0
        head.stop()
        print("embedded Ray head stopped")
        return 0

    host = args.host or "127.0.0.1"
    if settings.local_only and not is_loopback(host):
        raise Failure(f"--host {host}: a local-only service binds to loopback only (127.0.0.1)")
    if not 0 < args.port < 65536:
        raise Failure(f"--port must be in 1..65535, got {args.port}")

    import uvicorn

    from service.app import create_app

    # One process: the poller and the SQLite store assume a single service per data dir.
    uvicorn.run(
        create_app(settings),
        host=host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=30,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
