"""The controls specs (issue 27): six arms, the same seeds and one gamma in every arm, on
digits (CPU) and on CIFAR-10 / ResNet18 (GPU, parsed here, not run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from s2ap import experiment
from s2ap.tune.spec import load_spec

SPACES = Path(__file__).resolve().parents[2] / "search_spaces"
ARMS = {  # (s2ap, finetune_awp, direction, perturb)
    (False, False, None, None),
    (False, True, None, None),
    (True, False, "sharpness", "scores"),
    (True, True, "sharpness", "scores"),
    (True, True, "random", "scores"),
    (True, True, "sharpness", "weights"),
}


@pytest.mark.parametrize("prefix", ["controls", "controls_cifar10"])
def test_the_controls_specs_run_six_arms_paired_by_seed_at_one_fixed_gamma(prefix: str) -> None:
    found: dict[tuple, set[int]] = {}
    gammas, datasets = set(), set()
    for suffix in ("", "_random", "_weights"):
        spec = load_spec(SPACES / f"{prefix}{suffix}.yaml", nodes=None)
        assert spec.name == f"{prefix}{suffix}" and spec.scheduler.type == "fifo" and not spec.search
        for cell in spec.cells():
            cfg = experiment.with_overrides(spec.base_config(), cell.values)
            row = experiment.identity(cfg)
            arm = (row["s2ap"], row["finetune_awp"], row["direction"], row["perturb"])
            assert arm not in found or cfg.seed not in found[arm]
            found.setdefault(arm, set()).add(cfg.seed)
            gammas.add(cfg.s2ap.gamma)
            datasets.add((cfg.data.name, cfg.model.name, cfg.prune.sparsity))
    assert set(found) == ARMS
    assert len({frozenset(seeds) for seeds in found.values()}) == 1  # every arm the same seeds
    assert len(gammas) == 1 and len(datasets) == 1
    expected = ("digits", "cnn") if prefix == "controls" else ("cifar10", "resnet18")
    assert next(iter(datasets))[:2] == expected
