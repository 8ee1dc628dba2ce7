"""Submitted specs: parsed as data, confined to the data directory, validated like the CLI.

A spec arrives as YAML or JSON. It is data, never code: YAML goes through ``safe_load``,
anything but plain mappings, lists, strings, numbers, booleans and nulls is refused, and
its size and nesting are bounded before the validator walks it (a 1 MiB body of YAML
aliases can otherwise expand to gigabytes). Every path a spec can name (where results,
caches, data, checkpoints and masks live) must resolve inside ``S2AP_DATA_DIR``; relative
paths are taken relative to it, so a job never depends on the service's working directory.
Then :func:`s2ap.tune.spec.load_spec` validates the whole search exactly as the CLI does.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from s2ap.errors import ConfigError
from service import model_policy

log = logging.getLogger(__name__)

# Experiment-config fields that name files or folders (dotted, as overrides and grids use them).
PATH_KEYS = (
    "out_dir", "data.root", "pretrain.checkpoint", "prune.mask", "eval.corruption_root", "model.checkpoint"
)  # fmt: skip
# The spec's own path fields.
TOP_PATH_KEYS = ("storage", "pretrain_cache")
DEFAULT_STORAGE = "runs/tune"
MAX_NODES = 200_000
MAX_DEPTH = 64
JSON_TYPES = ("application/json",)


class SpecProblem(Exception):
    """A submission that cannot become a job: ``field`` is the dotted path, if any."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.code = code
        self.message = message
        self.field = field


@dataclass(frozen=True)
class ValidSpec:
    """What a job is made of: the validated spec, its resolved mapping and its trial count."""

    spec: Any  # s2ap.tune.spec.SearchSpec
    resolved: dict[str, Any]  # load_spec accepts it back; written as the job's spec.yaml
    name: str
    trials_total: int


# --------------------------------------------------------------------------- parsing


def parse_body(body: bytes, content_type: str | None) -> Any:
    """JSON when the client says so, otherwise YAML (a superset that also reads JSON)."""
    if not body.strip():
        raise SpecProblem("empty_body", "the request body is empty: send a search spec as YAML or JSON")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecProblem("malformed_body", f"the body is not UTF-8 text (byte {exc.start})") from None
    media = (content_type or "").split(";", 1)[0].strip().lower()
    try:
        if media in JSON_TYPES or media.endswith("+json"):
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise SpecProblem(
            "malformed_json", f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1} column {where.column + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecProblem("malformed_yaml", f"the body is not valid YAML: {problem}{at}") from None
    except RecursionError:
        raise SpecProblem("spec_too_complex", f"the body nests deeper than {MAX_DEPTH} levels") from None
    check_plain(data)
    return data


def check_plain(data: Any, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> None:
    """Plain data only, bounded in size and depth (aliases counted every time they are used)."""
    stack: list[tuple[Any, int, str]] = [(data, 0, "")]
    seen = 0
    while stack:
        value, depth, path = stack.pop()
        seen += 1
        if seen > max_nodes:
            raise SpecProblem("spec_too_complex", f"the spec has more than {max_nodes} values once expanded")
        if depth > max_depth:
            raise SpecProblem(
                "spec_too_complex", f"the spec nests deeper than {max_depth} levels", path or None
            )
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise SpecProblem(
                        "invalid_spec",
                        f"keys must be strings, got {key!r}",
                        f"{path}.{key}" if path else str(key),
                    )
                stack.append((item, depth + 1, f"{path}.{key}" if path else key))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, f"{path}[{i}]") for i, item in enumerate(value))
        elif isinstance(value, float):
            if math.isnan(value):
                raise SpecProblem("invalid_spec", "NaN is not a valid value", path or None)
        elif value is not None and not isinstance(value, str | bool | int):
            raise SpecProblem(
                "invalid_spec",
                f"unsupported value {value!r} ({type(value).__name__}); quote dates and other special YAML values",
                path or None,
            )


# --------------------------------------------------------------------------- paths


def confine(value: Any, root: Path, field: str) -> str:
    """An absolute path inside ``root`` for a spec path (relative ones are under ``root``)."""
    if not isinstance(value, str) or not value:
        raise SpecProblem("invalid_spec", f"expected a path, got {value!r}", field)
    if "://" in value:
        raise SpecProblem(
            "path_outside_data_dir",
            f"only paths inside the service's data directory are allowed, got {value!r}",
            field,
        )
    if "\0" in value:
        raise SpecProblem("invalid_spec", "paths cannot contain NUL bytes", field)
    path = Path(value)
    if value.startswith("~"):
        raise SpecProblem(
            "path_outside_data_dir", f"home-relative paths are not allowed; use a path inside {root}", field
        )
    resolved = Path(os.path.realpath(path if path.is_absolute() else root / path))
    if resolved != root and not resolved.is_relative_to(root):
        raise SpecProblem(
            "path_outside_data_dir",
            f"{value!r} resolves to {resolved}, outside the service's data directory {root}; "
            "use a path relative to it",
            field,
        )
    return str(resolved)


