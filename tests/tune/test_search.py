"""The search's closing summary, driven by hand (imports Ray Tune, starts no Ray): the selection
rule, test figures with their intervals and points, and whether the best cells are resolved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray.tune")

from s2ap.results import with_intervals  # noqa: E402
from s2ap.tune.results import best_per_cell  # noqa: E402
from s2ap.tune.search import SearchOutcome, summary_lines  # noqa: E402
from s2ap.tune.spec import load_spec  # noqa: E402
from tests.helpers.specs import unit_search  # noqa: E402

SPEC = unit_search()


def trial(
    trial_id: str, cell: int, val_pgd: float, robust: float, n: int, gamma: float | None = None
) -> dict[str, Any]:
    row = {
        "trial_id": trial_id,
        "grid_cell": cell,
        "status": "ok",
        "s2ap_gamma": gamma,
        "final_val_pgd_acc": val_pgd,
        "final_val_pgd_acc_n": 100,
        "clean_acc": 0.9375,
        "pgd_acc": robust,
        "aa_acc": robust,
        "robust_acc": robust,
        "robust_attack": "autoattack",
    }
    row |= {f"{k}_n": n for k in ("clean_acc", "pgd_acc", "aa_acc", "robust_acc")}
    return with_intervals(row)


def lines(trials: list[dict[str, Any]]) -> list[str]:
    spec = load_spec(SPEC, nodes=None)
    outcome = SearchOutcome(
        Path("s"), Path("s/trials.parquet"), Path("s/epochs.parquet"), trials, best_per_cell(trials), 1.0
    )
    return summary_lines(spec, outcome)


def test_summary_states_the_rule_and_prints_intervals_and_overlap() -> None:
    # 13 of 16 vs 14 of 16: the intervals overlap, whatever the point estimates say.
    out = lines(
        [
            trial("o", 0, 0.5, 0.8125, 16),
            trial("s1", 1, 0.6, 0.875, 16, 0.002),
            trial("s2", 1, 0.4, 1.0, 16, 0.009),
        ]
    )
    text = "\n".join(out)
    assert "selection: best trial per cell = highest final validation PGD accuracy" in text
    assert "AutoAttack 0.81 [0.57, 0.93] n=16" in text  # the Orig. cell: 13/16
    # The S2AP cell shows its validation-best trial (s1), not the test-best one (s2).
    s2ap = next(line for line in out if line.startswith("  [1]"))
    assert "s2ap.gamma=0.002 (best of 2 finished)" in s2ap and "[trial s1]" in s2ap
    assert "AutoAttack 0.88 [0.64, 0.97] n=16" in s2ap and "val PGD 0.60 [" in s2ap
    assert out[-1] == (
        "robust intervals overlap for 1 of 1 cell pairs ([0] and [1]): those cells are not resolved on this test set"
    )


def test_summary_says_when_the_best_cells_are_apart() -> None:
    out = lines([trial("o", 0, 0.5, 0.20, 1000), trial("s", 1, 0.6, 0.80, 1000, 0.002)])
    assert out[-1] == "robust intervals of the best cells do not overlap"


def test_many_overlapping_cells_are_counted_not_all_named() -> None:
    from s2ap.stats import Interval
    from s2ap.tune.search import overlap_lines

    cells = [(f"[{i}]", Interval(0.5, 0.4, 0.6)) for i in range(5)] + [("[5]", Interval(0.9, 0.85, 0.95))]
    (line,) = overlap_lines(cells, shown=2)
    assert line.startswith("robust intervals overlap for 10 of 15 cell pairs ([0] and [1], [0] and [2], ...)")


def test_summary_counts_the_trial_epochs_the_scheduler_saved() -> None:
    rows = [trial("a", 1, 0.6, 0.8, 100), trial("b", 1, 0.5, 0.7, 100), trial("o", 0, 0.5, 0.7, 100)]
    for row, ran, status in zip(rows, (8, 5, 8), ("ok", "stopped", "ok"), strict=True):
        row["search_epochs_run"], row["status"] = ran, status
    (line,) = [x for x in lines(rows) if "trial-epochs saved" in x]
    # b stopped after 5 of its cell's 8 epochs: 3 of 21 + 3 = 24 saved.
    assert line == "asha (epoch rungs) stopped 1 of 3 trials: 3 of 24 trial-epochs saved (12%)"
    # Probes are paid for: each trial's probe seconds over its own mean epoch seconds.
    for row, probe, epoch in zip(rows, (3.0, 2.0, None), (2.0, 1.0, 2.0), strict=True):
        row["probe_time_s"], row["mean_epoch_time_s"] = probe, epoch
    (line,) = [x for x in lines(rows) if "trial-epochs saved" in x]
    assert line == (
        "asha (epoch rungs) stopped 1 of 3 trials: 3 of 24 trial-epochs saved (12%); the probes took "
        "3.5 trial-epochs of training time, so -0.5 (-2%) saved net"
    )
