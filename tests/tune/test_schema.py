"""The published JSON Schema of a search spec: generated from the spec's fields, it accepts
what load_spec accepts and rejects unknown keys at every level. No Ray."""

from __future__ import annotations

import copy
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from s2ap.tune.spec import SearchSpec, json_schema, load_spec, spec_to_dict

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[2]
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))
TINY: dict[str, Any] = {
    "name": "tiny",
    "base": {
        "data": {"name": "digits"},
        "prune": {"epochs": 4},
        "s2ap": {"enabled": True, "warmup_epochs": 1},
    },
    "grid": {"prune.sparsity": [0.5, 0.9]},
    "search": {
        "s2ap.gamma": {"type": "loguniform", "low": 0.001, "high": 0.01},
        "s2ap.warmup_epochs": {"type": "int", "low": 1, "high": 2},
    },
    "scheduler": {"type": "asha", "reduction_factor": 3},
    "resources": {"workers": 1, "cpus_per_worker": 1},
}


def validator() -> Any:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_schema_is_generated_from_the_spec_fields() -> None:
    schema = json_schema()
    assert set(schema["properties"]) == {f.name for f in fields(SearchSpec)}
    assert schema["required"] == ["base"] and schema["additionalProperties"] is False
    base = schema["properties"]["base"]
    assert "mapping or a path" in base["description"]
    mapping, path = base["anyOf"]
    assert mapping["additionalProperties"] is False and "prune" in mapping["properties"]
    assert path["type"] == "string"


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_schema_accepts_the_shipped_specs(path: Path) -> None:
    v = validator()
    v.validate(yaml.safe_load(path.read_text()))  # as written: base may be a path
    try:
        spec = load_spec(path, nodes=None)
    except Exception as exc:  # noqa: BLE001 - e.g. a method this checkout lacks
        pytest.skip(f"not loadable here: {exc}")
    v.validate(spec_to_dict(spec))  # as the service stores it: base a whole mapping


def test_schema_accepts_what_load_spec_accepts_back() -> None:
    v = validator()
    v.validate(TINY)
    v.validate(spec_to_dict(load_spec(TINY, nodes=None)))


@pytest.mark.parametrize(
    "change",
    [
        {"bogus": 1},
        {"scheduler": {"type": "asha", "patience": 3}},
        {"scheduler": {"type": "hyperband"}},
        {"scheduler": {"type": "asha", "metric": "hamming"}},
        {"resources": {"workers": 1, "tpus": 1}},
        {"resources": {"workers": 0}},
        {"search": {"s2ap.gamma": {"type": "loguniform", "low": 0.001, "high": 0.01, "step": 0.001}}},
        {"search": {"s2ap.gamma": {"low": 0.001, "high": 0.01}}},
        {"search": {"s2ap.gamma": [0.001, 0.01]}},
        {"num_samples": 0},
        {"name": "a b"},
    ],
)
def test_schema_rejects_unknown_keys_and_bad_values(change: dict[str, Any]) -> None:
    assert not validator().is_valid({**TINY, **change})


def test_schema_rejects_an_unknown_key_inside_the_base() -> None:
    spec = copy.deepcopy(TINY)
    spec["base"]["prune"]["speed"] = 3
    assert not validator().is_valid(spec)
