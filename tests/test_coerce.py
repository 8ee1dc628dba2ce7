"""The one schema machinery: typed building, ranges beside the fields, rules between fields,
tagged unions, dotted overrides, and the JSON Schema generated from the same fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from s2ap.coerce import Checked, bounded, build, build_with, dotted_keys, json_schema, to_dict, with_changes
from s2ap.config import ExperimentConfig
from s2ap.errors import ConfigError


@dataclass(frozen=True)
class Inner(Checked):
    rate: float = bounded(0.5, gt=0, le=1)
    steps: int | None = bounded(None, ge=1)


@dataclass(frozen=True)
class Low(Checked):
    type: Literal["low"] = "low"
    low: float = 0.0


@dataclass(frozen=True)
class Pick(Checked):
    type: Literal["pick"] = "pick"
    values: tuple[int, ...] = ()


@dataclass(frozen=True)
class Outer(Checked):
    name: str
    inner: Inner = field(default_factory=Inner)
    rhos: tuple[float, ...] = bounded((), gt=0)
    table: dict[str, Low | Pick] = field(default_factory=dict)
    lo: float = 0.0
    hi: float = 1.0

    def check(self) -> None:
        if self.hi <= self.lo:
            raise ConfigError("hi", f"must be greater than lo ({self.lo}), got {self.hi}")


def error(data: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        build(Outer, data)
    return info.value


def test_builds_nested_typed_frozen_values() -> None:
    out = build(
        Outer,
        {
            "name": "a",
            "inner": {"rate": "1/4"},
            "rhos": [1, 2],
            "table": {"x": {"type": "pick", "values": [3]}},
        },
    )
    assert out.inner.rate == 0.25 and out.rhos == (1.0, 2.0) and out.table["x"] == Pick(values=(3,))
    with pytest.raises(AttributeError):
        out.name = "b"  # type: ignore[misc]
    assert to_dict(out)["table"] == {"x": {"type": "pick", "values": [3]}}
    assert build(Outer, to_dict(out)) == out


@pytest.mark.parametrize(
    ("data", "where", "words"),
    [
        ({}, "name", "required"),
        ({"name": "a", "nme": 1}, "nme", "unknown key; allowed: hi, inner, lo, name, rhos, table"),
        ({"name": "a", "inner": {"rate": 0}}, "inner.rate", "must be in (0, 1], got 0"),
        ({"name": "a", "inner": {"steps": 0}}, "inner.steps", "must be null or >= 1, got 0"),
        ({"name": "a", "inner": {"steps": 1.5}}, "inner.steps", "expected int or null"),
        ({"name": "a", "rhos": [1, -2]}, "rhos[1]", "must be > 0, got -2"),
        ({"name": "a", "lo": 2}, "hi", "must be greater than lo (2.0)"),
        ({"name": "a", "table": {"x": {"type": "high"}}}, "table.x.type", "expected one of low, pick"),
        ({"name": "a", "table": {"x": [1]}}, "table.x", "expected a mapping with a type"),
        ({"name": "a", "inner": {"rate": "1/0"}}, "inner.rate", "fraction like 8/255"),
        ({"name": 3}, "name", "expected a string"),
    ],
)
def test_every_bad_input_names_its_field_and_what_is_allowed(data: object, where: str, words: str) -> None:
    exc = error(data)
    assert exc.field == where and words in exc.message, str(exc)


def test_dotted_overrides_build_once_and_may_repair_the_mapping() -> None:
    fixed = build_with(Outer, {"name": "a", "inner": {"rate": 7}}, ["inner.rate=0.25"])
    assert fixed.inner.rate == 0.25
    assert with_changes(fixed, {"inner.steps": 3}).inner.steps == 3
    with pytest.raises(ConfigError) as info:
        build_with(Outer, {"name": "a"}, {"inner.rat": 1})
    assert info.value.field == "inner.rat" and "allowed: rate, steps" in info.value.message
    with pytest.raises(ConfigError, match="is a value, not a section"):
        build_with(Outer, {"name": "a"}, {"lo.x": 1})


def test_json_schema_comes_from_the_same_fields() -> None:
    schema = json_schema(Outer)
    assert schema["required"] == ["name"] and schema["additionalProperties"] is False
    inner = schema["properties"]["inner"]["properties"]
    assert inner["rate"]["anyOf"][0] == {"type": "number", "exclusiveMinimum": 0, "maximum": 1}
    assert inner["steps"]["anyOf"] == [{"type": "integer", "minimum": 1}, {"type": "null"}]
    union = schema["properties"]["table"]["additionalProperties"]["anyOf"]
    assert [u["properties"]["type"] for u in union] == [{"enum": ["low"]}, {"enum": ["pick"]}]


def test_every_experiment_field_has_a_schema_and_a_dotted_key() -> None:
    schema = json_schema(ExperimentConfig)
    keys = dotted_keys(ExperimentConfig)
    assert "prune.sparsity" in keys and "s2ap.gamma" in keys
    for key in keys:
        node = schema
        for part in key.split("."):
            node = node["properties"][part]
        assert node, key
    sparsity = schema["properties"]["prune"]["properties"]["sparsity"]["anyOf"][0]
    assert sparsity == {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}


def test_a_built_value_is_taken_as_it_is() -> None:
    inner = Inner(rate=0.25)
    out = build(Outer, {"name": "a", "inner": inner})
    assert out.inner is inner
