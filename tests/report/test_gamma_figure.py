"""The gamma figure: intervals, the selection mark read from validation only, honest axes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from s2ap.report.gamma import Estimate, gamma_panel, plot_gamma, series_label, y_limits
from s2ap.report.load import prepare
from s2ap.stats import t_quantile
from tests.helpers.rows import result_row

KEY = ("cnn", "digits", "hydra", 0.9)


def _row(s2ap: bool, gamma: float | None, seed: int, val: float | None, test: float) -> dict:
    return result_row(
        config_hash=f"{s2ap}-{gamma}",
        seed=seed,
        s2ap=s2ap,
        gamma=gamma,
        robust_acc=test,
        final_val_pgd_acc=val,
    )


def rows(val_best: float = 0.005, test_best: float = 0.01) -> pd.DataFrame:
    out = [_row(False, None, s, 0.50, 0.50) for s in range(3)]
    for g in (0.001, 0.005, 0.01):
        for s in range(3):
            out.append(
                _row(True, g, s, 0.60 + 0.01 * s if g == val_best else 0.50, 0.70 if g == test_best else 0.5)
            )
    return prepare(pd.DataFrame(out), None)


def test_the_mark_is_the_validation_best_and_test_accuracies_cannot_move_it() -> None:
    panel = gamma_panel(KEY, rows())
    assert panel.selected == 0.005 and panel.rule == "selected on validation"
    # any test accuracies at all: the mark stays where validation put it
    df = rows()
    for test in (0.0, 1.0):
        df.loc[df["gamma"] == 0.001, "robust_acc"] = test * 100
        assert gamma_panel(KEY, df).selected == 0.005
    # without validation values the mark is the smallest gamma, chosen blind, never test's best
    blind = rows().drop(columns="final_val_pgd_acc")
    panel = gamma_panel(KEY, blind)
    assert panel.selected == 0.001 and "no validation" in panel.rule
    assert panel.points["validation"] == {}


def test_each_gamma_has_its_t_interval_over_seeds_in_both_panels() -> None:
    panel = gamma_panel(KEY, rows())
    val = panel.points["validation"][0.005]  # 60, 61, 62
    half = t_quantile(2) * 1.0 / 3**0.5
    assert (val.mean, val.lo, val.hi, val.seeds) == pytest.approx((61.0, 61.0 - half, 61.0 + half, 3))
    assert panel.points["test"][0.01].mean == pytest.approx(70.0)
    assert panel.orig["test"].mean == pytest.approx(50.0)


def test_the_y_axis_never_zooms_below_twice_the_widest_interval() -> None:
    lo, hi = y_limits([Estimate(92.0, 90.0, 94.0, 3), Estimate(92.28, 90.28, 94.28, 3)])
    assert hi - lo >= 2 * 4.0 and lo <= 90.0 and hi >= 94.28


def test_the_figure_is_written(tmp_path: Path) -> None:
    assert plot_gamma(rows(), tmp_path / "gamma.png") is None
    assert (tmp_path / "gamma.png").read_bytes()[:4] == b"\x89PNG"


def test_a_control_arms_series_is_named_for_the_arm_not_s2ap() -> None:
    # The paper's arm is "S2AP"; a random-direction or plain-finetuning arm (its own panel:
    # the suffix on the method label keeps it apart) is named for what it is.
    assert gamma_panel(KEY, rows()).label == "S2AP"
    df = rows()
    df["direction"] = "random"
    random = prepare(df.assign(method="hydra"), None)
    key = (KEY[0], KEY[1], str(random.loc[random["s2ap"], "method"].iloc[0]), KEY[3])
    panel = gamma_panel(key, random[random["method"] == key[2]])
    assert panel is not None and panel.label == "S2AP (random direction)"
    assert series_label("hydra+random-dir+plain-ft") == "S2AP (random direction, plain finetuning)"
