"""``s2ap.prune`` on a model object: the caller's own module back, pruned, with the run's
metrics and files; resume; the config's one-line errors; the example script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import s2ap
from s2ap.errors import ConfigError
from s2ap.layers import ScoredLayer, scored_layers
from s2ap.models import build_model, export_masks, export_state_dict, mask_layers
from tests.helpers.configs import one_epoch_run

ROOT = Path(__file__).resolve().parent.parent
CONFIG = one_epoch_run()


class HandWritten(nn.Module):
    """Not registered, not importable by a builder name: a notebook's network."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.hidden = nn.Linear(6 * 16, 24)
        self.out = nn.Linear(24, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 4)
        return self.out(torch.relu(self.hidden(x.flatten(1))))


def tensor_data(n: int, seed: int) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    images = (torch.rand(n, 3, 8, 8, generator=gen) * 0.5 + labels.view(n, 1, 1, 1) * 0.15).clamp(0, 1)
    return TensorDataset(images, labels)


def test_prune_returns_the_callers_module_pruned_with_the_runs_metrics(tmp_path: Path) -> None:
    model = HandWritten()
    keys = list(model.state_dict())
    train, test = tensor_data(96, 0), tensor_data(40, 1)
    config = {k: v for k, v in CONFIG.items() if k != "data"}  # no data.batch_size: the loader's
    result = s2ap.prune(
        model, DataLoader(train, batch_size=16), test=test, config=config, run_dir=tmp_path, progress=False
    )
    # the same object, its own class and plain layers, the asked density in the pruned layers
    assert result.model is model and type(model) is HandWritten
    assert not any(isinstance(m, ScoredLayer) for m in model.modules())
    assert type(model.conv) is nn.Conv2d and type(model.hidden) is nn.Linear
    assert list(model.state_dict()) == keys
    assert set(result.masks) == {"conv.weight", "hidden.weight"}  # the classifier stays dense
    kept = sum(int(m.sum()) for m in result.masks.values()) / sum(m.numel() for m in result.masks.values())
    assert kept == pytest.approx(0.25, abs=0.01)
    for key, mask in result.masks.items():
        assert torch.equal(model.state_dict()[key] * mask, model.state_dict()[key])  # pruned weights are 0
    # the final.parquet row, with n equal to the test set's size and the intervals around it
    m = result.metrics
    final = pd.read_parquet(tmp_path / "final.parquet").iloc[0]
    assert m["clean_acc_n"] == m["pgd_acc_n"] == len(test) and m["clean_acc"] == final.clean_acc
    assert m["clean_acc_lo"] <= m["clean_acc"] <= m["clean_acc_hi"]
    assert m["density"] == pytest.approx(0.25, abs=0.01) and m["model"].endswith(":HandWritten")
    assert list(result.epochs.phase) == ["pretrain", "prune"] and result.run_dir == tmp_path
    # the run folder: masks.pt as returned, keyed like pruned_dense.pt, which loads strictly
    saved = torch.load(tmp_path / "masks.pt")
    assert saved.keys() == result.masks.keys() and all(torch.equal(saved[k], result.masks[k]) for k in saved)
    fresh = HandWritten()
    fresh.load_state_dict(torch.load(tmp_path / "pruned_dense.pt"), strict=True)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in fresh.state_dict().items())
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert written["data"]["batch_size"] == 16  # the DataLoader's, as the config gave none
    assert written["data"]["num_classes"] == 4 and written["data"]["image_size"] == 8
    assert len(written["model"]["mean"]) == 3 and len(written["model"]["std"]) == 3


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"prune.sparsity": 1.5}, "prune.sparsity"),
        ({"prune": {"epochs": 1}, "eval.autoattack_x": 1}, "eval.autoattack_x"),
        ({"prune": {"method": "nope"}}, "prune.method"),
        ({"model": {"name": "cnn"}}, "model.name"),
        ({"data.name": "digits"}, "data.name"),
        ("missing.yaml", "config"),
    ],
)
def test_bad_config_is_one_line_naming_the_field(tmp_path: Path, config: object, field: str) -> None:
    model = HandWritten()
    if isinstance(config, str):
        config = tmp_path / config
    with pytest.raises(ConfigError) as exc:
        s2ap.prune(model, tensor_data(8, 0), test=tensor_data(8, 1), config=config, run_dir=tmp_path)
    assert exc.value.field == field and "\n" not in str(exc.value)
    assert not (tmp_path / "config.yaml").exists()


