"""Result tables that query cleanly: snake_case column names listed in docs/columns.md, null
where a setting does not apply, ``selected`` on each cell's best trial, the README's DuckDB
and polars examples, and tables with the old dotted names read under the new ones."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from s2ap import results
from s2ap.columns_reference import render
from s2ap.experiment import applies, from_dict, identity
from s2ap.report.load import ReportError, load_runs
from s2ap.tune import results as tables
from s2ap.tune.spec import load_spec
from tests.helpers.specs import unit_search

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "columns.md"


def test_the_committed_column_list_is_current_and_names_every_column_without_dots() -> None:
    assert DOC.read_text() == render(), (
        "docs/columns.md is out of date: run `python -m s2ap.columns_reference > docs/columns.md`"
    )
    text = DOC.read_text()
    for schema in (tables.trials_schema(), tables.epochs_schema(), results.RUN_SCHEMA):
        for name in schema.names:
            assert "." not in name and re.fullmatch(r"[a-z][a-z0-9_]*", name), name
            assert f"| `{name}` |" in text, name
    assert "| `s2ap_gamma` | double | trials | config `s2ap.gamma` |" in text
    assert "| `selected` | bool | trials |" in text


def test_column_name_maps_a_dotted_config_key() -> None:
    assert results.column_name("s2ap.gamma") == "s2ap_gamma"
    assert results.column_name("model.kwargs") == "model_kwargs"
    assert results.column_name("robust_acc") == "robust_acc"  # a plain column stays


def test_a_setting_that_does_not_apply_is_inert_for_the_search_and_null_in_the_table() -> None:
    off = from_dict({"s2ap": {"enabled": False, "gamma": 0.004}, "prune": {"method": "hydra"}})
    assert not applies(off, "s2ap.gamma") and applies(off, "s2ap.enabled") and applies(off, "prune.sparsity")
    assert not applies(off, "adasap.prune_every")
    cols = tables.config_columns(off)
    assert cols["s2ap_gamma"] is None and cols["s2ap_warmup_epochs"] is None
    assert cols["s2ap_enabled"] is False and cols["prune_sparsity"] == off.prune.sparsity
    assert cols["adasap_prune_every"] is None
    on = from_dict({"s2ap": {"enabled": False}, "prune": {"method": "adasap"}})
    assert tables.config_columns(on)["adasap_prune_every"] == on.adasap.prune_every


# --------------------------------------------------------------------------- a search's tables


def _finished(search_dir: Path, trial: str, ident: dict[str, Any], val_pgd: float, robust: float) -> None:
    """A finished trial's checkpoint as its rank 0 leaves it: meta, epochs, final row."""
    folder = search_dir / f"trial_{trial}" / "checkpoint_000000"
    folder.mkdir(parents=True)
    epoch = {"config_hash": "h", "seed": 0, "code_version": "v", "phase": "finetune", "epoch": 0}
    results.write_rows([epoch], results.EPOCH_SCHEMA, folder / "epochs.parquet")
    (folder / "meta.json").write_text(json.dumps({"time": 1.0, "final": True, "metrics": {}}))
    final = {
        **ident,
        "code_version": "v",
        "status": "ok",
        "final_val_pgd_acc": val_pgd,
        "final_val_pgd_acc_n": 100,
        "final_val_clean_acc": 0.9,
        "robust_acc": robust,
        "robust_acc_n": 64,
    }
    results.write_rows([results.with_intervals(final)], results.RUN_SCHEMA, folder / "final.parquet")


