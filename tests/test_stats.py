"""Intervals checked against values computed by hand."""

from __future__ import annotations

import math

import pytest

from s2ap.results import with_intervals
from s2ap.stats import (
    NOT_RESOLVED,
    ONE_SEED,
    accuracy_interval,
    describe,
    paired,
    t_quantile,
    verdict,
    wilson,
)

Z2 = 1.959963984540054**2  # 3.8414588...


def test_wilson_at_zero_and_all_correct() -> None:
    # 0/n: [0, z^2 / (n + z^2)]; n/n: [n / (n + z^2), 1].
    none = wilson(0, 10)
    assert (none.value, none.lo) == (0.0, 0.0) and none.hi == pytest.approx(Z2 / (10 + Z2))
    assert none.hi == pytest.approx(0.27753, abs=1e-5)
    every = wilson(16, 16)
    assert (every.value, every.hi) == (1.0, 1.0) and every.lo == pytest.approx(16 / (16 + Z2))
    assert every.lo == pytest.approx(0.80639, abs=1e-5)


def test_wilson_in_between() -> None:
    # 5/10: centre 0.5, half-width z / (n + z^2) * sqrt(k (n - k) / n + z^2 / 4) = 0.26341.
    half = math.sqrt(Z2) / (10 + Z2) * math.sqrt(2.5 + Z2 / 4)
    mid = wilson(5, 10)
    assert (mid.lo, mid.hi) == (pytest.approx(0.5 - half), pytest.approx(0.5 + half))
    assert (mid.lo, mid.hi) == (pytest.approx(0.23659, abs=1e-5), pytest.approx(0.76341, abs=1e-5))
    # The quickstart's old AutoAttack figure: 13 of 16 points.
    q = wilson(13, 16)
    assert (q.value, q.lo, q.hi) == (
        0.8125,
        pytest.approx(0.56991, abs=1e-5),
        pytest.approx(0.93408, abs=1e-5),
    )
    assert accuracy_interval(0.8125, 16) == q
    with pytest.raises(ValueError):
        wilson(3, 0)
    with pytest.raises(ValueError):
        wilson(11, 10)


def test_run_rows_get_their_intervals_from_value_and_points() -> None:
    row = with_intervals({"clean_acc": 0.5, "clean_acc_n": 10, "aa_acc": None, "pgd_acc": 0.4})
    assert (row["clean_acc_lo"], row["clean_acc_hi"]) == (wilson(5, 10).lo, wilson(5, 10).hi)
    assert row["aa_acc_lo"] is None and row["pgd_acc_lo"] is None  # not measured / no count
    assert describe("AutoAttack", 0.8125, 0.5699, 0.93408, 16) == "AutoAttack 0.81 [0.57, 0.93] n=16"


def test_paired_difference_and_its_t_interval() -> None:
    # Orig. 40/44/42, S2AP 45/47/46 by seed: differences 5, 3, 4; mean 4, sd 1;
    # half-width t(0.975, 2) * 1 / sqrt(3) = 4.302653 / 1.732051 = 2.484138.
    result = paired([40.0, 44.0, 42.0], [45.0, 47.0, 46.0])
    assert result.diffs == (5.0, 3.0, 4.0) and result.seeds == 3
    assert result.mean == pytest.approx(4.0) and result.std == pytest.approx(1.0)
    assert t_quantile(2) == pytest.approx(4.302653, abs=1e-6)
    assert result.interval is not None
    assert (result.interval.lo, result.interval.hi) == (
        pytest.approx(4 - 2.484138, abs=1e-6),
        pytest.approx(4 + 2.484138, abs=1e-6),
    )
    assert verdict(result) == "higher"
    assert verdict(paired([45.0, 47.0, 46.0], [40.0, 44.0, 42.0])) == "lower"


def test_an_interval_across_zero_is_not_resolved_and_one_seed_has_no_spread() -> None:
    # Differences +2, -1, +0.5, +1.5, -0.5: mean 0.5, but the interval crosses 0.
    result = paired([50.0] * 5, [52.0, 49.0, 50.5, 51.5, 49.5])
    assert result.mean == pytest.approx(0.5)
    assert result.interval is not None and result.interval.lo < 0 < result.interval.hi
    assert verdict(result) == NOT_RESOLVED
    single = paired([40.0], [43.0])
    assert single.mean == 3.0 and single.std is None and single.interval is None
    assert verdict(single) == ONE_SEED
    with pytest.raises(ValueError):
        paired([1.0, 2.0], [1.0])
