"""Frozen, validated dataclasses from plain mappings: the one schema machinery.

A config class (the experiment's sections, a search spec) is a frozen dataclass whose
fields carry their own rules, so every rule lives beside its data:

* the type hint says what a value may be (``int``, ``float`` (``8/255`` accepted),
  ``Literal[...]``, ``X | None``, ``tuple[X, ...]``, ``dict[str, X]``, another config
  class, or a union of config classes told apart by their ``type`` field);
* ``bounded(default, ge=1)`` puts a range on a number (or on every entry of a tuple);
* a rule between fields is the class's ``check()`` method.

:func:`build` turns a mapping into such a class, rejecting unknown keys; every failure is a
:class:`~s2ap.errors.ConfigError` naming the dotted field and what is allowed. The same
field definitions give :func:`json_schema`, so the JSON Schema a service publishes cannot
drift from what is accepted.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from typing import Any, Literal, TypeVar

import yaml

from s2ap.errors import ConfigError

T = TypeVar("T")
FRACTION = r"^\s*[-+]?[0-9.]+([eE][-+]?[0-9]+)?\s*/\s*[0-9.]+([eE][-+]?[0-9]+)?\s*$"


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Range:
    """A numeric range; ``note`` says why, when the bound is not obvious."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    note: str | None = None

    def describe(self) -> str:
        low = None if self.gt is None and self.ge is None else ("(" if self.gt is not None else "[")
        high = None if self.lt is None and self.le is None else (")" if self.lt is not None else "]")
        lo = _num(self.gt if self.gt is not None else self.ge)
        hi = _num(self.lt if self.lt is not None else self.le)
        if low and high:
            text = f"in {low}{lo}, {hi}{high}"
        elif low:
            text = f"{'>' if low == '(' else '>='} {lo}"
        else:
            text = f"{'<' if high == ')' else '<='} {hi}"
        return f"{text} ({self.note})" if self.note else text

    def holds(self, value: float) -> bool:
        return (
            (self.gt is None or value > self.gt)
            and (self.ge is None or value >= self.ge)
            and (self.lt is None or value < self.lt)
            and (self.le is None or value <= self.le)
        )

    def check(self, name: str, value: Any, nullable: bool) -> None:
        if value is None:
            return
        if isinstance(value, tuple):
            for i, v in enumerate(value):
                self.check(f"{name}[{i}]", v, nullable=False)
            return
        if not self.holds(value):
            null = "null or " if nullable else ""
            raise ConfigError(name, f"must be {null}{self.describe()}, got {_num(value)}")

    def schema(self) -> dict[str, Any]:
        keys = {"gt": "exclusiveMinimum", "ge": "minimum", "lt": "exclusiveMaximum", "le": "maximum"}
        return {keys[k]: getattr(self, k) for k in keys if getattr(self, k) is not None}


def bounded(
    default: Any = MISSING,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    note: str | None = None,
) -> Any:
    """A dataclass field with a range: ``sparsity: float = bounded(0.9, gt=0, lt=1)``."""
    return field(default=default, metadata={"range": Range(gt, ge, lt, le, note)})


