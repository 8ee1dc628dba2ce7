"""Submitted specs: parsed as data, confined to the data directory, validated like the CLI.

A spec arrives as YAML or JSON. It is data, never code: YAML goes through ``safe_load``,
anything but plain mappings, lists, strings, numbers, booleans and nulls is refused, and
its size, nesting and integers are bounded before anything copies it. Aliases are counted
every time they are used, in values and in bytes, while the document is walked: a 100 KB
string behind 3,000 aliases is 300 MB once expanded, and is refused after the first few MB
(``safe_load`` itself shares aliased objects, so parsing costs only the body). Every path a
spec can name (where results, caches, data, checkpoints and masks live) must resolve inside
``S2AP_DATA_DIR`` and outside the service's own state there (its database, ``jobs/``,
``ray/``); relative paths are taken relative to it, so a job never depends on the
service's working directory. Messages name paths as the user wrote them, never resolved.
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
from s2ap.storage import join as _join
from service import model_policy
from service.settings import SERVICE_STATE

log = logging.getLogger(__name__)

# Experiment-config fields that name files or folders (dotted, as overrides and grids use them).
PATH_KEYS = (
    "out_dir",
    "data.root",
    "pretrain.checkpoint",
    "prune.mask",
    "eval.corruption_root",
    "model.checkpoint",
)
# The spec's own path fields.
TOP_PATH_KEYS = ("storage", "pretrain_cache")
DEFAULT_STORAGE = "runs/tune"
MAX_NODES = 50_000  # a real spec has hundreds; bounds the walk's own stack too
MAX_DEPTH = 64
MAX_EXPANDED_BYTES = 4 << 20  # a real spec is a few KB; counted with aliases expanded
MAX_INT = 2**53  # beyond it JSON clients lose digits (and SQLite's 64-bit integers overflow)
MAX_BASE_FILE_BYTES = 1 << 20
_NODE_BYTES = 8  # what each value counts on top of its text, so a million empty values is big too
JSON_TYPES = ("application/json",)


class SpecProblem(Exception):
    """A submission that cannot become a job: ``field`` is the dotted path, if any."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.code = code
        self.message = message
        self.field = field

    def __reduce__(self) -> tuple[type[SpecProblem], tuple[str, str, str | None]]:
        return SpecProblem, (self.code, self.message, self.field)


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
    except ValueError as exc:  # an integer of more than 4300 digits (Python's conversion limit)
        raise SpecProblem("malformed_body", f"the body could not be read: {exc}") from None
    check_plain(data)
    return data


def check_plain(
    data: Any, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH, max_bytes: int = MAX_EXPANDED_BYTES
) -> None:
    """Plain data only, bounded in values, bytes, depth and integers. Aliases count every
    time they are used, and the walk stops at the first value past a budget, so an alias
    bomb costs what was walked up to the budget, never its expanded size."""
    # Paths are (parent, key) links, spelled out only for an error message.
    stack: list[tuple[Any, int, tuple[Any, Any] | None]] = [(data, 0, None)]
    seen, size = 1, 0
    while stack:
        value, depth, where = stack.pop()
        if depth > max_depth:
            raise SpecProblem(
                "spec_too_complex", f"the spec nests deeper than {max_depth} levels", _dotted(where)
            )
        size += _NODE_BYTES
        if isinstance(value, Mapping):
            seen += len(value)
            for key in value:
                if not isinstance(key, str):
                    raise SpecProblem(
                        "invalid_spec", f"keys must be strings, got {key!r}", _dotted((where, key))
                    )
                size += len(key)
            children = (
                [(item, depth + 1, (where, key)) for key, item in value.items()] if seen <= max_nodes else []
            )
        elif isinstance(value, list):
            seen += len(value)
            children = (
                [(item, depth + 1, (where, i)) for i, item in enumerate(value)] if seen <= max_nodes else []
            )
        else:
            children = []
            _check_scalar(value, where)
            if isinstance(value, str):
                size += len(value)
        if seen > max_nodes:
            raise SpecProblem("spec_too_complex", f"the spec has more than {max_nodes} values once expanded")
        if size > max_bytes:
            raise SpecProblem(
                "spec_too_complex",
                f"the spec is over {max_bytes} bytes once its YAML aliases are expanded "
                f"(at {_dotted(where) or 'the top'}); write it out without aliases or make it smaller",
            )
        stack.extend(children)


