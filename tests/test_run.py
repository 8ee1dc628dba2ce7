"""``python -m s2ap.run``: a real small run whose headline figures share one set of test points
and whose result line carries each figure's 95% interval and point count."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from s2ap.results import ACCURACIES
from s2ap.run import main
from tests.helpers.configs import tiny_run

TINY = tiny_run({"prune.epochs": 2, "eval.autoattack": True, "eval.test_points": 24}, without_keys=("s2ap",))
INTERVAL = r"(\d\.\d\d) \[(\d\.\d\d), (\d\.\d\d)\] n=(\d+)"


@pytest.mark.slow  # a whole run with AutoAttack
def test_headline_figures_share_their_points_and_print_their_intervals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    assert main([str(config), "--out", str(tmp_path / "run"), "-q", "--threads", "1"]) == 0
    row = pd.read_parquet(tmp_path / "run" / "final.parquet").iloc[0]

    # One point set per headline: AutoAttack on 24 points, so clean and PGD on the same 24.
    headline = ("clean_acc", "pgd_acc", "aa_acc", "robust_acc")
    assert [row[f"{k}_n"] for k in headline] == [24, 24, 24, 24]
    assert row.robust_attack == "autoattack" and row.robust_acc == row.aa_acc
    for k in headline:
        assert row[k] * 24 == pytest.approx(round(row[k] * 24))  # a count out of 24
    # The whole test set stays in columns that say so; the mask figures use it too.
    assert row.clean_acc_full_n == row.pgd_acc_full_n == row.mask_clean_acc_n == row.mask_robust_acc_n == 96
    assert row.mask_robust_attack == "pgd"
    # Selection reads the final validation figures, measured on the validation points.
    assert row.final_val_clean_acc_n == row.final_val_pgd_acc_n == 48
    for k in ACCURACIES:
        if pd.notna(row[k]):
            assert row[f"{k}_lo"] <= row[k] <= row[f"{k}_hi"], k
            assert 0 < row[f"{k}_hi"] - row[f"{k}_lo"] < 1, k
    epochs = pd.read_parquet(tmp_path / "run" / "epochs.parquet")
    assert (epochs.val_clean_acc_n == 48).all() and (epochs.val_pgd_acc_n == 48).all()

    # One row per headline point, and its outcomes add up to the headline figures.
    points = pd.read_parquet(tmp_path / "run" / "predictions.parquet")
    assert len(points) == row.robust_acc_n == 24
    assert points["index"].tolist() == list(range(24))
    assert (points.config_hash == row.config_hash).all() and (points.seed == row.seed).all()
    for k, col in (("clean_acc", "clean"), ("pgd_acc", "pgd"), ("aa_acc", "aa")):
        assert points[col].sum() == round(row[k] * 24), k
    # Where the numbers came from.
    assert row.torch_version and row.device_name.startswith("cpu") and row.threads == 1
    assert row.deterministic in (True, False) and row.pgd_steps == 3

    printed = capsys.readouterr().out
    for label, k in (("clean", "clean_acc"), ("PGD", "pgd_acc"), ("AutoAttack", "aa_acc")):
        match = re.search(rf"{label} {INTERVAL}", printed)
        assert match is not None, printed
        value, lo, hi, n = match.groups()
        assert (float(value), float(lo), float(hi), int(n)) == (
            pytest.approx(row[k], abs=0.005),
            pytest.approx(row[f"{k}_lo"], abs=0.005),
            pytest.approx(row[f"{k}_hi"], abs=0.005),
            24,
        )
    assert "robust = AutoAttack" in printed


def test_the_old_point_count_key_is_refused_with_a_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "old.yaml"
    config.write_text(yaml.safe_dump({**TINY, "eval": {"autoattack": False, "autoattack_n": 24}}))
    assert main([str(config), "--out", str(tmp_path / "run"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: eval.autoattack_n: renamed: use eval.test_points"]
    # The same through --set.
    config.write_text(yaml.safe_dump(TINY))
    assert main([str(config), "--set", "eval.autoattack_n=5", "-q"]) == 2
    assert capsys.readouterr().err.strip() == "error: eval.autoattack_n: renamed: use eval.test_points"