def _rewrite(key: str, value: Any, root: Path, field: str) -> Any:
    """``value`` set at dotted ``key`` with every path in it confined (dicts walked, so a
    grid value like ``{root: /etc}`` under ``data`` is caught as well as ``data.root``)."""
    if key in PATH_KEYS:
        return value if value is None else confine(value, root, field)
    if isinstance(value, dict) and any(p.startswith(f"{key}.") for p in PATH_KEYS):
        return {k: _rewrite(f"{key}.{k}", v, root, f"{field}.{k}") for k, v in value.items()}
    return value


def confine_paths(data: Mapping[str, Any], root: Path) -> dict[str, Any]:
    """A copy of the spec with every path absolute and inside ``root`` (else SpecProblem)."""
    out: dict[str, Any] = json.loads(json.dumps(data))  # deep copy of plain data
    base = out.get("base")
    if isinstance(base, str):
        where = confine(base, root, "base")
        try:
            loaded = yaml.safe_load(Path(where).read_text())
        except OSError:
            raise SpecProblem(
                "invalid_spec", f"config file not found: {base!r} (inside {root})", "base"
            ) from None
        except yaml.YAMLError:
            raise SpecProblem("invalid_spec", f"{base!r} is not valid YAML", "base") from None
        check_plain(loaded)
        if not isinstance(loaded, dict):
            raise SpecProblem("invalid_spec", f"{base!r} must hold a mapping", "base")
        out["base"] = base = loaded
    if isinstance(base, dict):
        out["base"] = {k: _rewrite(k, v, root, f"base.{k}") for k, v in base.items()}
    overrides = out.get("overrides")
    if isinstance(overrides, dict):
        out["overrides"] = {k: _rewrite(k, v, root, f"overrides.{k}") for k, v in overrides.items()}
    grid = out.get("grid")
    if isinstance(grid, dict):
        out["grid"] = {
            k: [_rewrite(k, v, root, f"grid.{k}[{i}]") for i, v in enumerate(vs)]
            if isinstance(vs, list)
            else vs
            for k, vs in grid.items()
        }
    search = out.get("search")
    if isinstance(search, dict):
        for key, dist in search.items():
            if isinstance(dist, dict) and isinstance(dist.get("values"), list):
                dist["values"] = [
                    _rewrite(key, v, root, f"search.{key}.values[{i}]") for i, v in enumerate(dist["values"])
                ]
    out["storage"] = confine(out.get("storage", DEFAULT_STORAGE), root, "storage")
    if out.get("pretrain_cache") is not None:
        out["pretrain_cache"] = confine(out["pretrain_cache"], root, "pretrain_cache")
    optuna = out.get("optuna_storage")
    if optuna is not None:
        if not isinstance(optuna, str) or not optuna.startswith("sqlite:///"):
            raise SpecProblem(
                "path_outside_data_dir",
                f"the service accepts only sqlite:/// Optuna storage inside its data directory, got {optuna!r}",
                "optuna_storage",
            )
        out["optuna_storage"] = "sqlite:///" + confine(
            optuna.removeprefix("sqlite:///"), root, "optuna_storage"
        )
    return out


def absolute_paths(resolved: dict[str, Any], root: Path) -> dict[str, Any]:
    """The validated spec with the experiment's default paths (``data.root: data``) made
    absolute under ``root``: trials run in Ray's folders, not in the service's."""
    base = resolved["base"]
    resolved["base"] = {k: _rewrite(k, v, root, f"base.{k}") for k, v in base.items()}
    return resolved


def grid_cells(data: Mapping[str, Any]) -> int:
    grid = data.get("grid")
    if not isinstance(grid, Mapping):
        return 1
    return math.prod(len(v) if isinstance(v, list) else 1 for v in grid.values())


# --------------------------------------------------------------------------- validation


def validate(
    data: Any,
    root: Path,
    *,
    nodes: Sequence[Mapping[str, float]] | None = None,
    max_grid_cells: int = 10_000,
) -> ValidSpec:
    """The whole submission check: shape, paths, then ``load_spec`` (no Ray import)."""
    from s2ap.tune.spec import load_spec, spec_to_dict

    if not isinstance(data, Mapping):
        raise SpecProblem("invalid_spec", f"expected a mapping at the top, got {type(data).__name__}", "spec")
    cells = grid_cells(data)
    if cells > max_grid_cells:
        raise SpecProblem(
            "invalid_spec",
            f"the grid spans {cells} cells; this service accepts at most {max_grid_cells}",
            "grid",
        )
    confined = confine_paths(data, root)
    for field, message in model_policy.refused(confined):  # before validation imports anything
        raise SpecProblem("model_not_allowed", message, field)
    try:
        spec = load_spec(confined, nodes=list(nodes) if nodes is not None else None, base_dir=root)
    except ConfigError as exc:
        raise SpecProblem("invalid_spec", exc.message, exc.field or None) from None
    except RecursionError:
        raise SpecProblem("spec_too_complex", "the spec nests too deeply") from None
    except Exception as exc:  # a validator bug must not become a 500 for the submitter
        log.exception("load_spec failed on a submitted spec")
        raise SpecProblem(
            "invalid_spec", f"the spec could not be validated ({type(exc).__name__}: {exc})"
        ) from None
    resolved = absolute_paths(spec_to_dict(spec), root)
    return ValidSpec(spec=spec, resolved=resolved, name=spec.name, trials_total=int(spec.num_trials()))


def dump_yaml(data: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=False)
