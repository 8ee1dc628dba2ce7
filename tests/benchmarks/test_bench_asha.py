"""bench_asha.py's replays decide as the search's schedulers would, and its JSON holds the
default's figures from recorded searches."""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pandas as pd
import pytest

from s2ap.tune.halving import CONTINUE, PAUSE, Bracket
from s2ap.tune.spec import load_spec
from tests.helpers.scripts import load_script

EPOCHS = 12
PRUNE = 4
PROBES = (1, 2, 3)


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("benchmarks/bench_asha.py")  # puts benchmarks/ on sys.path, as a script run does


@pytest.fixture(scope="module")
def replay(bench: ModuleType) -> ModuleType:
    return sys.modules["asha_replay"]  # the module bench_asha.py replays with


def scripted(replay: ModuleType, n: int, seed: int) -> list:
    """Trials whose curves rise towards a random level, with noisy probes."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        level = rng.uniform(0.3, 0.9)
        curve = tuple(
            round(level * (1 - 0.5 ** (e / 3)) + rng.gauss(0, 0.02), 3) for e in range(1, EPOCHS + 1)
        )
        probes = {p: (round(level + rng.gauss(0, 0.1), 3), 0.5) for p in PROBES}
        out.append(replay.Recorded(curve, probes))
    return out


def ray_asha(s, trials, order) -> tuple[float, int]:
    """The same replay driven through Ray's own bracket, configured as CellScheduler does."""
    from ray.tune.schedulers.async_hyperband import _Bracket

    if s.rungs == "epochs":
        bracket = _Bracket(s.grace, EPOCHS - 1, s.rf, 0, stop_last_trials=False)
    else:
        bracket = _Bracket(1, len(s.probe_after) + 1, s.rf, 0, stop_last_trials=False)
    used, finished = 0.0, []
    for i in order:
        trial = SimpleNamespace(trial_id=str(i))
        reports = (
            [(e, v, e) for e, v in enumerate(trials[i].curve, 1)]
            if s.rungs == "epochs"
            else [(r, trials[i].probes[p][0], p) for r, p in enumerate(s.probe_after, 1)]
        )
        stopped = None
        for clock, value, epoch in reports:
            if bracket.on_result(trial, clock, value) == "STOP":
                stopped = epoch
                break
        end = stopped or EPOCHS
        used += end + s.probe_cost(trials[i], end)
        if stopped is None:
            finished.append(i)
    return used, max(finished, key=lambda j: trials[j].final)


@pytest.mark.parametrize("rf", [2.0, 3.0, 4.0])
def test_the_asha_replay_stops_what_rays_bracket_stops(replay: ModuleType, rf: float) -> None:
    trials = scripted(replay, 16, seed=int(rf))
    rng = random.Random(1)
    schedulers = [replay.Scheduler("asha", rf, rungs="epochs", grace=g) for g in (1, 2, 5)]
    schedulers += [replay.Scheduler("asha", rf, probe_after=p) for p in ((1,), (1, 2), PROBES)]
    for s in schedulers:
        for _ in range(30):
            order = rng.sample(range(16), 12)
            assert replay.asha(s, trials, order) == pytest.approx(ray_asha(s, trials, order)), s.label


def test_the_halving_replay_keeps_what_the_searchs_bracket_keeps(replay: ModuleType) -> None:
    trials = scripted(replay, 10, seed=7)
    s = replay.Scheduler("halving", 3.0, probe_after=(1, 3))
    used, pick = replay.halving(s, trials, list(range(10)))
    bracket = Bracket(10, 2, 3.0, "max")
    names = [f"t{i}" for i in range(10)]
    for name in names:
        bracket.add(name)
    alive = set(names)
    for rung, p in enumerate(s.probe_after, 1):
        for name in sorted(alive, key=names.index):
            decision = bracket.on_rung(name, rung, trials[names.index(name)].probes[p][0])
            assert decision.action in (PAUSE, CONTINUE, "STOP")
        alive = bracket.survivors[rung] & alive
    # 10 -> ceil(10/3) = 4 -> ceil(4/3) = 2 finish
    assert len(alive) == 2
    assert pick == max((names.index(n) for n in alive), key=lambda i: trials[i].final)
    stopped1 = 10 - 4
    stopped3 = 4 - 2
    expected = stopped1 * (1 + 0.5) + stopped3 * (3 + 1.0) + 2 * (EPOCHS + 1.0)
    assert used == pytest.approx(expected)


def test_share_and_regret_of_a_draw(replay: ModuleType) -> None:
    good = replay.Recorded((0.1,) * 11 + (0.8,), {1: (0.9, 0.5)})
    bad = replay.Recorded((0.1,) * 11 + (0.5,), {1: (0.2, 0.5)})
    misleading = replay.Recorded((0.1,) * 11 + (0.9,), {1: (0.1, 0.5)})
    s = replay.Scheduler("halving", 3.0, probe_after=(1,))
    share, regret = replay.replay(s, [good, bad, misleading], [0, 1, 2])
    assert share == pytest.approx((12.5 + 1.5 + 1.5) / 36)
    assert regret == pytest.approx(0.1)  # the best final (0.9) was stopped on its probe


