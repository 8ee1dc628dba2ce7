"""Data sets by import path (``data.name: package.module:callable``), in ``s2ap.run`` and in a
search; and a run folder that reproduces its reported clean accuracy from its files alone."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from s2ap.config import DataConfig
from s2ap.data import load_splits
from s2ap.errors import ConfigError
from s2ap.experiment import from_dict, load
from s2ap.models import from_config
from s2ap.run import main
from tests.helpers.configs import one_epoch_run

SOURCE = """
import torch
from torch import nn
from torch.utils.data import TensorDataset

CALLS = []


class Net(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4, num_classes)

    def forward(self, x):
        return self.fc(nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 2).flatten(1))


def _sets(n, seed, channels=1, size=8, classes=3):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.rand(n, channels, size, size, generator=gen) * 0.6 + 0.1 * labels.view(n, 1, 1, 1)
    return TensorDataset(images.clamp(0, 1), labels)


def three(seed, image_size=None):
    CALLS.append({"seed": seed, "image_size": image_size})
    return _sets(60, 1), _sets(12, 2), _sets(20, 3)


def two(root):
    CALLS.append({"root": root})
    return [_sets(50, 1), _sets(20, 3)]


def rgb():
    return _sets(80, 1, channels=3, classes=4), _sets(24, 3, channels=3, classes=4)


def bad():
    return 5


def boom(download):
    raise OSError("no such disk")
"""
_counter = itertools.count()


@pytest.fixture
def data_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A user's data module on ``sys.path`` (and PYTHONPATH, for the processes Ray starts)."""
    name = f"s2ap_user_data_{next(_counter)}"
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / f"{name}.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    paths = [str(folder), str(Path(__file__).resolve().parent.parent)]
    monkeypatch.setenv("PYTHONPATH", ":".join(paths + [p for p in [sys.path[0]] if p]))
    yield name
    sys.modules.pop(name, None)


def test_a_callable_gets_what_its_signature_names_and_its_sets_are_split(data_module: str) -> None:
    splits = load_splits(DataConfig(name=f"{data_module}:three", test_limit=15), seed=7)
    calls = sys.modules[data_module].CALLS
    assert calls == [{"seed": 7, "image_size": None}]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (60, 12, 15)  # val as given
    info = splits.info
    assert (info.num_classes, info.in_channels, info.image_size) == (3, 1, 8)  # from the data
    assert len(info.mean) == 1 and 0 < info.mean[0] < 1 and info.std[0] > 0  # measured on train

    given = DataConfig(name=f"{data_module}:two", root="here", val_fraction=0.2, mean=(0.5,), std=(0.2,))
    splits = load_splits(given, seed=0)
    assert calls[-1] == {"root": "here"}
    assert (len(splits.train), len(splits.val), len(splits.test)) == (40, 10, 20)  # val split off train
    assert (splits.info.mean, splits.info.std) == ((0.5,), (0.2,))
    assert load_splits(DataConfig(name=f"{data_module}:two", num_classes=5), 0).info.num_classes == 5


