"""One best-trial rule (s2ap.selection) for the search summary, the report and the service:
validation PGD accuracy, ties on validation clean, a missing or NaN value last."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from s2ap import selection


def _trial(tid: str, val: float | None, clean: float | None = 0.9, cell: int = 0, **extra: object) -> dict:
    return {
        "trial_id": tid,
        "status": "ok",
        "grid_cell": cell,
        "final_val_pgd_acc": val,
        "final_val_clean_acc": clean,
        **extra,
    }


@pytest.mark.parametrize("missing", [math.nan, None, math.inf, -math.inf])
def test_missing_or_nan_validation_ranks_last_even_first_in_order(missing: float | None) -> None:
    rows = [_trial("a", missing), _trial("b", 0.41), _trial("c", 0.40)]
    assert selection.best_row(rows)["trial_id"] == "b"
    assert selection.best_per_cell(rows)[0]["trial_id"] == "b"


def test_ties_go_to_validation_clean_then_to_trial_order_never_to_test() -> None:
    rows = [
        _trial("b", 0.5, 0.8, robust_acc=0.9),
        _trial("a", 0.5, 0.8, robust_acc=0.1),
        _trial("c", 0.5, 0.7, robust_acc=1.0),
    ]
    assert selection.best_per_cell(rows)[0]["trial_id"] == "a"  # full tie: the lower trial id


def test_only_finished_trials_count_and_a_cell_of_nans_still_has_a_best() -> None:
    rows = [
        {**_trial("a", 0.9), "status": "error"},
        {**_trial("b", 0.95), "status": "stopped"},
        _trial("c", math.nan, cell=1),
        _trial("d", 0.3),
    ]
    best = selection.best_per_cell(rows)
    assert best[0]["trial_id"] == "d" and best[1]["trial_id"] == "c"


def test_search_service_and_report_use_the_same_rule() -> None:
    from s2ap.report.selection import select_gamma
    from s2ap.tune.results import best_per_cell
    from service.progress import best_trial

    rows = [_trial("a", math.nan, s2ap_gamma=0.001), _trial("b", 0.6, s2ap_gamma=0.01)]
    assert best_per_cell(rows)[0]["trial_id"] == "b"
    assert best_trial(rows, [])["trial_id"] == "b"
    # The report: gamma 0.001's only seed has a NaN validation accuracy, so 0.01 is chosen,
    # though NaN comes first in gamma order.
    runs = pd.DataFrame({"gamma": [0.001, 0.01, 0.01], "final_val_pgd_acc": [math.nan, 0.6, 0.5]})
    _, gamma = select_gamma(runs)
    assert gamma == 0.01


def test_best_label_first_on_tie_and_none_when_empty() -> None:
    assert selection.best_label([("x", 0.5), ("y", 0.5), ("z", math.nan)]) == "x"
    assert selection.best_label([("x", None), ("y", math.nan)]) == "x"
    assert selection.best_label([]) is None
