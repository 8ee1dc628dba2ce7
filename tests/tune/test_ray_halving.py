"""Synchronous halving on the probe rungs in a real Ray Tune search (CPU, under a minute)."""

from __future__ import annotations

from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pd = pytest.importorskip("pandas")

from s2ap.tune.spec import load_spec  # noqa: E402
from tests.helpers.configs import search_base  # noqa: E402
from tests.tune.test_ray import assert_each_epoch_once, spec_dict  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _ray_down() -> object:
    yield
    ray.shutdown()


def test_halving_pauses_at_the_probe_and_keeps_the_best_half(tmp_path: Path) -> None:
    from s2ap.tune.cluster import start_local_ray
    from s2ap.tune.search import run_search

    base = search_base()
    base["prune"]["probe_after"] = [1]
    spec = load_spec(
        spec_dict(
            tmp_path,
            base=base,
            grid={"prune.sparsity": [0.5, 0.999, 0.6, 0.99]},
            scheduler={"type": "halving", "per_cell": False, "reduction_factor": 2},
            max_concurrent=2,
        )
    )
    start_local_ray(num_cpus=2)
    outcome = run_search(spec)
    trials = pd.read_parquet(outcome.trials_path).set_index("trial_id")
    epochs = pd.read_parquet(outcome.epochs_path)
    probes = epochs[epochs["probe_val_pgd_acc"].notna()].set_index("trial_id")["probe_val_pgd_acc"]
    assert len(probes) == 4 and (epochs.loc[epochs["probe_val_pgd_acc"].notna(), "epoch"] == 0).all()

    # The two best probes go on to the end; the other two stop at the probe, whatever the order.
    ranked = list(probes.sort_values(ascending=False).index)
    assert list(trials.loc[ranked, "status"]) == ["ok", "ok", "stopped", "stopped"]
    assert list(trials.loc[ranked[2:], "search_epochs_run"]) == [1, 1]
    assert list(trials.loc[ranked[:2], "search_epochs_run"]) == [3, 3]
    # Trials paused at the rung resumed from their checkpoint: every epoch ran and is recorded once.
    assert_each_epoch_once(epochs)