def test_a_test_set_is_required_and_items_must_be_images(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        s2ap.prune(HandWritten(), tensor_data(8, 0), run_dir=tmp_path)
    assert exc.value.field == "test"
    flat = TensorDataset(torch.rand(8, 192), torch.zeros(8, dtype=torch.long))
    with pytest.raises(ConfigError) as exc:
        s2ap.prune(HandWritten(), flat, test=flat, run_dir=tmp_path)
    assert exc.value.field == "train" and "C x H x W" in str(exc.value)


@pytest.mark.slow
def test_a_resumed_prune_continues_where_it_stopped(tmp_path: Path) -> None:
    config = {**CONFIG, "prune": {**CONFIG["prune"], "epochs": 2}, "finetune": {"epochs": 1, "lr": 0.01}}
    train, test = tensor_data(96, 0), tensor_data(40, 1)
    torch.manual_seed(0)
    whole = s2ap.prune(HandWritten(), train, test=test, config=config, run_dir=tmp_path / "a", progress=False)

    class Stop(Exception):
        pass

    def stop_after_pruning_epoch_0(row: dict) -> None:
        if row["phase"] == "prune":
            raise Stop

    torch.manual_seed(0)
    with pytest.raises(Stop):
        s2ap.prune(
            HandWritten(),
            train,
            test=test,
            config=config,
            run_dir=tmp_path / "b",
            progress=False,
            on_epoch=stop_after_pruning_epoch_0,
        )
    assert list(pd.read_parquet(tmp_path / "b" / "epochs.parquet").phase) == ["pretrain", "prune"]
    seen: list[tuple[str, int]] = []
    resumed = s2ap.prune(
        HandWritten(),
        train,
        test=test,
        config=config,
        run_dir=tmp_path / "b",
        resume=True,
        progress=False,
        on_epoch=lambda row: seen.append((row["phase"], row["epoch"])),
    )
    assert seen == [("prune", 1), ("finetune", 0)]  # only the epochs the stopped run had left
    assert list(resumed.epochs.phase) == list(whole.epochs.phase)
    pd.testing.assert_series_equal(resumed.epochs.train_loss, whole.epochs.train_loss)
    assert resumed.metrics["clean_acc"] == whole.metrics["clean_acc"]
    assert all(torch.equal(resumed.masks[k], whole.masks[k]) for k in whole.masks)


@pytest.mark.parametrize("own", [False, True])
def test_masks_are_keyed_like_the_export_and_old_files_still_read(own: bool) -> None:
    """masks.pt is keyed like pruned_dense.pt (a registered model: the whole classifier's
    keys; a model object: its own); files keyed by layer name (before) load alike."""
    net = HandWritten() if own else None
    model = build_model("cnn", 4, 3, 8, (0.5,) * 3, (0.25,) * 3, net=net)
    layers = [name for name, _ in scored_layers(model)]
    new = export_masks(model)
    assert set(new) <= set(export_state_dict(model))
    assert set(new) == ({"conv.weight", "hidden.weight"} if own else {f"{n}.weight" for n in layers})
    old = {name: layer.full_mask() for name, layer in scored_layers(model)}
    for saved in (new, old):
        assert list(mask_layers(model, saved)) == layers


@pytest.mark.slow
def test_the_example_script_runs(tmp_path: Path) -> None:
    script = ROOT / "examples" / "prune_own_model.py"
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(script), "--out", str(tmp_path), "--epochs", "1"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "clean_acc:" in out.stdout and "on 360 points" in out.stdout
    assert (tmp_path / "final.parquet").is_file() and (tmp_path / "masks.pt").is_file()


def test_a_channel_pruned_run_loads_its_compact_network_with_load_compact(tmp_path: Path) -> None:
    config = {**CONFIG, "prune": {**CONFIG["prune"], "granularity": "channel", "sparsity": 0.5}}
    model = HandWritten()
    val = DataLoader(tensor_data(12, 5), batch_size=4)
    result = s2ap.prune(
        model, tensor_data(96, 0), val=val, test=tensor_data(40, 1), config=config, run_dir=tmp_path
    )
    assert set(result.epochs.val_clean_acc_n) == {12}  # the given validation set, not a split of train
    compact = s2ap.load_compact(tmp_path / "pruned_compact.pt")
    assert not compact.training and compact.net.conv.out_channels < model.conv.out_channels
    # the compact network computes what the pruned model does behind the recorded normalisation
    recorded = yaml.safe_load((tmp_path / "config.yaml").read_text())["model"]
    mean = torch.tensor(recorded["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(recorded["std"]).view(1, -1, 1, 1)
    x = tensor_data(8, 2).tensors[0]
    with torch.no_grad():
        torch.testing.assert_close(compact(x), result.model((x - mean) / std), rtol=1e-4, atol=1e-5)
    with pytest.raises(FileNotFoundError):
        s2ap.load_compact(tmp_path / "nope.pt")
