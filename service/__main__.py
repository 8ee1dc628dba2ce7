"""``python -m service [--host H] [--port P] [--local-only]``: serve the job API.

Without ``S2AP_API_TOKEN`` the service refuses to start unless ``--local-only`` is given,
and then it binds to 127.0.0.1 only. ``--stop-ray`` stops the embedded Ray head kept for
unfinished jobs in ``S2AP_DATA_DIR`` and exits.
"""

from __future__ import annotations

import argparse
import logging
import sys

from service.settings import Settings, SettingsError, is_loopback


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--local-only",
        action="store_true",
        help="allow running without S2AP_API_TOKEN; binds to 127.0.0.1 only",
    )
    parser.add_argument(
        "--stop-ray",
        action="store_true",
        help="stop the embedded Ray head recorded in the data directory, then exit",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Ray poll is noise
    try:
        settings = Settings.from_env(local_only=True if args.local_only or args.stop_ray else None)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    if args.stop_ray:
        from service.ray_head import EmbeddedRayHead

        head = EmbeddedRayHead(settings.data_root / "ray")
        if head.record() is None:
            print(f"no embedded Ray head recorded in {settings.data_root}")
            return 0
        head.stop()
        print("embedded Ray head stopped")
        return 0

    host = args.host or "127.0.0.1"
    if settings.local_only and not is_loopback(host):
        print(
            f"error: --host {host}: a local-only service binds to loopback only (127.0.0.1)", file=sys.stderr
        )
        return 2
    if not 0 < args.port < 65536:
        print(f"error: --port must be in 1..65535, got {args.port}", file=sys.stderr)
        return 2

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
