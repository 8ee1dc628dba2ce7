"""Report: hand-computed table cells, valid PNGs, one-line errors on bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from s2ap.report import main  # noqa: E402
from s2ap.results import EPOCH_SCHEMA, RUN_SCHEMA, write_rows  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _run(method: str, s2ap: bool, seed: int, clean: float, robust: float, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "config_hash": f"{method}-{s2ap}-{extra.get('sparsity', 0.9)}-{extra.get('gamma', 0.001)}",
        "seed": seed,
        "code_version": "test",
        "model": "resnet18",
        "dataset": "cifar10",
        "method": method,
        "objective": "trades",
        "sparsity": 0.9,
        "s2ap": s2ap,
        "gamma": 0.001,
        "warmup_epochs": 2,
        "prune_epochs": 5,
        "status": "ok",
        "clean_acc": clean,
        "robust_acc": robust,
        "pgd_acc": robust + 0.01,
        "final_val_pgd_acc": 0.45,
        "best_mask_before_s2ap": False if s2ap else None,
        "hamming": [0.0, 0.1 + 0.01 * seed, 0.2, 0.25, 0.3] if not s2ap else [0.0, 0.1, 0.12, 0.15, 0.16],
        "lambda_max": [5.0 + seed, 4.0, 3.0, 2.5, 2.0] if not s2ap else [5.0, 3.0, 2.0, 1.5, 1.0],
        "loss_diff_rho": [0.001, 0.01],
        "loss_diff": [0.02 + 0.001 * seed, 0.2] if not s2ap else [0.01, 0.1],
    }
    row.update(extra)
    return row


def _rows() -> list[dict[str, Any]]:
    return [
        # hydra Orig.: clean 80/82/81 -> 81.00, robust 40/44/42 -> 42.00 ± 2.00
        _run("hydra", False, 0, 0.80, 0.40, mask_robust_acc=0.30),
        _run("hydra", False, 1, 0.82, 0.44, mask_robust_acc=0.32),
        _run("hydra", False, 2, 0.81, 0.42, mask_robust_acc=0.34),
        # hydra S2AP: clean 81/83/82 -> 82.00, robust 45/47/46 -> 46.00 ± 1.00, two pre-S2AP masks
        _run("hydra", True, 0, 0.81, 0.45, best_mask_before_s2ap=True, mask_robust_acc=0.35),
        _run("hydra", True, 1, 0.83, 0.47, best_mask_before_s2ap=False, mask_robust_acc=0.36),
        _run("hydra", True, 2, 0.82, 0.46, best_mask_before_s2ap=True, mask_robust_acc=0.37),
        # harp Orig.: clean 70/72 -> 71.00, robust 30/34 -> 32.00 ± sqrt(8) = 2.83
        _run("harp", False, 0, 0.70, 0.30),
        _run("harp", False, 1, 0.72, 0.34),
        # harp S2AP: a single seed, 75.00 / 35.00, no ±, its Wilson interval instead
        _run("harp", True, 0, 0.75, 0.35, robust_acc_lo=0.30, robust_acc_hi=0.40),
        # a gamma that lost on validation (0.20 < 0.45) though it wins on test (60 > 35): the
        # report selects on validation, so it must not enter the harp S2AP cell
        _run("harp", True, 0, 0.90, 0.60, gamma=0.01, final_val_pgd_acc=0.20),
        # hydra at 95%: S2AP - Orig. robust by seed +3, -3, +2: the interval crosses 0
        _run("hydra", False, 0, 0.80, 0.40, sparsity=0.95),
        _run("hydra", False, 1, 0.80, 0.44, sparsity=0.95),
        _run("hydra", False, 2, 0.80, 0.42, sparsity=0.95),
        _run("hydra", True, 0, 0.80, 0.43, sparsity=0.95),
        _run("hydra", True, 1, 0.80, 0.41, sparsity=0.95),
        _run("hydra", True, 2, 0.80, 0.44, sparsity=0.95),
        # hydra at 99% sparsity: Orig. only
        _run("hydra", False, 0, 0.60, 0.20, sparsity=0.99),
        # a failed run must be ignored
        _run("hydra", True, 3, 0.0, 0.0, status="error", error="boom"),
    ]


@pytest.fixture
def run_table(tmp_path: Path) -> Path:
    return write_rows(_rows(), RUN_SCHEMA, tmp_path / "search" / "trials.parquet")


def _row(markdown: str, sparsity: str) -> list[str]:
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[:3] == ["resnet18", "cifar10", sparsity]:
            return cells
    raise AssertionError(f"no {sparsity} row in:\n{markdown}")


def test_table1_has_hand_computed_cells(
    run_table: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main([str(run_table), "--out", str(out)]) == 0
    md = (out / "table1.md").read_text(encoding="utf-8")
    header = [c.strip() for c in md.splitlines()[2].strip("|").split("|")]
    assert header == [
        "Network",
        "Dataset",
        "Sparsity",
        "harp Orig.",
        "harp S2AP",
        "harp Δ robust",
        "hydra Orig.",
        "hydra S2AP",
        "hydra Δ robust",
    ]
    row = _row(md, "90%")
    assert row[3] == "71.00 ± 1.41 / 32.00 ± 2.83 (2 seeds)"
    # One seed: its binomial interval, no spread; gamma chosen on validation among two.
    assert row[4] == "75.00 / 35.00 [30.00, 40.00] (1 seed) (0/1 pre-S2AP masks) [γ=0.001 of 2]"
    assert row[5] == "+5.00 (one seed: no spread; no per-point outcomes)"  # seed 0: 35 - 30
    assert row[6] == "81.00 ± 1.00 / 42.00 ± 2.00 (3 seeds)"
    assert row[7] == "82.00 ± 1.00 / 46.00 ± 1.00 (3 seeds) (2/3 pre-S2AP masks)"
    # Paired by seed: 5, 3, 4 -> mean 4, sd 1, 4 ± t(0.975, 2) / sqrt(3) = 4 ± 2.484
    assert row[8] == "+4.00 [+1.52, +6.48] (3 seeds, across seeds only)"
    unresolved = _row(md, "95%")
    # 3, -3, 2 -> mean 0.667, sd 3.215, half-width 4.3027 * 3.215 / sqrt(3) = 7.985
    assert unresolved[8] == "+0.67 [-7.32, +8.65] (3 seeds, across seeds only) not resolved"
    sparse = _row(md, "99%")
    assert sparse[3:6] == ["–", "–", "–"]
    assert sparse[6] == "60.00 / 20.00 (1 seed)"
    assert sparse[7:9] == ["–", "–"]
    assert "nan" not in md.lower()
    assert "Selection: S2AP's γ per setting = the highest mean final validation PGD accuracy" in md
    assert "S2AP's γ was chosen among 2 values per setting, Orig. ran once per seed" in md

    t5 = (out / "table5.md").read_text(encoding="utf-8")
    row5 = _row(t5, "90%")
    # Only hydra measured mask accuracy, so only hydra has columns here; mask robust 30/32/34
    # vs 35/36/37 by seed: 5, 4, 3 -> the same interval as above.
    assert row5[3:] == [
        "32.00 ± 2.00 (3 seeds)",
        "36.00 ± 1.00 (3 seeds) (2/3 pre-S2AP masks)",
        "+4.00 [+1.52, +6.48] (3 seeds, across seeds only)",
    ]
    assert "robust = PGD with eval.pgd_steps steps, not AutoAttack" in t5

    printed = capsys.readouterr().out
    assert f"wrote {out / 'table1.md'}" in printed
    assert f"report in {out}" in printed


def test_plots_are_valid_pngs(run_table: Path) -> None:
    # A folder argument, default output beside the input.
    assert main([str(run_table.parent)]) == 0
    out = run_table.parent / "report"
    for name in ("hamming_diff.png", "lambda_max.png", "gamma.png", "loss_diff.png", "delta.png"):
        path = out / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE, name
        image = mpimg.imread(path)
        assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50


def test_missing_plot_data_is_skipped_with_a_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [
        {
            k: v
            for k, v in _run("hydra", s, 0, 0.8, 0.4).items()
            if k not in ("hamming", "lambda_max", "loss_diff", "loss_diff_rho")
        }
        for s in (False, True)
    ]
    path = write_rows(rows, RUN_SCHEMA, tmp_path / "final.parquet")
    assert main([str(path), "--out", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    assert "skipped hamming_diff.png:" in printed
    assert "skipped lambda_max.png:" in printed
    assert "skipped loss_diff.png:" in printed
    assert "skipped table5.md:" in printed
    assert (tmp_path / "r" / "gamma.png").exists()
    assert not (tmp_path / "r" / "hamming_diff.png").exists()
    md = (tmp_path / "r" / "table1.md").read_text(encoding="utf-8")
    assert _row(md, "90%")[3:6] == [
        "80.00 / 40.00 (1 seed)",
        "80.00 / 40.00 (1 seed) (0/1 pre-S2AP masks)",
        "+0.00 (one seed: no spread; no per-point outcomes)",
    ]
    assert "Selection budget: one γ per setting, fixed in advance" in md


def test_hamming_taken_from_epochs_table_when_runs_lack_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = [_run("hydra", s, 0, 0.8, 0.4, hamming=None) for s in (False, True)]
    folder = tmp_path / "run"
    write_rows(runs, RUN_SCHEMA, folder / "final.parquet")
    epochs = [
        {
            "config_hash": r["config_hash"],
            "seed": 0,
            "code_version": "t",
            "phase": "prune",
            "epoch": e,
            "hamming": 0.1 * e * (1 if not r["s2ap"] else 0.5),
        }
        for r in runs
        for e in range(4)
    ]
    write_rows(epochs, EPOCH_SCHEMA, folder / "epochs.parquet")
    assert main([str(folder)]) == 0
    assert (folder / "report" / "hamming_diff.png").read_bytes()[:8] == PNG_SIGNATURE


def _assert_one_error_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nope.parquet")]) == 2
    _assert_one_error_line(capsys.readouterr().err, "nope.parquet", "no such file")


def test_folder_without_tables_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path)]) == 2
    _assert_one_error_line(capsys.readouterr().err, "final.parquet", "trials.parquet")


def test_empty_table_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_rows([], RUN_SCHEMA, tmp_path / "final.parquet")
    assert main([str(path)]) == 2
    _assert_one_error_line(capsys.readouterr().err, "final.parquet", "no rows")


def test_missing_columns_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = pa.table(
        {
            "model": ["m"],
            "dataset": ["d"],
            "method": ["hydra"],
            "sparsity": [0.9],
            "s2ap": [False],
            "seed": [0],
        }
    )
    path = tmp_path / "results.parquet"
    pq.write_table(table, path)
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    _assert_one_error_line(err)
    assert err.strip() == f"error: {path} lacks columns: clean_acc, robust_acc"


def test_not_parquet_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "final.parquet"
    path.write_text("not parquet\n")
    assert main([str(path)]) == 2
    _assert_one_error_line(capsys.readouterr().err, "final.parquet", "not a readable Parquet file")


def test_only_failed_runs_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_rows(
        [_run("hydra", False, 0, 0.8, 0.4, status="error")], RUN_SCHEMA, tmp_path / "final.parquet"
    )
    assert main([str(path)]) == 2
    _assert_one_error_line(capsys.readouterr().err, "no successful runs")


@pytest.mark.slow  # a python -m s2ap.report subprocess (torch import); the cases above run main()
def test_module_cli_bad_input(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "s2ap.report", str(tmp_path / "missing.parquet")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 2
    _assert_one_error_line(proc.stderr, "missing.parquet")


def test_plots_use_the_gamma_table1_shows(run_table: Path) -> None:
    from s2ap.report import _prepare, best_gamma_runs, load_runs

    df = best_gamma_runs(_prepare(*load_runs([run_table])))
    harp_s2ap = df[(df["method"] == "harp") & df["s2ap"]]
    assert list(harp_s2ap["gamma"]) == [0.001]  # gamma 0.01 had the lower validation accuracy
    assert len(df[~df["s2ap"]]) == 9


def test_selection_reads_validation_not_test() -> None:
    import pandas as pd

    from s2ap.report import select_gamma

    # Test and validation disagree: gamma 0.01 wins on test robust accuracy, 0.001 on validation.
    rows = pd.DataFrame(
        {
            "gamma": [0.001, 0.001, 0.01, 0.01],
            "seed": [0, 1, 0, 1],
            "robust_acc": [40.0, 42.0, 60.0, 62.0],
            "final_val_pgd_acc": [50.0, 48.0, 30.0, 31.0],
        }
    )
    chosen, gamma = select_gamma(rows)
    assert gamma == 0.001 and list(chosen["robust_acc"]) == [40.0, 42.0]
    # Without validation figures nothing result-driven selects: the smallest gamma, not test's best.
    chosen, gamma = select_gamma(rows.drop(columns="final_val_pgd_acc"))
    assert gamma == 0.001


def test_variant_axes_are_never_pooled() -> None:
    # An S2AP projection ablation: each projection gets its own label with the shared Orig.
    # baseline; a setting of both sides (augment) splits both.
    import pandas as pd

    from s2ap.report.load import prepare

    base = {
        "model": "cnn",
        "dataset": "digits",
        "method": "hydra",
        "sparsity": 0.9,
        "clean_acc": 0.9,
        "robust_acc": 0.8,
        "augment": False,
    }
    rows = [
        {**base, "s2ap": False, "seed": 0, "projection": None, "config_hash": "o"},
        {**base, "s2ap": True, "seed": 0, "projection": "surface", "config_hash": "s"},
        {**base, "s2ap": True, "seed": 0, "projection": "algorithm1", "config_hash": "a"},
    ]
    df = prepare(pd.DataFrame(rows), None)
    labels = sorted(zip(df["method"], df["s2ap"], strict=True))
    assert labels == [
        ("hydra [projection=algorithm1]", False),
        ("hydra [projection=algorithm1]", True),
        ("hydra [projection=surface]", False),
        ("hydra [projection=surface]", True),
    ]
    rows.append({**base, "s2ap": False, "seed": 0, "projection": None, "augment": True, "config_hash": "x"})
    df = prepare(pd.DataFrame(rows[:1] + rows[3:]), None)
    assert sorted(df["method"]) == ["hydra [augment=False]", "hydra [augment=True]"]
    # The cheap ascent is an S2AP-only axis too: fresh and previous are never pooled, and with
    # two such axes every combination gets its own Orig. baseline.
    rows = [
        {**base, "s2ap": False, "seed": 0, "projection": None, "ascent": None, "config_hash": "o"},
        {**base, "s2ap": True, "seed": 0, "projection": "surface", "ascent": "fresh", "config_hash": "f"},
        {**base, "s2ap": True, "seed": 0, "projection": "surface", "ascent": "previous", "config_hash": "p"},
    ]
    df = prepare(pd.DataFrame(rows), None)
    assert sorted(zip(df["method"], df["s2ap"], strict=True)) == [
        ("hydra [ascent=fresh]", False),
        ("hydra [ascent=fresh]", True),
        ("hydra [ascent=previous]", False),
        ("hydra [ascent=previous]", True),
    ]


def test_a_report_reads_its_tables_straight_from_an_s3_uri(
    run_table: Path, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same tables on moto's S3 server give the same report as on disk, read through
    pyarrow.fs; without --out it goes to ./report."""
    from s2ap import storage

    search = f"{s3_bucket}/searches/s"
    storage.write_bytes(f"{search}/trials.parquet", run_table.read_bytes())
    assert main([str(run_table), "--out", str(tmp_path / "local")]) == 0
    monkeypatch.chdir(tmp_path)
    assert main([search]) == 0
    assert (tmp_path / "report" / "table1.md").read_text() == (tmp_path / "local" / "table1.md").read_text()


def test_a_missing_bucket_or_table_on_s3_is_one_line(
    s3_bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["s3://no-such-bucket/searches/s"]) == 2
    _assert_one_error_line(capsys.readouterr().err, "bucket 'no-such-bucket'")
    assert main([f"{s3_bucket}/nothing/here"]) == 2
    _assert_one_error_line(capsys.readouterr().err, f"{s3_bucket}/nothing/here: no such file or directory")
