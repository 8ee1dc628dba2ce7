"""The per-cell searcher, driven by hand (imports Ray Tune and Optuna, starts no Ray)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray.tune")
pytest.importorskip("optuna")

from ray.tune.search import Searcher  # noqa: E402

from s2ap.tune.searcher import CellSearcher  # noqa: E402
from s2ap.tune.spec import load_spec  # noqa: E402
from tests.helpers.specs import unit_search  # noqa: E402

SPEC = unit_search(
    {"finetune.epochs": 2},
    grid={"s2ap.enabled": [False, True], "prune.sparsity": [0.9, 0.99]},
    search={
        "s2ap.gamma": {"type": "loguniform", "low": 0.00075, "high": 0.01},
        "s2ap.warmup_epochs": {"type": "int", "low": 1, "high": 2},
    },
    num_samples=4,
)


def searcher(seed: int = 0, storage: str | None = None) -> tuple[Any, CellSearcher]:
    spec = load_spec({**SPEC, "seed": seed}, nodes=None)
    return spec, CellSearcher(spec.cells(), "val_pgd_acc", "max", seed, "s", storage)


def drain(s: CellSearcher) -> list[dict[str, Any]]:
    out = []
    for i in range(100):
        config = s.suggest(f"t{i}")
        if config == Searcher.FINISHED:
            return out
        out.append(config)
        s.on_trial_complete(f"t{i}", {"val_pgd_acc": 0.1 * (i % 5), "final": True})
    raise AssertionError("never finished")


def test_every_cell_gets_its_samples_and_baselines_run_once() -> None:
    spec, s = searcher()
    configs = drain(s)
    assert len(configs) == spec.num_trials() == 1 + 1 + 4 + 4
    by_cell: dict[int, list[dict[str, Any]]] = {}
    for c in configs:
        by_cell.setdefault(c["cell"], []).append(c)
    assert {k: len(v) for k, v in by_cell.items()} == {0: 1, 1: 1, 2: 4, 3: 4}
    # S2AP off: nothing searched; S2AP on: both searched values inside their bounds.
    assert set(by_cell[0][0]) == {"cell", "s2ap.enabled", "prune.sparsity"}
    for c in by_cell[2] + by_cell[3]:
        assert 0.00075 <= c["s2ap.gamma"] <= 0.01 and c["s2ap.warmup_epochs"] in (1, 2)
        assert c["s2ap.enabled"] is True
    # Round-robin: the first four suggestions cover the four cells.
    assert [c["cell"] for c in configs[:4]] == [0, 1, 2, 3]


def test_seeded_tpe_is_reproducible_and_save_restore_continues(tmp_path: Path) -> None:
    first, second = drain(searcher(seed=7)[1]), drain(searcher(seed=7)[1])
    assert first == second
    assert drain(searcher(seed=8)[1]) != first
    _, s = searcher(seed=7)
    head = [s.suggest(f"t{i}") for i in range(5)]
    for i in range(5):
        s.on_trial_complete(f"t{i}", {"val_pgd_acc": 0.1 * (i % 5), "final": True})
    s.save(str(tmp_path / "searcher.pkl"))
    _, restored = searcher(seed=7)
    restored.restore(str(tmp_path / "searcher.pkl"))
    tail = [restored.suggest(f"t{i}") for i in range(5, 7)]
    assert head + tail == first[:7]


def test_optuna_storage_url_keeps_one_study_per_cell(tmp_path: Path) -> None:
    import optuna

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    drain(searcher(storage=url)[1])
    names = sorted(st.study_name for st in optuna.get_all_study_summaries(url))
    assert names == ["s-cell2", "s-cell3"]


def test_optuna_is_told_complete_pruned_and_failed_with_intermediate_values(tmp_path: Path) -> None:
    """A trial ASHA stopped reaches its study as PRUNED with its per-epoch values (never as
    COMPLETE with a rung value); a finished one as COMPLETE with its final value; a diverged
    one as FAIL."""
    import optuna

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    _, s = searcher(storage=url)
    ids: dict[int, list[str]] = {}
    for i in range(100):
        config = s.suggest(f"t{i}")
        if config == Searcher.FINISHED:
            break
        ids.setdefault(config["cell"], []).append(f"t{i}")
    done, stopped, diverged = ids[2][:3]

    def epoch(trial_id: str, step: int, value: float) -> None:
        s.on_trial_result(trial_id, {"val_pgd_acc": value, "search_epoch": step, "final": False})

    epoch(done, 0, 0.9)  # pretraining: shared, not a step of the search
    for step, value in ((1, 0.2), (2, 0.3), (3, 0.35)):
        epoch(done, step, value)
    s.on_trial_result(done, {"val_pgd_acc": 0.4, "search_epoch": 3, "final": True})
    s.on_trial_complete(done, {"val_pgd_acc": 0.4, "search_epoch": 3, "final": True})
    for step, value in ((1, 0.1), (2, 0.15)):
        epoch(stopped, step, value)
    # Tune hands a stopped trial's last (rung) result to on_trial_complete.
    s.on_trial_complete(stopped, {"val_pgd_acc": 0.15, "search_epoch": 2, "final": False})
    epoch(diverged, 1, 0.05)
    s.on_trial_complete(diverged, {"val_pgd_acc": None, "final": True, "diverged": "training diverged: nan"})

    study = optuna.load_study(study_name="s-cell2", storage=url)
    by_state = {t.state: t for t in study.trials if t.state != optuna.trial.TrialState.RUNNING}
    State = optuna.trial.TrialState
    assert set(by_state) == {State.COMPLETE, State.PRUNED, State.FAIL}
    assert by_state[State.COMPLETE].value == pytest.approx(0.4)
    assert by_state[State.COMPLETE].intermediate_values == {1: 0.2, 2: 0.3, 3: 0.35}
    assert by_state[State.PRUNED].intermediate_values == {1: 0.1, 2: 0.15}
    assert by_state[State.FAIL].value is None