@pytest.fixture
def search(tmp_path: Path) -> Path:
    """trials.parquet of a search over Orig. (cell 0) and S2AP with gamma searched (cell 1):
    the base config sets gamma 0.005, so an Orig. row would carry it if nothing nulled it."""
    spec = load_spec(unit_search({"s2ap.gamma": 0.005}), nodes=None)
    trials = [  # trial, Tune config, val PGD, test robust
        ("o", {"cell": 0, "s2ap.enabled": False}, 0.50, 0.40),
        ("s1", {"cell": 1, "s2ap.enabled": True, "s2ap.gamma": 0.002}, 0.60, 0.30),
        ("s2", {"cell": 1, "s2ap.enabled": True, "s2ap.gamma": 0.008}, 0.40, 0.70),  # test-best
    ]
    for trial, config, val_pgd, robust in trials:
        _finished(tmp_path, trial, identity(spec.trial_config(config)), val_pgd, robust)
    records = [tables.TrialRecord(t, c, "TERMINATED", {"final": True}) for t, c, _, _ in trials]
    t_path, _, _ = tables.write_tables(spec, records, tmp_path)
    return Path(t_path)


def test_trials_have_selected_and_no_gamma_on_s2ap_off_rows(search: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    rows = duckdb.sql(
        f"select trial_id, grid_cell, selected, s2ap_enabled, s2ap_gamma, gamma, s2ap_warmup_epochs "
        f"from '{search}' order by trial_id"
    ).fetchall()
    assert rows == [
        ("o", 0, True, False, None, None, None),
        ("s1", 1, True, True, 0.002, 0.002, 1),  # best on validation, not on test
        ("s2", 1, False, True, 0.008, 0.008, 1),
    ]
    # Grouping by gamma files the baseline under null, never under the base gamma 0.005.
    groups = duckdb.sql(f"select s2ap_gamma, count(*) from '{search}' group by all order by 1").fetchall()
    assert groups == [(0.002, 1), (0.008, 1), (None, 1)]


def _readme_examples() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Querying the tables", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readme_duckdb_and_polars_examples_run_on_a_search(
    search: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("duckdb")
    pytest.importorskip("polars")
    examples = _readme_examples()
    assert len(examples) == 2 and "import duckdb" in examples[0] and "import polars" in examples[1]
    for code in examples:
        assert '"runs/tune/quickstart/trials.parquet"' in code
        exec(code.replace('"runs/tune/quickstart/trials.parquet"', repr(str(search))), {})
    out = capsys.readouterr().out
    duck, polars = out.split("shape:", 1) if "shape:" in out else (out, "")
    # DuckDB: the two selected trials; polars: three gamma groups, the Orig. one null.
    assert "0.002" in duck and "0.008" not in duck
    assert polars and "null" in polars and "0.008" in polars


# --------------------------------------------------------------------------- old dotted names


def _dotted(path: Path) -> Path:
    """The same table as written before the columns were snake_case."""
    table = pq.read_table(path)
    dotted = {results.column_name(p): p for p, _ in tables.config_paths()}
    old = path.with_name("old_" + path.name)
    pq.write_table(table.rename_columns([dotted.get(n, n) for n in table.column_names]), old)
    return old


def test_an_old_table_with_dotted_names_is_read_under_the_new_names(search: Path) -> None:
    old = _dotted(search)
    assert "s2ap.gamma" in pq.read_schema(old).names
    mapped = results.with_column_names(pq.read_table(old))
    assert mapped.column_names == pq.read_table(search).column_names
    runs, _ = load_runs([old])  # the report reads it
    assert "s2ap_gamma" in runs.columns and "s2ap.gamma" not in runs.columns
    from service.ui.views import read_table

    page = read_table(str(old))  # and the web page
    assert page is not None and "s2ap_gamma" in page.columns and "s2ap.gamma" not in page.columns


def test_a_table_with_both_spellings_of_a_column_is_refused_in_one_line(tmp_path: Path, search: Path) -> None:
    table = pq.read_table(search)
    both = table.append_column("s2ap.gamma", pa.array([None] * table.num_rows, pa.float64()))
    with pytest.raises(
        ValueError, match=r"^table has dotted and snake_case copies of the columns s2ap_gamma$"
    ):
        results.with_column_names(both)
    path = tmp_path / "both" / "trials.parquet"
    path.parent.mkdir()
    pq.write_table(both, path)
    with pytest.raises(ReportError) as info:
        load_runs([path])
    assert "\n" not in str(info.value) and "s2ap_gamma" in str(info.value)