def _check_scalar(value: Any, where: tuple[Any, Any] | None) -> None:
    if isinstance(value, float):
        if math.isnan(value):
            raise SpecProblem("invalid_spec", "NaN is not a valid value", _dotted(where))
    elif isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > MAX_INT:
            shown = value if value.bit_length() < 256 else f"a {value.bit_length()}-bit integer"
            raise SpecProblem(
                "invalid_spec", f"integers must be within +-2**53 ({MAX_INT}), got {shown}", _dotted(where)
            )
    elif value is not None and not isinstance(value, str | bool):
        raise SpecProblem(
            "invalid_spec",
            f"unsupported value {value!r} ({type(value).__name__}); quote dates and other special YAML values",
            _dotted(where),
        )


def _dotted(where: tuple[Any, Any] | None) -> str | None:
    """``a.b[2].c`` for the (parent, key) links :func:`check_plain` keeps."""
    parts: list[str] = []
    while where is not None:
        where, key = where
        parts.append(f"[{key}]" if isinstance(key, int) else f".{key}")
    return "".join(reversed(parts)).lstrip(".") or None


def plain_copy(data: Any) -> Any:
    """A deep copy of plain data (every alias its own copy): only for data that
    :func:`check_plain` passed, whose expanded size is bounded."""
    if isinstance(data, Mapping):
        return {k: plain_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [plain_copy(v) for v in data]
    return data


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
            "path_outside_data_dir",
            "home-relative paths are not allowed; use a path relative to the service's data directory",
            field,
        )
    resolved = Path(os.path.realpath(path if path.is_absolute() else root / path))
    if resolved != root and not resolved.is_relative_to(root):
        raise SpecProblem(
            "path_outside_data_dir",
            f"{value!r} is outside the service's data directory; use a path relative to it",
            field,
        )
    inside = resolved.relative_to(root).parts
    if inside and (inside[0] in SERVICE_STATE or inside[0].startswith(f"{SERVICE_STATE[0]}-")):
        raise SpecProblem(
            "path_reserved",
            f"{value!r} is the service's own state ({inside[0]}); "
            f"use a path outside {', '.join(SERVICE_STATE)} in the data directory",
            field,
        )
    return str(resolved)


def _read_base(value: str, root: Path) -> dict[str, Any]:
    """The experiment config a ``base: FILE`` names: UTF-8 YAML holding a mapping, at most
    :data:`MAX_BASE_FILE_BYTES` (a job's ``trials.parquet`` is not one)."""
    where = Path(confine(value, root, "base"))
    try:
        with open(where, "rb") as f:
            raw = f.read(MAX_BASE_FILE_BYTES + 1)
    except IsADirectoryError:
        raise SpecProblem("invalid_spec", f"{value!r} is a folder, not a config file", "base") from None
    except OSError:
        raise SpecProblem("invalid_spec", f"config file not found: {value!r}", "base") from None
    if len(raw) > MAX_BASE_FILE_BYTES:
        raise SpecProblem(
            "invalid_spec", f"{value!r} is over {MAX_BASE_FILE_BYTES} bytes: not a config file", "base"
        )
    try:
        loaded = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SpecProblem(
            "invalid_spec", f"{value!r} is not a YAML config (not UTF-8 text)", "base"
        ) from None
    except (yaml.YAMLError, ValueError):
        raise SpecProblem("invalid_spec", f"{value!r} is not valid YAML", "base") from None
    except RecursionError:
        raise SpecProblem("spec_too_complex", f"{value!r} nests too deeply", "base") from None
    if not isinstance(loaded, dict):
        raise SpecProblem("invalid_spec", f"{value!r} must hold a mapping", "base")
    check_plain(loaded)
    return plain_copy(loaded)


