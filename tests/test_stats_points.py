"""Differences paired by seed and test point: the interval counts both, and covers the truth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from s2ap.stats import NOT_RESOLVED, paired, paired_points, verdict


def _one_point_more(same_point: bool) -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros((2, 360))
    a[:, 100:300] = 1  # both sides right on the same 200 points
    b = a.copy()
    b[0, 0] = 1
    b[1, 0 if same_point else 1] = 1  # S2AP gets one more point right per seed
    return a, b


@pytest.mark.parametrize("same_point", [True, False])
def test_one_more_test_point_per_seed_is_not_resolved(same_point: bool) -> None:
    a, b = _one_point_more(same_point)
    # Across seeds only, the two identical per-seed gains look exact...
    seeds_only = paired(a.mean(1).tolist(), b.mean(1).tolist())
    assert seeds_only.interval is not None and seeds_only.interval.lo == seeds_only.interval.hi > 0
    # ...paired by point, the gain rests on one or two points and is not resolved.
    result = paired_points(a, b)
    assert result.mean == pytest.approx(1 / 360) and result.seeds == 2 and result.points == 360
    assert result.interval is not None and result.interval.lo < 0 < result.interval.hi
    assert verdict(result) == NOT_RESOLVED


def test_one_seed_is_a_paired_test_on_the_test_points() -> None:
    rng = np.random.default_rng(3)
    a = (rng.uniform(size=(1, 400)) < 0.6).astype(float)
    b = a.copy()
    flips = rng.choice(400, 40, replace=False)
    b[0, flips[:30]], b[0, flips[30:]] = 1, 0  # McNemar's discordant points decide
    result = paired_points(a, b)
    gained, lost = int(((b - a) > 0).sum()), int(((b - a) < 0).sum())
    assert result.mcnemar_p == pytest.approx(binomtest(gained, gained + lost).pvalue)
    d = (b - a)[0]
    half = 1.966 * d.std(ddof=1) / np.sqrt(400)  # t with 399 df
    assert result.interval is not None and result.interval.hi - result.mean == pytest.approx(half, rel=1e-3)


def _coverage(m: int, sd_seed: float, sd_point: float, sd_resid: float, reps: int = 300) -> float:
    """How often the interval holds the true mean difference 0.02 (additive model)."""
    rng = np.random.default_rng(m * 1000 + int(sd_point * 100))
    n, truth, hits = 200, 0.02, 0
    for _ in range(reps):
        d = truth + rng.normal(0, sd_seed, (m, 1)) + rng.normal(0, sd_point, (1, n))
        d = d + rng.normal(0, sd_resid, (m, n))
        interval = paired_points(np.zeros_like(d), d).interval
        hits += interval is not None and interval.contains(truth)
    return hits / reps


@pytest.mark.parametrize("m", [3, 5])
@pytest.mark.parametrize("parts", [(0.02, 0.3, 0.3), (0.03, 0.0, 0.3), (0.01, 0.5, 0.1)])
def test_the_two_level_interval_covers_the_truth_at_about_95_percent(
    m: int, parts: tuple[float, float, float]
) -> None:
    # Seeds, test points and their interaction each contribute; the seeds-only t-interval
    # would miss the shared test-point part (the (0.01, 0.5, 0.1) case).
    assert 0.90 <= _coverage(m, *parts) <= 0.985


def test_binary_outcomes_with_seed_and_point_noise_are_covered() -> None:
    rng = np.random.default_rng(7)
    hits, reps = 0, 300
    for _ in range(reps):
        m, n = 3, 300
        ease = rng.uniform(0.1, 0.8, n)  # points drawn from a population of difficulties
        a = rng.uniform(size=(m, n)) < ease + rng.normal(0, 0.03, (m, 1))
        b = rng.uniform(size=(m, n)) < ease + 0.05 + rng.normal(0, 0.03, (m, 1))
        interval = paired_points(a.astype(float), b.astype(float)).interval
        hits += interval is not None and interval.contains(0.05)
    assert 0.90 <= hits / reps <= 0.985