def documented(default: Any = MISSING, *, schema: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """A dataclass field whose JSON Schema is given explicitly (e.g. "a mapping or a path")."""
    return field(default=default, metadata={"schema": schema or {}}, **kwargs)


class Checked:
    """Base of every config class: ranges from the fields, then ``check()``, on creation.

    Errors name fields relative to the class; :func:`build` prefixes the path it is at.
    """

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in fields(self):  # type: ignore[arg-type]
            rule = f.metadata.get("range")
            if rule is not None:
                rule.check(f.name, getattr(self, f.name), _nullable(hints[f.name]))
        self.check()

    def check(self) -> None:
        """Rules between fields; raise ConfigError with the (relative) field name."""


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


# --------------------------------------------------------------------------- building


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _nullable(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _tagged(args: tuple[Any, ...]) -> dict[Any, type] | None:
    """``{tag: class}`` when every member of a union is a config class with a ``type`` tag."""
    members = [a for a in args if a is not type(None)]
    if not members or not all(is_dataclass(a) for a in members):
        return None
    tags: dict[Any, type] = {}
    for cls in members:
        tag = _hints(cls).get("type")
        if typing.get_origin(tag) is not Literal:
            return None
        for value in typing.get_args(tag):
            tags[value] = cls
    return tags


def _parse_number(value: Any, path: str) -> Any:
    """Accept '8/255' style fractions where a float is expected."""
    if isinstance(value, str) and "/" in value:
        num, _, den = value.partition("/")
        try:
            return float(num) / float(den)
        except (ValueError, ZeroDivisionError):
            raise ConfigError(path, f"expected a number or a fraction like 8/255, got {value!r}") from None
    return value


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        tags = _tagged(args)
        if tags is not None:
            return _coerce_tagged(value, tags, path)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError:
                continue
        raise ConfigError(path, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args or isinstance(value, bool) != isinstance(args[0], bool):
            raise ConfigError(path, f"expected {_type_name(tp)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(path, f"expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping, typing.Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"expected a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], _join(path, k)) for k, v in value.items()}
    if is_dataclass(tp):
        if isinstance(value, tp):  # type: ignore[arg-type]
            return value  # built, hence checked, already
        return build(tp, value, path)  # type: ignore[arg-type]
    return _coerce_scalar(value, tp, path)


def _coerce_tagged(value: Any, tags: dict[Any, type], path: str) -> Any:
    if not isinstance(value, Mapping):
        raise ConfigError(
            path, f"expected a mapping with a type ({', '.join(map(str, tags))}), got {value!r}"
        )
    kind = value.get("type")
    if kind not in tags:
        raise ConfigError(_join(path, "type"), f"expected one of {', '.join(map(str, tags))}, got {kind!r}")
    return build(tags[kind], value, path)


def _coerce_scalar(value: Any, tp: Any, path: str) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        value = _parse_number(value, path)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(path, f"expected a number, got {value!r}")
        if not math.isfinite(float(value)):
            raise ConfigError(path, f"expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {path}")  # a bug, not bad input


def _required(f: Field[Any]) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def _unknown(cls: type, key: str, path: str, names: set[str]) -> str:
    """Why ``key`` is refused: renamed (a class's ``RENAMED`` maps old names to new ones: a
    name in the same section, or a dotted key from the top when it moved), or unknown."""
    new = getattr(cls, "RENAMED", {}).get(key)
    if new is not None:
        return f"renamed: use {new if '.' in new else _join(path, new)}"
    return f"unknown key; allowed: {', '.join(sorted(names))}"


def build(cls: type[T], data: Any, path: str = "") -> T:
    """Build config class ``cls`` from a mapping, rejecting unknown keys; ``path`` is where
    the mapping sits (error messages name ``path.key``)."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(path or "config", f"expected a mapping, got {data!r}")
    hints = _hints(cls)
    known = [f for f in fields(cls) if f.init]  # type: ignore[arg-type]
    names = {f.name for f in known}
    for key in data:
        if key not in names:
            raise ConfigError(_join(path, key), _unknown(cls, key, path, names))
    for f in known:
        if _required(f) and f.name not in data:
            raise ConfigError(_join(path, f.name), "required")
    kwargs = {key: _coerce(value, hints[key], _join(path, key)) for key, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise exc.within(path) from None


# --------------------------------------------------------------------------- plain forms


def to_dict(obj: Any) -> Any:
    """Plain, JSON-able data: config classes become mappings, tuples lists."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, str):
        return str(obj)  # a plain str, also for str subclasses (a storage.Location)
    return obj


def stable_hash(obj: Any, length: int = 16) -> str:
    blob = json.dumps(to_dict(obj), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def parse_override(item: str) -> tuple[str, Any]:
    """``key=value`` from a command line; the value is read as YAML (``true``, ``0.5``)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError("--set", f"expected key=value, got {item!r}")
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def with_changes(obj: T, overrides: Mapping[str, Any] | Iterable[str]) -> T:
    """A new config of ``obj``'s class with dotted keys replaced, validated like the YAML."""
    return build_with(type(obj), to_dict(obj), overrides)


def build_with(cls: type[T], data: Mapping[str, Any], overrides: Mapping[str, Any] | Iterable[str]) -> T:
    """:func:`build` of ``data`` with dotted ``overrides`` applied first, so an override can
    repair a value the mapping alone gets wrong. Each dotted key must name a field of ``cls``."""
    items = overrides.items() if isinstance(overrides, Mapping) else map(parse_override, overrides)
    data = copy.deepcopy(dict(data))
    for key, value in items:
        node, owner = data, cls
        parts = key.split(".")
        for i, part in enumerate(parts):
            names = [f.name for f in fields(owner)]  # type: ignore[arg-type]
            if part not in names:
                where = ".".join(parts[:i])
                if part in getattr(owner, "RENAMED", {}):
                    raise ConfigError(key, _unknown(owner, part, where, set(names)))
                allowed = f"{where + ': ' if where else ''}allowed: {', '.join(sorted(names))}"
                raise ConfigError(key, f"unknown key {'.'.join(parts[: i + 1])!r}; {allowed}")
            if i == len(parts) - 1:
                node[part] = value
                break
            owner = _hints(owner)[part]
            if not is_dataclass(owner):
                raise ConfigError(key, f"{'.'.join(parts[: i + 1])!r} is a value, not a section")
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(".".join(parts[: i + 1]), f"expected a mapping, got {child!r}")
            node = child
    return build(cls, data)


def dotted_keys(cls: type, prefix: str = "") -> list[str]:
    """Every leaf of a config class by its dotted path (``prune.sparsity``)."""
    out: list[str] = []
    for f in fields(cls):  # type: ignore[arg-type]
        tp = _hints(cls)[f.name]
        if is_dataclass(tp):
            out += dotted_keys(tp, f"{prefix}{f.name}.")  # type: ignore[arg-type]
        else:
            out.append(f"{prefix}{f.name}")
    return out


# --------------------------------------------------------------------------- JSON Schema


def json_schema(cls: type) -> dict[str, Any]:
    """The JSON Schema of a config class, from the same field definitions :func:`build` uses."""
    hints = _hints(cls)
    props: dict[str, Any] = {}
    required = []
    for f in fields(cls):  # type: ignore[arg-type]
        if not f.init:
            continue
        if "schema" in f.metadata:
            props[f.name] = dict(f.metadata["schema"])
        else:
            props[f.name] = _schema(hints[f.name], f.metadata.get("range"))
        if _required(f):
            required.append(f.name)
    out: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        out["required"] = required
    doc = (cls.__doc__ or "").strip()
    if doc and not doc.startswith(f"{cls.__name__}("):
        out["description"] = " ".join(doc.split("\n\n")[0].split())
    return out


def _schema(tp: Any, rule: Range | None = None) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    extra = rule.schema() if rule is not None else {}
    if tp is Any:
        return {}
    if origin in (typing.Union, types.UnionType):
        members = [_schema(a, rule) for a in args if a is not type(None)]
        if _tagged(args) is not None:
            members = [json_schema(a) for a in args if a is not type(None)]
        if type(None) in args:
            members.append({"type": "null"})
        return members[0] if len(members) == 1 else {"anyOf": members}
    if origin is Literal:
        return {"enum": list(args)}
    if origin is tuple:
        return {"type": "array", "items": _schema(args[0], rule)}
    if origin in (dict, Mapping, typing.Mapping):
        return {"type": "object", "additionalProperties": _schema(args[1])}
    if is_dataclass(tp):
        return json_schema(tp)  # type: ignore[arg-type]
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer", **extra}
    if tp is float:
        return {"anyOf": [{"type": "number", **extra}, {"type": "string", "pattern": FRACTION}]}
    if tp is str:
        return {"type": "string"}
    raise TypeError(f"no JSON Schema for {tp!r}")
