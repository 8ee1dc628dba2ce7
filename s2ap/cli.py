"""What every command line of the tool shares: arguments, logging, and how it fails.

A bad input is one ``error: <field>: <what is allowed>`` line on stderr and exit status 2,
never a traceback; :func:`guarded` turns :class:`~s2ap.errors.ConfigError` (and
:class:`Failure`, for a CLI's own messages) into exactly that.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from s2ap.errors import ConfigError


class Failure(Exception):
    """A CLI's own one-line failure with its exit status."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self) -> tuple[type[Failure], tuple[str, int]]:
        return Failure, (str(self), self.status)


class Parser(argparse.ArgumentParser):
    """Bad arguments: one ``error: arguments: ...`` line and status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: arguments: {message}", file=sys.stderr)
        raise SystemExit(2)


def parser(prog: str, doc: str | None) -> Parser:
    """A parser whose description is the first line of the module's docstring."""
    return Parser(prog=prog, description=(doc or "").strip().splitlines()[0] if doc else None)


def setup_logging(level: int) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )


def fail(message: str, status: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


def guarded(body: Callable[[], int]) -> int:
    """Run a CLI's body; bad input becomes one ``error:`` line and its exit status."""
    try:
        return body()
    except ConfigError as exc:
        return fail(str(exc))
    except Failure as exc:
        return fail(str(exc), exc.status)
