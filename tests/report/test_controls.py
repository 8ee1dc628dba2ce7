"""The report's controls section (issue 27): each arm against Orig., the 2 x 2 factorial's
main effects and sharpness vs random direction, all by hand-checked numbers; per-arm cost."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from s2ap.report.compare import POINTS
from s2ap.report.controls import (
    ORIG,
    ORIG_AWP,
    RANDOM_AWP,
    S2AP_AWP,
    S2AP_PLAIN,
    WEIGHTS_AWP,
    arms,
    controls_section,
    effects,
    epoch_costs,
)
from s2ap.report.load import prepare
from s2ap.report.tables import table1
from s2ap.stats import paired_points, t_quantile
from tests.helpers.rows import result_row

# robust accuracy (%) per seed 0, 1, 2 of each arm
ROBUST = {
    ORIG: [50, 52, 54],
    ORIG_AWP: [51, 54, 55],
    S2AP_PLAIN: [52, 53, 57],
    S2AP_AWP: [55, 56, 58],
    RANDOM_AWP: [53, 57, 56],
    WEIGHTS_AWP: [54, 55, 56],
}
SETTINGS = {  # s2ap, finetune_awp, direction, perturb
    ORIG: (False, False, None, None),
    ORIG_AWP: (False, True, None, None),
    S2AP_PLAIN: (True, False, "sharpness", "scores"),
    S2AP_AWP: (True, True, "sharpness", "scores"),
    RANDOM_AWP: (True, True, "random", "scores"),
    WEIGHTS_AWP: (True, True, "sharpness", "weights"),
}


def _row(name: str, seed: int, **extra: Any) -> dict[str, Any]:
    s2ap, awp, direction, perturb = SETTINGS[name]
    fields = {
        "config_hash": name,
        "seed": seed,
        "s2ap": s2ap,
        "finetune_awp": awp,
        "direction": direction,
        "perturb": perturb,
        "gamma": 0.005 if s2ap or awp else None,
        "robust_acc": ROBUST[name][seed] / 100,
        "robust_acc_n": 360,
        "pgd_steps": 50,
    }
    return result_row(**{**fields, **extra})


def runs(names=tuple(ROBUST)) -> pd.DataFrame:
    return prepare(pd.DataFrame([_row(n, s) for n in names for s in range(3)]), None)


def t_interval(diffs: list[float]) -> tuple[float, float, float]:
    m = sum(diffs) / 3
    sd = math.sqrt(sum((d - m) ** 2 for d in diffs) / 2)
    half = t_quantile(2) * sd / math.sqrt(3)
    return m, m - half, m + half


def test_each_row_lands_in_its_arm_and_table1_keeps_the_arms_apart() -> None:
    df = runs()
    found = arms(df)
    assert list(found) == [ORIG, ORIG_AWP, S2AP_PLAIN, S2AP_AWP, RANDOM_AWP, WEIGHTS_AWP]
    assert all(len(rows) == 3 for rows in found.values())
    # Table 1's hydra row is Orig. vs the paper's S2AP + AWP; every control is its own row.
    assert set(df["method"]) == {
        "hydra",
        "hydra+AWP-ft",
        "hydra+plain-ft",
        "hydra+random-dir",
        "hydra+AWP-prune",
    }
    t1 = table1(df)
    assert "+4.33" in t1  # S2AP + AWP − Orig.: (5 + 4 + 4) / 3


def test_the_main_effects_by_hand() -> None:
    perturbation, awp, direction = effects(arms(runs()))
    # ((S2AP+AWP − Orig.+AWP) + (S2AP+plain − Orig.)) / 2 per seed: (4+2)/2, (2+1)/2, (3+3)/2
    assert perturbation.delta.diffs == pytest.approx((3.0, 1.5, 3.0))
    mean, lo, hi = t_interval([3.0, 1.5, 3.0])
    assert mean == pytest.approx(2.5)
    assert (perturbation.delta.interval.lo, perturbation.delta.interval.hi) == pytest.approx((lo, hi))
    assert lo > 0  # resolved: higher
    # ((Orig.+AWP − Orig.) + (S2AP+AWP − S2AP+plain)) / 2: (1+3)/2, (2+3)/2, (1+1)/2
    assert awp.delta.diffs == pytest.approx((2.0, 2.5, 1.0))
    mean, lo, hi = t_interval([2.0, 2.5, 1.0])
    assert awp.delta.mean == pytest.approx(mean) and lo < 0 < hi  # not resolved
    # sharpness − random, both + AWP: 2, -1, 2
    assert direction.delta.diffs == pytest.approx((2.0, -1.0, 2.0))


def test_the_section_states_each_arm_against_orig_and_the_effects() -> None:
    text = controls_section(runs(), None)
    assert text is not None
    lines = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "+1.33 [" in lines[ORIG_AWP]  # (1 + 2 + 1) / 3
    assert "+4.33 [" in lines[S2AP_AWP] and "| higher |" in lines[S2AP_AWP]
    assert "+3.00 [" in lines[WEIGHTS_AWP]  # 54 - 50, 55 - 52, 56 - 54
    effect = next(v for k, v in lines.items() if k.startswith("score perturbation"))
    assert "+2.50 [" in effect and "| higher |" in effect
    effect = next(v for k, v in lines.items() if k.startswith("AWP finetuning"))
    assert "+1.83 [" in effect and "not resolved" in effect


def test_no_section_without_a_control_arm() -> None:
    assert controls_section(runs((ORIG, S2AP_AWP)), None) is None


def test_per_point_outcomes_pair_the_main_effect_by_seed_and_point() -> None:
    rng = np.random.default_rng(0)
    outcomes = {name: rng.integers(0, 2, size=(3, 20)).astype(float) for name in ROBUST}
    rows = [
        _row(n, s, **{POINTS: dict(enumerate(outcomes[n][s])), "robust_acc": outcomes[n][s].mean()})
        for n in ROBUST
        for s in range(3)
    ]
    perturbation = effects(arms(prepare(pd.DataFrame(rows), None)))[0]
    o = {k: v * 100 for k, v in outcomes.items()}
    expected = paired_points((o[ORIG] + o[ORIG_AWP]) / 2, (o[S2AP_PLAIN] + o[S2AP_AWP]) / 2)
    assert perturbation.delta.points == 20
    assert perturbation.delta.mean == pytest.approx(expected.mean)
    assert perturbation.delta.interval.lo == pytest.approx(expected.interval.lo)


def test_cost_is_the_median_epoch_time_per_phase_and_its_ratio_to_orig() -> None:
    df = runs((ORIG, ORIG_AWP, S2AP_AWP))
    epochs = pd.DataFrame(
        [
            {"config_hash": name, "seed": seed, "phase": phase, "epoch": e, "time_s": t}
            for name, prune, finetune in ((ORIG, [1, 2, 3], [1, 1]), (S2AP_AWP, [3, 4, 9], [2, 2]))
            for seed in range(3)
            for phase, times in (("prune", prune), ("finetune", finetune))
            for e, t in enumerate(times)
        ]
    )
    found = arms(df)
    assert epoch_costs(found[ORIG], epochs) == {"prune": 2.0, "finetune": 1.0}
    assert epoch_costs(found[S2AP_AWP], epochs) == {"prune": 4.0, "finetune": 2.0}
    assert epoch_costs(found[ORIG_AWP], epochs) == {"prune": None, "finetune": None}
    text = controls_section(df, epochs)
    assert "| 4.00 | 2.00 | 2.00x / 2.00x |" in text
