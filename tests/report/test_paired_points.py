"""The report's Δ from per-point outcomes: paired by seed and test point, never across attacks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from s2ap.report import main
from s2ap.results import PREDICTION_SCHEMA, PREDICTIONS_FILE, RUN_SCHEMA, prediction_rows, write_rows
from tests.helpers.rows import result_row

N = 360


def _run(s2ap: bool, seed: int, right: list[int], attack: str = "pgd", n: int = N) -> dict[str, Any]:
    acc = len(right) / n
    return result_row(
        config_hash=f"hydra-{s2ap}",
        seed=seed,
        s2ap=s2ap,
        clean_acc_n=n,
        robust_acc=acc,
        robust_acc_n=n,
        pgd_acc=acc,
        pgd_acc_n=n,
        robust_attack=attack,
        pgd_steps=50,
        final_val_pgd_acc=0.5,
    )


def _write(folder: Path, runs: list[tuple[dict[str, Any], list[int]]]) -> Path:
    points = []
    for row, right in runs:
        n = int(row["robust_acc_n"])
        hit = [i in set(right) for i in range(n)]
        aa = hit if row["robust_attack"] == "autoattack" else None
        outcomes = {"index": list(range(n)), "label": [0] * n, "clean": [True] * n, "pgd": hit, "aa": aa}
        points += prediction_rows(row, outcomes)
    write_rows(points, PREDICTION_SCHEMA, folder / PREDICTIONS_FILE)
    return write_rows([row for row, _ in runs], RUN_SCHEMA, folder / "final.parquet")


def _delta(folder: Path) -> str:
    out = folder / "report"
    assert main([str(folder), "--out", str(out)]) == 0
    for line in (out / "table1.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[:3] == ["cnn", "digits", "90%"]:
            return cells[5]
    raise AssertionError("no row")


def test_one_more_test_point_per_seed_is_not_resolved(tmp_path: Path) -> None:
    base = list(range(100, 300))  # both right on the same 200 points
    runs = []
    for seed in (0, 1):
        runs.append((_run(False, seed, base), base))
        runs.append((_run(True, seed, [*base, 0]), [*base, 0]))  # one more point, every seed
    _write(tmp_path, [(row, right) for row, right in runs])
    # Across seeds alone this was "+0.28 [+0.28, +0.28]"; paired by point it rests on one point.
    cell = _delta(tmp_path)
    assert cell.startswith("+0.28 [-") and cell.endswith("(2 seeds × 360 points) not resolved"), cell


def test_pgd_against_autoattack_is_not_comparable(tmp_path: Path) -> None:
    right = list(range(10))
    runs = [
        (_run(False, 0, list(range(160))), list(range(160))),
        (_run(True, 0, right, attack="autoattack", n=20), right),
    ]
    _write(tmp_path, runs)
    assert _delta(tmp_path) == "not comparable: attack pgd vs autoattack"
    report = (tmp_path / "report" / "table1.md").read_text(encoding="utf-8")
    assert "44.44 (1 seed, n=360)" in report and "50.00 (1 seed, n=20)" in report  # sides still shown


def test_other_test_points_are_not_comparable(tmp_path: Path) -> None:
    runs = [(_run(False, 0, [1, 2]), [1, 2]), (_run(True, 0, [1, 2], n=20), [1, 2])]
    _write(tmp_path, runs)
    assert _delta(tmp_path) == "not comparable: test points 360 vs 20"
