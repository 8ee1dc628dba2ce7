"""Job logs without server paths: the data directory, the interpreter and the install it
runs from, a local results folder and the home folder are replaced by short names before a
log (or an error taken from it) is shown on the page or over the API.

A job's log is its driver's output: Ray's lines name the entrypoint (the interpreter's
absolute path, the spec's and the results' paths in the data directory), and a traceback
names every source file it passes through. None of that helps a reader more than
``<data>/jobs/ID/spec.yaml`` or ``<env>/lib/python3.11/site-packages/ray/...`` does, and
all of it tells the host's layout to anyone holding the token.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path

import s2ap
from s2ap import storage

DATA, PYTHON, ENV, SOURCE, STORAGE, HOME = "<data>", "python", "<env>", "<src>", "<storage>", "~"


class PathNames:
    """Replace each of a set of absolute paths by its short name, the longest first, and
    only whole path components (``/srv/data`` is not replaced inside ``/srv/data2``)."""

    def __init__(self, names: Iterable[tuple[str | Path | None, str]]) -> None:
        table: dict[str, str] = {}
        for path, name in names:
            text = str(path).rstrip("/") if path else ""
            if len(text) > 1 and text.startswith("/"):  # never "/" itself
                table.setdefault(text, name)
        self.table = table
        ordered = sorted(table, key=len, reverse=True)
        self._pattern = (
            re.compile(r"(?<![\w./-])(" + "|".join(map(re.escape, ordered)) + r")(?![\w.-])")
            if ordered
            else None
        )

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: self.table[m.group(1)], text)


def server_paths(data_dir: Path, job_python: str, storage_location: str | None) -> PathNames:
    """The paths of this service's host a job log can carry, each with its short name."""
    data = [(data_dir.expanduser().absolute(), DATA), (data_dir.expanduser().resolve(), DATA)]
    python = (
        [(job_python, PYTHON), (os.path.realpath(job_python), PYTHON)] if job_python.startswith("/") else []
    )
    prefixes = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix}
    source = Path(s2ap.__file__).resolve().parent.parent  # the checkout s2ap is imported from
    local = [] if storage_location is None or storage.is_remote(storage_location) else [storage_location]
    return PathNames(
        [
            *data,
            *python,
            (sys.executable, PYTHON),
            *((p, ENV) for p in sorted(prefixes)),
            (source, SOURCE),
            *((Path(p).expanduser().absolute(), STORAGE) for p in local),
            (Path.home(), HOME),
        ]
    )
