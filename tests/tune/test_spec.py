"""Search specs: parsing, every rejection, the shipped spaces, the CLI's one-line errors. No Ray."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from s2ap.config import ConfigError
from s2ap.tune.spec import (
    Resources,
    concurrency,
    load_spec,
    search_epoch,
    spec_hash,
    spec_to_dict,
)

ROOT = Path(__file__).resolve().parents[2]
SPACES = ROOT / "search_spaces"


def tiny(**changes: Any) -> dict[str, Any]:
    """A small valid spec mapping; ``changes`` replace top-level keys (None deletes)."""
    spec: dict[str, Any] = {
        "name": "tiny",
        "base": {
            "data": {"name": "digits", "image_size": 8, "train_limit": 128, "batch_size": 32},
            "attack": {"steps": 1},
            "pretrain": {"epochs": 2},
            "prune": {"epochs": 4},
            "finetune": {"epochs": 1},
            "s2ap": {"enabled": True, "warmup_epochs": 1},
            "eval": {"autoattack": False},
        },
        "grid": {"s2ap.enabled": [False, True], "prune.sparsity": [0.5, 0.9]},
        "search": {
            "s2ap.gamma": {"type": "loguniform", "low": 0.001, "high": 0.01},
            "s2ap.warmup_epochs": {"type": "int", "low": 1, "high": 2},
        },
        "num_samples": 3,
        "scheduler": {"type": "asha"},
        "resources": {"workers": 1, "cpus_per_worker": 1},
        "storage": "/tmp/s2ap-tune-spec-tests",
    }
    for key, value in changes.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return spec


def rejects(spec: dict[str, Any], field: str, nodes: Any = None, contains: str = "") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_spec(spec, nodes=nodes)
    assert info.value.field == field, str(info.value)
    assert contains in info.value.message
    return info.value


# --------------------------------------------------------------------------- parsing


def test_tiny_spec_parses_into_cells() -> None:
    spec = load_spec(tiny(), nodes=None)
    cells = spec.cells()
    assert [c.values for c in cells] == [
        {"s2ap.enabled": False, "prune.sparsity": 0.5},
        {"s2ap.enabled": False, "prune.sparsity": 0.9},
        {"s2ap.enabled": True, "prune.sparsity": 0.5},
        {"s2ap.enabled": True, "prune.sparsity": 0.9},
    ]
    # S2AP off: gamma and warm-up cannot matter, so the baseline runs once, unsearched.
    assert [c.samples for c in cells] == [1, 1, 3, 3]
    assert not cells[0].space and set(cells[2].space) == {"s2ap.gamma", "s2ap.warmup_epochs"}
    assert spec.num_trials() == 8
    # ASHA judges a trial only after the longest warm-up (2) plus one S2AP epoch.
    assert spec.grace_period() == 3
    assert spec.max_search_epochs() == 5  # 4 pruning + 1 finetuning
    assert spec.device == "cpu" and spec.pretrain_cache == "/tmp/s2ap-tune-spec-tests/pretrain_cache"
    cfg = spec.trial_config({"s2ap.enabled": True, "prune.sparsity": 0.9, "s2ap.gamma": 0.004})
    assert cfg.prune.sparsity == 0.9 and cfg.s2ap.gamma == 0.004 and cfg.device == "cpu"


def test_the_table5_mask_evaluation_is_off_in_a_trial_unless_the_spec_asks_for_it() -> None:
    """It ranks no trial: left null, a trial skips it (a single run does it, see
    tests/test_pipeline.py); set in the base, overrides or the grid, it is kept."""
    spec = load_spec(tiny(), nodes=None)
    assert spec.base.eval.mask_test is None
    assert spec.trial_config({"prune.sparsity": 0.9}).eval.mask_test is False
    assert spec.trial_config({"eval.mask_test": True}).eval.mask_test is True
    on = load_spec(tiny(overrides={"eval.mask_test": True}), nodes=None)
    assert on.trial_config({"prune.sparsity": 0.9}).eval.mask_test is True


def test_method_fidelity_settings_are_grid_axes() -> None:
    """surface vs algorithm1 (and the other new settings) are one-line ablations."""
    spec = load_spec(tiny(grid={"s2ap.projection": ["surface", "algorithm1"]}), nodes=None)
    cheap = load_spec(tiny(grid={"s2ap.ascent": ["fresh", "previous"]}), nodes=None)
    assert [cheap.trial_config(c.values).s2ap.ascent for c in cheap.cells()] == ["fresh", "previous"]
    cells = spec.cells()
    assert [c.values for c in cells] == [{"s2ap.projection": "surface"}, {"s2ap.projection": "algorithm1"}]
    assert spec.trial_config(cells[0].values).s2ap.projection == "surface"
    assert spec.trial_config(cells[1].values).s2ap.projection == "algorithm1"
    grid = {
        "prune.best_mask": ["train_loss_iter", "val_robust"],
        "data.augment": [False, True],
        "adasap.prune_every": [10, 30],
    }
    assert len(load_spec(tiny(grid=grid), nodes=None).cells()) == 8
    rejects(
        tiny(grid={"s2ap.projection": ["surface", "ball"]}), "grid.s2ap.projection", contains="algorithm1"
    )


def test_trial_config_is_the_frozen_base_changed_and_validated_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from s2ap import experiment
    from s2ap.config import ExperimentConfig

    spec = load_spec(tiny(overrides={"s2ap.gamma": 0.002}), nodes=None)
    assert isinstance(spec.base, ExperimentConfig) and spec.base_config() is spec.base
    assert spec.base.s2ap.gamma == 0.002 and not spec.overrides  # the overrides live in base
    checked: list[Any] = []
    real = experiment.check
    monkeypatch.setattr(experiment, "check", lambda cfg: checked.append(cfg) or real(cfg))
    cfg = spec.trial_config({"cell": 3, "s2ap.enabled": True, "prune.sparsity": 0.9, "s2ap.gamma": 0.004})
    assert checked == [cfg]  # one validation of the whole trial config, none of the base
    assert cfg.s2ap.gamma == 0.004 and spec.base.s2ap.gamma == 0.002


def test_spec_round_trips_and_hash_ignores_storage() -> None:
    spec = load_spec(tiny(), nodes=None)
    again = load_spec(json.loads(json.dumps(spec_to_dict(spec))), nodes=None)
    assert again == spec
    moved = load_spec(tiny(storage="/tmp/elsewhere"), nodes=None)
    assert spec_hash(moved) == spec_hash(spec)
    assert spec_hash(load_spec(tiny(num_samples=4), nodes=None)) != spec_hash(spec)


def test_search_epoch_counts_after_pretraining() -> None:
    cfg = load_spec(tiny(), nodes=None).base_config()
    assert search_epoch(cfg, "pretrain", 1) == 0
    assert search_epoch(cfg, "prune", 0) == 1
    assert search_epoch(cfg, "finetune", 0) == cfg.prune.epochs + 1


def test_base_from_file_with_overrides(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny()["base"]))
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(yaml.safe_dump(tiny(base="base.yaml", overrides={"prune.epochs": 5})))
    spec = load_spec(spec_file, nodes=None)
    assert spec.base_config().prune.epochs == 5
    assert spec.name == "tiny"


@pytest.mark.parametrize("name", ["quickstart", "gamma", "warmup", "ablation"])
def test_shipped_search_spaces_are_valid(name: str) -> None:
    text = (SPACES / f"{name}.yaml").read_text()
    from s2ap.pruning import METHODS

    if "harp" in text and "harp" not in METHODS:
        pytest.skip("the harp method is not registered in this checkout")
    spec = load_spec(SPACES / f"{name}.yaml", nodes=None)
    assert spec.name == name
    if name == "ablation":
        assert spec.num_trials() == 2 * 2 * 4 * 3
        assert spec.scheduler.type == "fifo"
    if name == "gamma":
        d = spec.search["s2ap.gamma"]
        assert (d.type, d.low, d.high) == ("loguniform", 0.00075, 0.01)
        assert spec.base_config().prune.sparsity == 0.9 and spec.base_config().model.name == "resnet18"
    if name == "quickstart":
        assert spec.resources.gpus_per_worker == 0
        load_spec(SPACES / f"{name}.yaml")  # fits this machine
        assert {"s2ap.gamma", "s2ap.warmup_epochs"} <= set(spec.search)
        assert [c.samples for c in spec.cells()] == [1, spec.num_samples]


def headline_points(cfg: Any) -> int:
    """Test points the headline clean / PGD / AutoAttack figures share for ``cfg``."""
    from s2ap.data import load_splits

    n = len(load_splits(cfg.data, cfg.seed).test)  # type: ignore[arg-type]
    n = min(n, cfg.data.test_limit or n)
    return min(n, cfg.eval.test_points or n)


@pytest.mark.parametrize(
    "where", ["search_spaces/quickstart.yaml", "search_spaces/digits_ablation.yaml", "configs/digits.yaml"]
)
def test_shipped_digits_defaults_can_resolve_five_points(where: str) -> None:
    from s2ap.experiment import load
    from s2ap.stats import wilson

    path = ROOT / where
    cfg = load_spec(path, nodes=None).base_config() if "search_spaces" in where else load(path)
    n = headline_points(cfg)
    worst = wilson(n // 2, n)  # p = 0.5: the widest interval
    assert (worst.hi - worst.lo) / 2 <= 0.055, f"{where}: {n} headline points"
    if where.endswith("digits_ablation.yaml"):
        # The seed study (README, generated by benchmarks/seed_study.py): gamma fixed in advance, >= 5 seeds x 2 sparsities, Orig. vs S2AP.
        spec = load_spec(path, nodes=None)
        assert not spec.search and spec.scheduler.type == "fifo"
        assert len(spec.grid["seed"]) >= 5 and len(spec.grid["prune.sparsity"]) == 2
        assert spec.num_trials() == 2 * len(spec.grid["prune.sparsity"]) * len(spec.grid["seed"])


def test_the_ascent_study_is_the_seed_study_with_only_the_ascent_varied() -> None:
    """README's ascent study pairs fresh and previous runs: the seed study's base with S2AP on,
    the same seeds and sparsities, s2ap.ascent the only other axis."""
    from dataclasses import replace

    study, seeds = (load_spec(SPACES / f"{n}.yaml", nodes=None) for n in ("ascent_study", "digits_ablation"))
    assert list(study.grid["s2ap.ascent"]) == ["fresh", "previous"] and "s2ap.enabled" not in study.grid
    assert {k: v for k, v in study.grid.items() if k != "s2ap.ascent"} == {
        k: v for k, v in seeds.grid.items() if k != "s2ap.enabled"
    }
    assert study.base.s2ap.enabled and not seeds.base.s2ap.enabled
    assert study.base == replace(seeds.base, s2ap=replace(seeds.base.s2ap, enabled=True))
    assert study.scheduler.type == "fifo" and not study.search


@pytest.mark.slow  # a fresh interpreter importing the spec
def test_spec_module_does_not_import_ray() -> None:
    code = (
        "import sys, s2ap.tune, s2ap.tune.spec, s2ap.tune.results, s2ap.tune.trainable; "
        "s2ap.tune.load_spec({'base': {}}, nodes=None); print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- rejections


def test_rejects_unknown_keys() -> None:
    rejects(tiny(bogus=1), "bogus", contains="unknown key")
    rejects(tiny(scheduler={"type": "asha", "patience": 3}), "scheduler.patience")
    rejects(tiny(resources={"workers": 1, "tpus": 1}), "resources.tpus")
    rejects(tiny(grid={"prune.bogus": [1, 2]}), "grid.prune.bogus", contains="unknown key")
    rejects(tiny(search={"model.depth": {"type": "int", "low": 1, "high": 3}}), "search.model.depth")
    base = copy.deepcopy(tiny()["base"])
    base["prune"]["speed"] = 3
    rejects(tiny(base=base), "base.prune.speed")
    rejects(tiny(overrides={"prune.nope": 1}), "overrides.prune.nope")


@pytest.mark.parametrize(
    ("dist", "field"),
    [
        ({"low": 0.1, "high": 1}, "search.s2ap.gamma.type"),
        ({"type": "gaussian", "low": 0, "high": 1}, "search.s2ap.gamma.type"),
        ({"type": "loguniform", "low": 0.0, "high": 0.01}, "search.s2ap.gamma.low"),
        ({"type": "uniform", "low": 0.01, "high": 0.001}, "search.s2ap.gamma.high"),
        ({"type": "uniform", "low": 0.001}, "search.s2ap.gamma.high"),
        ({"type": "uniform", "low": "a", "high": 1}, "search.s2ap.gamma.low"),
        ({"type": "loguniform", "low": 0.001, "high": 0.01, "step": 0.001}, "search.s2ap.gamma.step"),
        ({"type": "int", "low": 0.5, "high": 3}, "search.s2ap.gamma.low"),
        ({"type": "categorical", "values": []}, "search.s2ap.gamma.values"),
        ({"type": "categorical", "values": [0.1, 0.1]}, "search.s2ap.gamma.values"),
        ({"type": "categorical", "values": [[1], [2]]}, "search.s2ap.gamma.values[0]"),
        ([0.001, 0.01], "search.s2ap.gamma"),
    ],
)
def test_rejects_malformed_distributions(dist: Any, field: str) -> None:
    rejects(tiny(search={"s2ap.gamma": dist}), field)


def test_rejects_empty_grid_and_duplicates() -> None:
    rejects(tiny(grid={}), "grid", contains="non-empty")
    rejects(tiny(grid={"prune.sparsity": []}), "grid.prune.sparsity")
    rejects(tiny(grid={"prune.sparsity": [0.9, 0.9]}), "grid.prune.sparsity", contains="distinct")
    rejects(tiny(grid={"s2ap.gamma": [0.001]}), "search.s2ap.gamma", contains="grid")
    rejects(tiny(grid={"device": ["cpu"]}), "grid.device")
    assert load_spec(tiny(grid=None), nodes=None).cells()[0].values == {}


def test_rejects_a_metric_the_pipeline_never_reports() -> None:
    rejects(tiny(scheduler={"type": "asha", "metric": "val_robust_acc"}), "scheduler.metric")
    rejects(tiny(scheduler={"type": "asha", "metric": "hamming"}), "scheduler.metric")
    rejects(tiny(scheduler={"type": "asha", "mode": "up"}), "scheduler.mode")
    rejects(tiny(scheduler={"type": "hyperband"}), "scheduler.type")
    rejects(tiny(scheduler={"type": "asha", "reduction_factor": 1}), "scheduler.reduction_factor")


def test_rejects_resources_no_node_provides() -> None:
    laptop = [{"CPU": 2.0, "GPU": 0.0}]
    rejects(tiny(resources={"gpus_per_worker": 1}), "resources.gpus_per_worker", nodes=laptop)
    rejects(tiny(resources={"cpus_per_worker": 64}), "resources.cpus_per_worker", nodes=laptop)
    two_nodes = [{"CPU": 2.0}, {"CPU": 2.0}]
    rejects(tiny(resources={"workers": 5}), "resources.workers", nodes=two_nodes)
    rejects(tiny(resources={"workers": 0}), "resources.workers")
    rejects(tiny(resources={"cpus_per_worker": 0}), "resources.cpus_per_worker")
    # The embedded Ray is sized to fit: a 2-worker trial is fine on this machine.
    load_spec(tiny(resources={"workers": 2, "cpus_per_worker": 1}))
    base = copy.deepcopy(tiny()["base"])
    base["device"] = "cuda"
    rejects(tiny(base=base), "resources.gpus_per_worker", contains="cuda")


def test_rejects_warmup_longer_than_pruning_in_any_cell() -> None:
    # Searched warm-up reaching the 4 pruning epochs of a cell.
    err = rejects(
        tiny(search={"s2ap.warmup_epochs": {"type": "int", "low": 1, "high": 4}}), "search.s2ap.warmup_epochs"
    )
    assert "prune.epochs" in err.message
    # A grid cell with fewer pruning epochs than the fixed warm-up of the base.
    base = copy.deepcopy(tiny()["base"])
    base["s2ap"]["warmup_epochs"] = 3
    err = rejects(tiny(base=base, search={}, grid={"prune.epochs": [6, 2]}), "base.s2ap.warmup_epochs")
    assert "prune.epochs=2" in err.message
    # With S2AP off in every cell the warm-up does not matter.
    load_spec(tiny(base=base, search={}, grid={"prune.epochs": [6, 2], "s2ap.enabled": [False]}), nodes=None)


def test_rejects_grace_period_before_warmup_ends() -> None:
    rejects(tiny(scheduler={"type": "asha", "grace_period": 2}), "scheduler.grace_period", contains="warm-up")
    rejects(
        tiny(scheduler={"type": "asha", "grace_period": 5}), "scheduler.grace_period", contains="smaller than"
    )
    assert load_spec(tiny(scheduler={"type": "asha", "grace_period": 4}), nodes=None).grace_period() == 4


def test_object_store_uris_are_storage_and_the_cache_follows_them() -> None:
    spec = load_spec(tiny(storage="s3://bucket/runs/"), nodes=None)  # checked, not probed, at load
    assert spec.storage == "s3://bucket/runs" and spec.search_dir == "s3://bucket/runs/tiny"
    assert spec.pretrain_cache == "s3://bucket/runs/pretrain_cache"
    own = load_spec(tiny(storage="gs://b/r", pretrain_cache="s3://cache/p"), nodes=None)
    assert own.pretrain_cache == "s3://cache/p"
    assert spec_hash(own) == spec_hash(spec)  # where results go is not what a search is


def test_rejects_other_bad_values() -> None:
    rejects(tiny(num_samples=0), "num_samples")
    rejects(tiny(num_samples=2.5), "num_samples")
    rejects(tiny(name="a b"), "name")
    rejects(tiny(base=None), "base")
    rejects(tiny(max_concurrent=0), "max_concurrent")
    rejects(tiny(optuna_storage="optuna.db"), "optuna_storage")
    rejects(tiny(storage="ftp://host/runs"), "storage", contains="unknown storage scheme 'ftp://'")
    rejects(tiny(storage="s3://KEY:SECRET@bucket/runs"), "storage", contains="credentials in the URI")
    rejects(tiny(pretrain_cache="nfs://host/cache"), "pretrain_cache", contains="unknown storage scheme")
    rejects(tiny(grid={"prune.sparsity": [0.5, 1.5]}), "grid.prune.sparsity", contains="(0, 1)")
    rejects(tiny(grid={"prune.method": ["hydra", "nope"]}), "grid.prune.method", contains="allowed")


def test_concurrency_never_starts_a_trial_that_cannot_fit() -> None:
    one_worker = load_spec(tiny(resources={"workers": 1, "cpus_per_worker": 2}), nodes=None)
    # A one-worker trial is its trainable (it runs the pipeline): no sliver besides it.
    assert concurrency(one_worker, [{"CPU": 2.0}, {"CPU": 2.0}]) == 2
    assert concurrency(one_worker, [{"CPU": 3.0}, {"CPU": 1.0}]) == 1
    # DDP: two 2-CPU nodes hold both trials' worker bundles, but not the trainables' sliver.
    two = load_spec(tiny(resources={"workers": 2, "cpus_per_worker": 1}), nodes=None)
    assert concurrency(two, [{"CPU": 2.0}, {"CPU": 2.0}]) == 1
    assert concurrency(two, [{"CPU": 2.5}, {"CPU": 2.5}]) == 2
    ddp = load_spec(tiny(resources={"workers": 2, "cpus_per_worker": 1}, max_concurrent=2), nodes=None)
    assert concurrency(ddp, [{"CPU": 8.0}]) == 2  # capped by max_concurrent
    assert Resources(2, 1.5, 0).trial_cpus == 3.0


# --------------------------------------------------------------------------- CLI


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "s2ap.tune", *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def bad_spec(tmp_path: Path) -> Path:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(tiny(scheduler={"type": "asha", "metric": "accuracy"})))
    return bad


@pytest.mark.parametrize(
    ("args", "start"),
    [
        (["bad.yaml"], "error: scheduler.metric: "),
        (["missing.yaml"], "error: spec: file not found"),
        (["bad.yaml", "--bogus"], "error: arguments: "),
    ],
)
def test_cli_bad_input_is_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], start: str
) -> None:
    # The CLI's main() in this process; the slow test below runs the real command.
    from s2ap.tune.__main__ import main

    bad_spec(tmp_path)
    try:
        status = main([str(tmp_path / a) if a.endswith(".yaml") else a for a in args])
    except SystemExit as exc:  # argparse's own refusal
        status = exc.code
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(start), err
    assert "Traceback" not in err


@pytest.mark.slow  # a python -m s2ap.tune subprocess (torch import)
def test_the_command_refuses_a_bad_spec_in_one_line_with_status_2(tmp_path: Path) -> None:
    out = run_cli(str(bad_spec(tmp_path)))
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: scheduler.metric: "), out.stderr
    assert "Traceback" not in out.stderr


def test_default_grace_is_a_third_into_finetuning() -> None:
    # With finetuning epochs to spare, ASHA's first rung waits until the mask is fixed (the
    # longest pruning phase, a grid over prune.epochs included) and a third of finetuning
    # (rounded up) has run: bench_asha.py's choice, with reduction factor 4.
    base = tiny()["base"]
    spec = load_spec(tiny(base={**base, "finetune": {"epochs": 3}}), nodes=None)
    assert spec.grace_period() == 5  # 4 pruning epochs + 1 of 3
    spec = load_spec(tiny(base={**base, "finetune": {"epochs": 8}}), nodes=None)
    assert spec.grace_period() == 7  # 4 + 3 of 8: the setting bench_asha.py recorded
    spec = load_spec(tiny(base={**base, "finetune": {"epochs": 10}}), nodes=None)
    assert spec.grace_period() == 8  # 4 + 4 of 10
    grid = {"prune.epochs": [4, 6], "s2ap.enabled": [True]}
    spec = load_spec(tiny(base={**base, "finetune": {"epochs": 3}}, grid=grid), nodes=None)
    assert spec.grace_period() == 7
    assert spec.scheduler.reduction_factor == 4.0
    # No finetuning epoch to spare (4 + 1 = 5 of 5): one epoch after the longest warm-up.
    assert load_spec(tiny(), nodes=None).grace_period() == 3


def test_the_old_point_count_key_is_refused_in_a_spec_with_its_new_name() -> None:
    base = tiny()["base"]
    rejects(
        tiny(base={**base, "eval": {"autoattack_n": 5}}),
        "base.eval.autoattack_n",
        contains="eval.test_points",
    )


def _probing(**scheduler: Any) -> dict[str, Any]:
    spec = tiny(scheduler=scheduler)
    spec["base"]["prune"]["probe_after"] = [2, 3]
    return spec


def test_probe_rungs_sit_at_the_base_probe_epochs() -> None:
    for scheduler in ({"type": "halving"}, {"type": "asha", "rungs": "probe"}):
        spec = load_spec(_probing(**scheduler), nodes=None)
        assert spec.probe_after() == (2, 3)
        assert all(cfg.prune.probe_after == (2, 3) for cfg in spec.corner_configs)
    assert load_spec(_probing(type="halving"), nodes=None).scheduler.reduction_factor == 4.0
    assert (
        load_spec(_probing(type="asha"), nodes=None).probe_after() == ()
    )  # epoch rungs: probes only recorded


def test_probe_rungs_refuse_what_they_cannot_judge() -> None:
    rejects(tiny(scheduler={"type": "halving"}), "base.prune.probe_after", contains="same probe epochs")
    varied = _probing(type="halving")
    varied["grid"]["prune.probe_after"] = [[1], [2]]
    rejects(varied, "base.prune.probe_after", contains="same probe epochs")
    rejects(_probing(type="halving", metric="train_loss"), "scheduler.metric", contains="val_pgd_acc")
    rejects(_probing(type="asha", rungs="probe", grace_period=4), "scheduler.grace_period")


def test_refuses_gpu_shares_a_rank_cannot_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A rank trains on one device: two ranks on one GPU (NCCL refuses) or a second GPU per
    worker is one line, exit 2, before Ray starts (issue 32, item 1)."""
    gpus = [{"CPU": 8.0, "GPU": 4.0}]
    err = rejects(tiny(resources={"workers": 2, "gpus_per_worker": 0.5}), "resources.gpus_per_worker", gpus)
    assert "two ranks on one GPU" in err.message
    rejects(tiny(resources={"workers": 1, "gpus_per_worker": 2}), "resources.gpus_per_worker", gpus)
    rejects(tiny(resources={"workers": 2, "gpus_per_worker": 1.5}), "resources.gpus_per_worker", gpus)
    # A share of a GPU for one worker, and one GPU per worker of a DDP trial, are fine.
    assert load_spec(tiny(resources={"workers": 1, "gpus_per_worker": 0.25}), nodes=gpus).resources
    assert load_spec(tiny(resources={"workers": 2, "gpus_per_worker": 1}), nodes=gpus).resources
    from s2ap.tune.__main__ import main

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(tiny(resources={"workers": 2, "gpus_per_worker": 0.5})))
    assert main([str(path), "-q"]) == 2
    err_line = capsys.readouterr().err
    assert err_line.startswith("error: resources.gpus_per_worker: ") and err_line.count("\n") == 1