@pytest.mark.parametrize(
    ("target", "needle"),
    [
        ("bad", "must return (train, val, test) or (train, test) datasets, got a int"),
        ("boom", "raised OSError: no such disk"),
    ],
)
def test_a_callable_that_fails_is_one_line_naming_data_name(
    data_module: str, target: str, needle: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        load_splits(DataConfig(name=f"{data_module}:{target}"), seed=0)
    assert exc.value.field == "data.name" and needle in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("no_such_module_xyz:load", "cannot import module 'no_such_module_xyz'"),
        ("os.path:nope", "no attribute"),
    ],
)
def test_an_unknown_callable_is_refused_when_the_config_is_checked(name: str, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict({"data": {"name": name}})
    assert exc.value.field == "data.name" and needle in str(exc.value)


def test_the_cli_refuses_a_failing_callable_in_one_line(
    data_module: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"data": {"name": f"{data_module}:boom"}}))
    assert main([str(path), "--out", str(tmp_path / "run"), "-q"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: data.name: {data_module}:boom(download=False) raised OSError: no such disk"]


TINY = {"seed": 0, **one_epoch_run({"data.batch_size": 16, "prune.sparsity": 0.5})}


@pytest.mark.slow
def test_a_callable_runs_in_s2ap_run(
    data_module: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = {**TINY, "data": {**TINY["data"], "name": f"{data_module}:rgb"}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main([str(path), "--out", str(tmp_path / "run"), "--threads", "1", "-q"]) == 0, (
        capsys.readouterr().err
    )
    row = pd.read_parquet(tmp_path / "run" / "final.parquet").iloc[0]
    assert row.dataset == f"{data_module}:rgb" and row.clean_acc_n == 24 and row.status == "ok"
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written["data"]["num_classes"] == 4 and len(written["model"]["mean"]) == 3


@pytest.mark.slow
@pytest.mark.ray
def test_a_callable_runs_in_a_search(data_module: str, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from s2ap.tune.cluster import start_local_ray
    from s2ap.tune.search import run_search
    from s2ap.tune.spec import load_spec

    base = {**TINY, "data": {**TINY["data"], "name": f"{data_module}:rgb"}}
    spec = load_spec(
        {
            "name": "t",
            "base": base,
            "num_samples": 1,
            "grid": {"prune.sparsity": [0.5]},
            "scheduler": {"type": "fifo"},
            "resources": {"workers": 1, "cpus_per_worker": 1},
            "max_concurrent": 1,
            "storage": str(tmp_path / "runs"),
        }
    )
    try:
        start_local_ray(num_cpus=1)
        outcome = run_search(spec, quiet=True)
    finally:
        ray.shutdown()
    trials = pd.read_parquet(outcome.trials_path)
    assert list(trials.status) == ["ok"] and list(trials.dataset) == [f"{data_module}:rgb"]
    assert list(trials.clean_acc_n) == [24]


@pytest.mark.slow
def test_a_run_folder_reproduces_its_clean_accuracy_from_its_files_alone(
    data_module: str, tmp_path: Path
) -> None:
    """config.yaml (data, split seed, normalisation, size) and pruned_dense.pt rebuild the
    model and the test points; its clean accuracy on them is the one final.parquet reports.
    The model is the user's own (an import path): pruned_dense.pt is its plain state dict,
    without the normalisation, which only config.yaml records."""
    config = {
        **TINY,
        "model": {"name": f"{data_module}:Net"},
        "data": {"name": "digits", "batch_size": 32, "train_limit": 128, "test_limit": 100},
    }
    path = tmp_path / "in.yaml"
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    assert main([str(path), "--out", str(run), "--threads", "1", "-q"]) == 0

    cfg = load(run / "config.yaml")  # nothing else: no in-memory state of the run
    assert cfg.model.mean is not None and cfg.data.image_size == 8 and cfg.data.num_classes == 10
    reported = pd.read_parquet(run / "final.parquet").iloc[0]
    test = load_splits(cfg.data, cfg.seed).test
    n = int(reported.clean_acc_n)
    assert n == cfg.data.test_limit == 100  # the headline points: the recorded test split's first n
    x = torch.stack([test[i][0] for i in range(n)])
    y = torch.tensor([int(test[i][1]) for i in range(n)])
    d, m = cfg.data, cfg.model
    assert d.num_classes is not None and d.image_size is not None and m.mean is not None and m.std is not None
    model = from_config(m, d.num_classes, x.shape[1], d.image_size, m.mean, m.std, masked=False)
    model.net.load_state_dict(torch.load(run / "pruned_dense.pt"), strict=True)
    assert float((model.net.conv.weight == 0).float().mean()) >= 0.4  # the pruned weights
    with torch.no_grad():
        accuracy = float((model.eval()(x).argmax(1) == y).float().mean())
    assert accuracy == reported.clean_acc

    # the README's resume command names the folder's config.yaml: the same run, the same hash
    assert main([str(run / "config.yaml"), "--out", str(run), "--resume", "--threads", "1", "-q"]) == 0
    again = pd.read_parquet(run / "final.parquet").iloc[0]
    assert again.config_hash == reported.config_hash and again.clean_acc == reported.clean_acc
