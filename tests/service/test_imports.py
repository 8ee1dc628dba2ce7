"""The service's place in the floor plan, read from its source: Ray only through
``service/cluster/ray_cluster.py`` (and no private Ray API), and of ``s2ap`` only the floor-1 modules,
the spec validator and the result tables' readers (for the web page), never the search or
anything else that trains or imports Ray."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parents[2] / "service"
S2AP_ALLOWED = {"s2ap", "s2ap.errors", "s2ap.io", "s2ap.config", "s2ap.cli", "s2ap.storage", "s2ap.tune.spec"}
# The web page (service/ui/) reads the result tables with the project's
# own readers, so it shows what the report and the search summary show: read-only modules
# that neither train nor import Ray (checked below by importing them).
# s2ap.tune.layout: where a search keeps its files (the live view reads running trials there).
S2AP_READERS = {
    "s2ap.results",
    "s2ap.stats",
    "s2ap.selection",
    "s2ap.tune.results",
    "s2ap.tune.layout",
    "s2ap.report",
}


def imported_modules() -> dict[str, set[str]]:
    """Each service module (path relative to ``service/``) -> the modules it imports."""
    found: dict[str, set[str]] = {}
    for path in sorted(SERVICE.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
        found[path.relative_to(SERVICE).as_posix()] = names
    return found


def test_only_the_ray_module_imports_ray() -> None:
    importers = {
        module
        for module, names in imported_modules().items()
        if any(name == "ray" or name.startswith("ray.") for name in names)
    }
    assert importers == {"cluster/ray_cluster.py"}
    for path in SERVICE.rglob("*.py"):
        assert "ray._raylet" not in path.read_text(), path  # no private Ray API anywhere


def test_the_service_uses_only_the_lower_floors_of_s2ap() -> None:
    for module, names in imported_modules().items():
        used = {name for name in names if name == "s2ap" or name.startswith("s2ap.")}
        readers = {name for name in used if name in S2AP_READERS or name.startswith("s2ap.report.")}
        assert used - readers <= S2AP_ALLOWED, f"service/{module} imports {sorted(used - S2AP_ALLOWED)}"


@pytest.mark.slow  # a fresh interpreter importing the page
def test_the_web_page_and_the_readers_it_uses_import_no_ray() -> None:
    code = (
        "import sys, service.ui.routes, s2ap.report, s2ap.tune.results, s2ap.tune.layout; "
        "print(sorted(m for m in ('ray', 'optuna') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=SERVICE.parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
