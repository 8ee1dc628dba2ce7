"""Columns: the report names every column it reads through the results schema."""

from __future__ import annotations

import ast
import copy
import pickle
from pathlib import Path

import pyarrow as pa
import pytest

import s2ap.report
from s2ap.report.load import ACCURACIES, CELL_KEY, CURVES, EPOCH_CURVES, PANEL_KEY, REQUIRED
from s2ap.results import EPOCH, EPOCH_SCHEMA, RUN, RUN_SCHEMA, Columns

REPORT_DIR = Path(s2ap.report.__file__).parent
HELPERS = {"RUN": RUN, "EPOCH": EPOCH}


def test_columns_are_the_schema_names() -> None:
    cols = Columns(pa.schema([pa.field("robust_acc", pa.float64()), pa.field("seed", pa.int64())]))
    assert cols.robust_acc == "robust_acc" and cols.seed == "seed"
    assert list(cols) == ["robust_acc", "seed"]
    assert "seed" in cols and "gamma" not in cols
    assert list(RUN) == RUN_SCHEMA.names and list(EPOCH) == EPOCH_SCHEMA.names
    assert copy.deepcopy(RUN).gamma == "gamma" and pickle.loads(pickle.dumps(EPOCH)).phase == "phase"


def test_unknown_column_raises_and_names_it() -> None:
    with pytest.raises(AttributeError, match="no column 'robust_accuracy' in the schema"):
        _ = RUN.robust_accuracy
    with pytest.raises(AttributeError, match="read-only"):
        RUN.model = "net"  # type: ignore[misc]


def test_unknown_column_fails_a_module_at_import(tmp_path: Path) -> None:
    # A name bound at module level is checked when the module is defined, not when it is used.
    source = "from s2ap.results import RUN\nKEY = [RUN.model, RUN.datasett]\n"
    with pytest.raises(AttributeError, match="'datasett'"):
        exec(compile(source, str(tmp_path / "module.py"), "exec"), {})


def _report_sources() -> list[tuple[Path, ast.Module]]:
    paths = sorted(REPORT_DIR.glob("*.py"))
    assert paths, REPORT_DIR
    return [(p, ast.parse(p.read_text(encoding="utf-8"))) for p in paths]


def test_every_column_the_report_names_is_in_the_schema() -> None:
    named = []
    for path, tree in _report_sources():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in HELPERS
            ):
                named.append((path.name, node.value.id, node.attr))
                assert node.attr in HELPERS[node.value.id], f"{path.name}: {node.value.id}.{node.attr}"
    assert {attr for _, _, attr in named} >= {
        "model",
        "dataset",
        "method",
        "sparsity",
        "s2ap",
        "seed",
        "gamma",
    }
    for key in (REQUIRED, CELL_KEY, PANEL_KEY, ACCURACIES, CURVES, tuple(EPOCH_CURVES)):
        assert set(key) <= set(RUN), key
    assert set(EPOCH_CURVES.values()) <= set(EPOCH)


def test_the_report_hard_codes_no_column_name() -> None:
    names = set(RUN) | set(EPOCH)
    literals = [
        f"{path.name}:{node.lineno} {node.value!r}"
        for path, tree in _report_sources()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names
    ]
    assert not literals, literals
