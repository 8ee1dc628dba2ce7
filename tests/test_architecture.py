"""The floor plan holds: every module imports only from its own floor or below, nothing
imports in a circle, no module outgrows one concept, and only the search (and the service's
one cluster module) touches Ray.

The floors, lowest first (the README's Architecture section draws the same plan):

1. config, coerce, errors, registry, seeding, results, stats, selection, io, cli, storage, imports: values, rules, files, statistics
2. layers, models, data, tensor_data, data_files, objectives, attacks, autoattack, distributed;
   report (reads result tables: it needs only floor 1)
3. pruning, sharpness, evaluate, metrics
4. experiment (the registries' checks), train (the one loop), probes, pretrain_cache
5. pipeline, state, best_mask
6. tune: the search on Ray
7. run, config_reference, columns_reference, api: the command lines and the Python entry point
8. the service's parts: cluster/ (the one Ray import), settings, store, specs, progress, errors, throttle, body_limit, log_paths
9. the service's job manager and request dependencies: jobs, deps
10. what serves: the JSON routes, the web page (ui/), the app and its command line
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 450
FLOORS = {
    1: [
        "s2ap",
        "s2ap.config",
        "s2ap.coerce",
        "s2ap.errors",
        "s2ap.registry",
        "s2ap.seeding",
        "s2ap.results",
        "s2ap.stats",
        "s2ap.selection",
        "s2ap.io",
        "s2ap.cli",
        "s2ap.storage",
        "s2ap.imports",
    ],
    2: [
        "s2ap.layers",
        "s2ap.models",
        "s2ap.data",
        "s2ap.tensor_data",
        "s2ap.data_files",
        "s2ap.objectives",
        "s2ap.attacks",
        "s2ap.autoattack",
        "s2ap.distributed",
        "s2ap.report",
    ],
    3: ["s2ap.pruning", "s2ap.sharpness", "s2ap.evaluate", "s2ap.metrics"],
    4: ["s2ap.experiment", "s2ap.train", "s2ap.probes", "s2ap.pretrain_cache"],
    5: ["s2ap.pipeline", "s2ap.state", "s2ap.best_mask", "s2ap.rung_probe"],
    6: ["s2ap.tune"],
    7: ["s2ap.run", "s2ap.config_reference", "s2ap.columns_reference", "s2ap.api"],
    8: [
        "service.cluster",
        "service.settings",
        "service.store",
        "service.models",
        "service.model_policy",
        "service.specs",
        "service.progress",
        "service.errors",
        "service.throttle",
        "service.body_limit",
        "service.log_paths",
    ],
    9: ["service.jobs", "service.deps"],
    10: ["service"],
}
RAY_MODULES = ("ray", "optuna")
WEB_MODULES = ("fastapi", "starlette", "uvicorn")


def modules() -> dict[str, Path]:
    found = {}
    for package in ("s2ap", "service"):
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = modules()


def floor(name: str) -> int:
    best = None
    for level, prefixes in FLOORS.items():
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + "."):
                if best is None or len(prefix) > len(best[1]):
                    best = (level, prefix)
    assert best is not None, f"{name} is on no floor: add it to FLOORS (and to the README's plan)"
    return best[0]


def imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports, anywhere in the file, resolved to project modules or to
    the top-level name of a third-party package."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package[: len(package) - node.level + 1] + ([node.module] if node.module else [])
                )
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in MODULES and "." in target:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                out.add(target)
    return out


GRAPH = {name: imports(name, path) for name, path in MODULES.items()}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_only_go_down(name: str) -> None:
    up = sorted(t for t in GRAPH[name] if t in MODULES and floor(t) > floor(name))
    assert not up, f"{name} (floor {floor(name)}) imports from higher floors: {up}"


def test_no_import_circles() -> None:
    project = {n: {t for t in ts if t in MODULES} for n, ts in GRAPH.items()}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> None:
        if node in visiting:
            raise AssertionError("import circle: " + " -> ".join(visiting[visiting.index(node) :] + [node]))
        if node in done:
            return
        visiting.append(node)
        for child in sorted(project[node]):
            visit(child)
        visiting.pop()
        done.add(node)

    for name in sorted(project):
        visit(name)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_over_the_line_limit(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= LIMIT, f"{MODULES[name].relative_to(ROOT)} has {lines} lines (limit {LIMIT})"


def test_only_the_search_and_one_service_module_touch_ray_and_the_core_no_web() -> None:
    ray_users = sorted(n for n, ts in GRAPH.items() if any(t.split(".")[0] in RAY_MODULES for t in ts))
    allowed = [n for n in ray_users if n.startswith("s2ap.tune.") or n == "service.cluster.ray_cluster"]
    assert ray_users == allowed, (
        f"Ray imported outside s2ap.tune and service.cluster.ray_cluster: {sorted(set(ray_users) - set(allowed))}"
    )
    assert (
        any(n.startswith("service.") for n in ray_users)
        and len([n for n in ray_users if n.startswith("service.")]) == 1
    )
    for light in ("s2ap.tune", "s2ap.tune.spec"):
        assert not {t.split(".")[0] for t in GRAPH[light]} & set(RAY_MODULES), f"{light} must not import Ray"
    web = sorted(
        n
        for n, ts in GRAPH.items()
        if n.startswith("s2ap") and {t.split(".")[0] for t in ts} & set(WEB_MODULES)
    )
    assert not web, f"the core imports a web framework: {web}"