def _rewrite(key: str, value: Any, root: Path, field: str) -> Any:
    """``value`` set at dotted ``key`` with every path in it confined (dicts walked, so a
    grid value like ``{root: /etc}`` under ``data`` is caught as well as ``data.root``)."""
    if key in PATH_KEYS:
        return value if value is None else confine(value, root, field)
    if isinstance(value, dict) and any(p.startswith(f"{key}.") for p in PATH_KEYS):
        return {k: _rewrite(f"{key}.{k}", v, root, f"{field}.{k}") for k, v in value.items()}
    return value


def confine_paths(
    data: Mapping[str, Any], root: Path, storage: str | None = None, job_storage: str | None = None
) -> dict[str, Any]:
    """A copy of the spec with every path absolute and inside ``root`` (else SpecProblem).
    A spec without its own ``pretrain_cache`` shares the one in the service's ``storage``
    (``S2AP_STORAGE``) when that is set, else the one in its own ``storage``. With
    ``job_storage`` (where the service puts this job's search) the confined ``storage`` gives
    way to it: the spec then names the folder its search writes to, decided here, once."""
    out: dict[str, Any] = plain_copy(data)
    base = out.get("base")
    if isinstance(base, str):
        out["base"] = base = _read_base(base, root)
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
    if out["storage"] == str(root):  # Tune writes to storage/<name>, and a name may be "jobs"
        raise SpecProblem(
            "path_reserved",
            "storage must be a folder inside the data directory, not the directory itself",
            "storage",
        )
    if out.get("pretrain_cache") is not None:
        out["pretrain_cache"] = confine(out["pretrain_cache"], root, "pretrain_cache")
    elif "pretrain_cache" not in out:  # decided before the job's own storage replaces the spec's
        out["pretrain_cache"] = _join(storage if storage is not None else out["storage"], "pretrain_cache")
    if job_storage is not None:
        out["storage"] = job_storage
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
    storage: str | None = None,
    job_storage: str | None = None,
) -> ValidSpec:
    """The whole submission check: shape, paths, then ``load_spec`` (no Ray import). A job's
    spec gets ``job_storage`` as its ``storage`` once the submitted one passed its check."""
    from s2ap.tune.spec import load_spec, spec_to_dict

    if not isinstance(data, Mapping):
        raise SpecProblem("invalid_spec", f"expected a mapping at the top, got {type(data).__name__}", "spec")
    check_plain(data)  # parse_body did; cheap again, and callers with data of their own get it too
    cells = grid_cells(data)
    if cells > max_grid_cells:
        raise SpecProblem(
            "invalid_spec",
            f"the grid spans {cells} cells; this service accepts at most {max_grid_cells}",
            "grid",
        )
    confined = confine_paths(data, root, storage, job_storage)
    for field, message in model_policy.refused(confined):  # before validation imports anything
        section = "data" if "data.name" in f".{field}" else "model"
        raise SpecProblem(f"{section}_not_allowed", message, field)
    try:
        spec = load_spec(confined, nodes=list(nodes) if nodes is not None else None, base_dir=root)
    except ConfigError as exc:
        raise SpecProblem("invalid_spec", unresolved(exc.message, root), exc.field or None) from None
    except RecursionError:
        raise SpecProblem("spec_too_complex", "the spec nests too deeply") from None
    except Exception as exc:  # a validator bug must not become a 500 for the submitter
        log.exception("load_spec failed on a submitted spec")
        raise SpecProblem(
            "invalid_spec", unresolved(f"the spec could not be validated ({type(exc).__name__}: {exc})", root)
        ) from None
    trials = int(spec.num_trials())
    if trials > MAX_INT:  # the library bounds num_samples and the grid; the store needs it to fit
        raise SpecProblem("invalid_spec", f"the search has {trials} trials; at most {MAX_INT}", "num_samples")
    resolved = absolute_paths(spec_to_dict(spec), root)
    return ValidSpec(spec=spec, resolved=resolved, name=spec.name, trials_total=trials)


def unresolved(message: str, root: Path) -> str:
    """``message`` with the data directory's absolute path taken out: paths the validator
    names (it sees them confined, absolute) read as relative to the data directory."""
    return message.replace(f"{root}{os.sep}", "").replace(str(root), ".")


def dump_yaml(data: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=False)
