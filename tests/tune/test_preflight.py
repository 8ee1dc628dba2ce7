"""A search checks its data sets and models before Ray starts (one ``error:`` line, status 2,
nothing written), tells the truth in its exit status when trials fail, and a trial's error
reaches the tables in its own words."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("ray.tune")

from s2ap.errors import ConfigError  # noqa: E402
from s2ap.tune.preflight import check_search  # noqa: E402
from s2ap.tune.search import SearchOutcome, failure_lines  # noqa: E402
from s2ap.tune.spec import load_spec  # noqa: E402
from tests.helpers.configs import search_base  # noqa: E402

BASE: dict[str, Any] = search_base(
    {
        "data.train_limit": 64,
        "data.test_limit": 32,
        "pretrain.epochs": 1,
        "prune.epochs": 1,
        "s2ap.warmup_epochs": 0,
        "eval.pgd_steps": 1,
        "eval.val_limit": 16,
    }
)


def spec_dict(tmp_path: Path, **base_changes: Any) -> dict[str, Any]:
    base = copy.deepcopy(BASE)
    for dotted, value in base_changes.items():
        section, key = dotted.split("__")
        base.setdefault(section, {})[key] = value
    return {
        "name": "t",
        "base": base,
        "num_samples": 1,
        "scheduler": {"type": "fifo"},
        "resources": {"workers": 1, "cpus_per_worker": 1},
        "storage": str(tmp_path / "runs"),
    }


def test_missing_data_set_fails_the_check_naming_data_root(tmp_path: Path) -> None:
    spec = load_spec(spec_dict(tmp_path, data__name="cifar10", data__root=str(tmp_path / "none")), nodes=None)
    with pytest.raises(ConfigError) as caught:
        check_search(spec)
    assert caught.value.field == "base.data.root"
    assert "no data set found at" in caught.value.message


def test_a_grid_cell_that_cannot_build_is_named(tmp_path: Path) -> None:
    d = spec_dict(tmp_path)
    d["grid"] = {"model.name": ["cnn", "torchvision:resnet18"]}
    with pytest.raises(ConfigError) as caught:
        check_search(load_spec(d, nodes=None))
    assert caught.value.field == "grid.model.name"
    assert "at model.name=torchvision:resnet18 in grid cell 1" in caught.value.message
    assert "takes 3 input channels but the data has 1; set data.gray_to_rgb: true" in caught.value.message


def test_gray_to_rgb_lets_an_rgb_model_run_on_digits(tmp_path: Path) -> None:
    d = spec_dict(tmp_path, model__name="torchvision:resnet18", data__gray_to_rgb=True)
    assert check_search(load_spec(d, nodes=None)) >= 0.0


def test_cli_missing_data_set_is_one_line_status_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from s2ap.tune.__main__ import main

    path = tmp_path / "spec.yaml"
    path.write_text(
        yaml.safe_dump(spec_dict(tmp_path, data__name="cifar10", data__root=str(tmp_path / "none")))
    )
    assert main([str(path), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: base.data.root: no data set found at ") and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()  # no search folder, no Ray


def _outcome(*rows: dict[str, Any]) -> SearchOutcome:
    return SearchOutcome("s", "s/trials.parquet", "s/epochs.parquet", list(rows), {}, 1.0)


def _row(tid: str, cell: int, status: str, error: str | None = None) -> dict[str, Any]:
    return {"trial_id": tid, "grid_cell": cell, "status": status, "error": error}


def test_exit_status_follows_the_cells(tmp_path: Path) -> None:
    d = spec_dict(tmp_path)
    d["grid"] = {"s2ap.enabled": [False, True]}
    spec = load_spec(d, nodes=None)
    all_failed = _outcome(_row("b", 1, "error", "data.root: gone"), _row("a", 0, "error", "x: y"))
    status, lines = failure_lines(spec, all_failed)
    assert status == 1 and lines == [
        "error: no trial finished: 2 of 2 trials failed; first error (trial a): x: y"
    ]
    one_cell = _outcome(_row("a", 0, "ok"), _row("b", 1, "error", "data.root: gone"))
    status, lines = failure_lines(spec, one_cell)
    assert status == 1 and lines[0].startswith("error: 1 of 2 grid cells have no finished trial (cells 1)")
    assert lines[0].endswith("1 of 2 trials failed; first error (trial b): data.root: gone")
    fine = _outcome(_row("a", 0, "ok"), _row("b", 1, "ok"))
    assert failure_lines(spec, fine) == (0, [])


def test_some_failed_trials_are_a_warning_when_every_cell_finished(tmp_path: Path) -> None:
    d = spec_dict(tmp_path)
    d["search"] = {"s2ap.gamma": {"type": "loguniform", "low": 0.001, "high": 0.01}}
    d["num_samples"] = 2
    spec = load_spec(d, nodes=None)
    status, lines = failure_lines(spec, _outcome(_row("a", 0, "ok"), _row("b", 0, "error", "boom")))
    assert status == 0 and lines == ["warning: 1 of 2 trials failed; first error (trial b): boom"]


@pytest.mark.slow
@pytest.mark.ray
def test_a_config_error_inside_a_trial_reaches_the_table_in_its_own_words(tmp_path: Path) -> None:
    """With the check off (as when joining a cluster whose nodes hold the data), the trial
    raises the ConfigError inside Ray; its row carries the message, not Ray's wrapper."""
    import pandas as pd
    import ray

    from s2ap.tune.search import run_search

    spec = load_spec(spec_dict(tmp_path, data__name="cifar10", data__root=str(tmp_path / "none")), nodes=None)
    try:
        outcome = run_search(spec, quiet=True, preflight=False)
    finally:
        ray.shutdown()
    trials = pd.read_parquet(outcome.trials_path)
    assert list(trials["status"]) == ["error"]
    error = trials["error"].iloc[0]
    assert error.startswith(f"data.root: no data set found at {tmp_path / 'none'}"), error
    assert "TypeError" not in error and "RayTaskError" not in error
    status, lines = failure_lines(spec, outcome)
    assert status == 1 and lines[0].endswith(error)


def test_gray_to_rgb_repeats_the_channel_and_its_statistics() -> None:
    from s2ap.config import DataConfig
    from s2ap.data import load_splits
    from s2ap.tensor_data import TensorImageDataset

    gray = load_splits(DataConfig(name="digits", test_limit=8), seed=0)
    rgb = load_splits(DataConfig(name="digits", test_limit=8, gray_to_rgb=True), seed=0)
    assert (gray.info.in_channels, rgb.info.in_channels) == (1, 3)
    assert len(rgb.info.mean) == 3 and all(
        math.isclose(m, gray.info.mean[0], rel_tol=1e-5) for m in rgb.info.mean
    )
    x_gray, y_gray = gray.test[3]
    x_rgb, y_rgb = rgb.test[3]
    assert y_gray == y_rgb and x_rgb.shape == (3, *x_gray.shape[1:])
    assert all(bool((x_rgb[c] == x_gray[0]).all()) for c in range(3))
    assert isinstance(rgb.test.dataset, TensorImageDataset)  # still batched, device-loadable