def write_recording(folder: Path, trials: list, n_val: int = 360) -> None:
    rows = []
    for k, t in enumerate(trials):
        for e, v in enumerate(t.curve, 1):
            probe = t.probes.get(e)
            rows.append(
                {
                    "trial_id": f"t{k:02d}",
                    "search_epoch": e,
                    "phase": "prune" if e <= PRUNE else "finetune",
                    "val_pgd_acc": v,
                    "val_pgd_acc_n": n_val,
                    "time_s": 2.0,
                    "probe_val_pgd_acc": probe[0] if probe else None,
                    "probe_time_s": 1.0 if probe else None,
                }
            )
        rows.append(
            {
                "trial_id": f"t{k:02d}",
                "search_epoch": 0,
                "phase": "pretrain",
                "val_pgd_acc": 0.1,
                "val_pgd_acc_n": n_val,
                "time_s": 2.0,
                "probe_val_pgd_acc": None,
                "probe_time_s": None,
            }
        )
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(folder / "epochs.parquet")
    (folder / "trials.parquet").write_bytes(b"")


def test_analyse_writes_the_defaults_figures_and_a_choice_made_on_the_selection_seeds(
    tmp_path: Path, replay: ModuleType, bench: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench.subprocess, "run", lambda cmd, **kw: None)
    bench.record(tmp_path, [0, 1, 2], samples=12)  # the specs, as a recording leaves them
    for seed in (0, 1, 2):
        write_recording(tmp_path / f"seed-{seed}", scripted(replay, 12, seed=10 + seed))
    out = tmp_path / "asha.json"
    argv = ["analyse", str(tmp_path), "--draws", "40", "--bracket", "8", "--select", "0", "1"]
    argv += ["--json", str(out)]
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    default = result["default"]
    # The search's own default for this spec (4 pruning + 8 finetuning epochs): ASHA from a
    # third into finetuning, reduction factor 4.
    assert default["scheduler"] == "asha epochs (grace 7, rf 4)"
    assert default["spec"] == {"scheduler": {"type": "asha", "grace_period": 7, "reduction_factor": 4.0}}
    assert result["select"] == [0, 1] and len(result["controls"]) == 3
    assert {"share", "median_regret", "regret_se"} <= set(default)
    assert 0 < default["share"] <= 1 and default["median_regret"] >= 0
    best = [r["best_final"] for r in result["recordings"]]
    assert default["regret_se"] == pytest.approx(sum(math.sqrt(b * (1 - b) / 360) for b in best) / 3)
    assert [r["seed"] for r in result["recordings"]] == [0, 1, 2]
    assert result["recordings"][0]["probe_cost_epochs"] == pytest.approx(0.5)
    chosen = result["recommended"]["scheduler"]
    assert chosen in result["candidates"]
    assert result["recommended"] == result["candidates"][chosen]
    # The choice reads the selection seeds only: a candidate meeting the goal there wins
    # over one that does not, whatever seed 2 says.
    per = {n: c["per_recording"] for n, c in result["candidates"].items()}
    on_select = [n for n, p in per.items() if all(bench.meets(p[s]) for s in ("0", "1"))]
    if on_select:
        assert chosen in on_select


def test_the_rule_prefers_the_goal_then_regret_then_share(bench: ModuleType) -> None:
    def m(share: float, regret: float) -> dict[str, float]:
        return {
            "share": share,
            "median_regret": regret,
            "p90_regret": regret,
            "within_se": 1.0,
            "regret_se": 0.02,
        }

    results = {
        "cheap but lossy": {"per_recording": [m(0.2, 0.05), m(0.2, 0.05)]},
        "meets, some regret": {"per_recording": [m(0.35, 0.01), m(0.3, 0.015)]},
        "meets, no regret": {"per_recording": [m(0.39, 0.0), m(0.38, 0.0)]},
        "meets once": {"per_recording": [m(0.1, 0.0), m(0.5, 0.0)]},
    }
    assert bench.choose(results, [0, 1]) == "meets, no regret"
    del results["meets, no regret"], results["meets, some regret"]
    # None meets on both: the cheapest whose regret stays within one SE on both.
    assert bench.choose(results, [0, 1]) == "meets once"


def test_record_runs_the_study_spec_once_per_seed(
    tmp_path: Path, bench: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = []
    monkeypatch.setattr(bench.subprocess, "run", lambda cmd, **kw: ran.append(cmd))
    (tmp_path / "seed-0").mkdir()
    (tmp_path / "seed-0" / "trials.parquet").write_bytes(b"")  # recorded already: kept
    bench.record(tmp_path, [0, 3], samples=5)
    assert len(ran) == 1 and ran[0][-3:] == ["--out", str(tmp_path / "seed-3"), "-q"]
    spec = load_spec(str(tmp_path / "spec-seed-3.yaml"), nodes=None)
    assert spec.seed == 3 and spec.base.seed == 3 and spec.num_samples == 5
    assert spec.base.prune.probe_after == PROBES and spec.scheduler.type == "fifo"
    assert spec.base.eval.val_limit is None  # rungs see every validation point
