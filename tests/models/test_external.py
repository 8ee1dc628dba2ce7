"""External model names, pretrained checkpoints in, and every bad input as one line.

Bad inputs go through the ``python -m s2ap.run`` entry point (its ``main``, in this process,
so the user's module on ``sys.path`` is seen): one ``error:`` line, exit status 2, and no run
folder written.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pandas as pd
import pytest
import torch
import torchvision
import yaml

from s2ap import layers as L
from s2ap.errors import ConfigError
from s2ap.experiment import from_dict, phases
from s2ap.models import build_model, export_state_dict
from s2ap.models.external import read_state_dict
from s2ap.run import main
from s2ap.state import RunState
from tests.helpers.configs import one_epoch_run

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
TINY = one_epoch_run(
    {
        "seed": 0,
        "data.name": "synthetic",
        "data.train_limit": 64,
        "data.test_limit": 32,
        "prune.sparsity": 0.7,
        "finetune.epochs": 1,
        "finetune.lr": 0.01,
    },
    without_keys=("attack.eps", "attack.step_size"),
)


def run_cli(
    tmp_path: Path, model: dict, capsys: pytest.CaptureFixture[str], **sections: dict
) -> tuple[int, str]:
    config = {**TINY, **sections, "model": model}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    status = main([str(path), "--out", str(tmp_path / "run"), "--threads", "1", "-q"])
    return status, capsys.readouterr().err


def assert_refused(tmp_path: Path, status: int, err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (tmp_path / "run").exists()  # nothing started, nothing written


# ---------------------------------------------------------------------------- names


def test_import_path_builder_gets_the_arguments_its_signature_names(user_module: str) -> None:
    # make(num_classes, width=4) names neither in_channels nor image_size: it gets only
    # num_classes from the data, and width from model.kwargs
    model = build_model(f"{user_module}:make", 7, 3, 16, MEAN, STD, kwargs={"width": 6})
    assert model.net.stem.out_channels == 6 and model.net.classifier.out_features == 7
    with pytest.raises(ConfigError) as exc:
        build_model(f"{user_module}:TinyNet", 7, 3, 16, MEAN, STD, kwargs={"num_classes": 3})
    assert exc.value.field == "model.kwargs.num_classes" and "data set" in str(exc.value)


def test_timm_model_gets_class_count_and_input_channels() -> None:
    timm = pytest.importorskip("timm")
    model = build_model("timm:resnet18", 10, 1, 32, (0.5,), (0.25,))
    assert isinstance(model.net, timm.models.ResNet)
    assert model.net.conv1.in_channels == 1 and model.net.fc.out_features == 10
    assert "net.fc" not in dict(L.scored_layers(model)) and "net.conv1" in dict(L.scored_layers(model))


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("torchvision:resnet19", "torchvision has no classification model 'resnet19'; did you mean resnet18"),
        ("no_such_package_13.models:Net", "cannot import module 'no_such_package_13.models'"),
        ("{m}:Missing", "has no attribute 'Missing'"),
        ("{m}:NOT_CALLABLE", "is not callable"),
        ("resnet19", "allowed: cnn"),
        ("a b:c", "is not a registered model"),
    ],
)
def test_unknown_module_attribute_or_name_is_a_config_error(name: str, needle: str, user_module: str) -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict({"model": {"name": name.format(m=user_module)}})
    assert exc.value.field == "model.name" and needle in str(exc.value) and "\n" not in str(exc.value)


def test_torchvision_needs_three_channels_and_kwargs_need_an_external_model() -> None:
    with pytest.raises(ConfigError, match="takes 3 input channels but the data has 1"):
        build_model("torchvision:resnet18", 10, 1, 32, (0.5,), (0.25,))
    with pytest.raises(ConfigError) as exc:
        from_dict({"model": {"name": "cnn", "kwargs": {"width": 3}}})
    assert exc.value.field == "model.kwargs"
    with pytest.raises(ConfigError) as exc:
        from_dict({"model": {"name": "cnn", "mean": [0.5, 0.5], "std": [0.2]}})
    assert exc.value.field == "model.mean"
    with pytest.raises(ConfigError) as exc:
        from_dict({"model": {"name": "cnn", "dense_layers": ["fc"], "prune_layers": "all"}})
    assert exc.value.field == "model.dense_layers"


# ---------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("form", ["bare", "state_dict", "model", "module_prefix"])
def test_checkpoint_formats_load_before_pruning(form: str, tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = torchvision.models.resnet18(num_classes=10)
    state = source.state_dict()
    saved = {
        "bare": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "model": {"model": state, "optimizer": {}},
        "module_prefix": {f"module.{k}": v for k, v in state.items()},
    }[form]
    path = tmp_path / "ckpt.pt"
    torch.save(saved, path)
    torch.manual_seed(2)  # a different initialisation: only the checkpoint can make them equal
    model = build_model("torchvision:resnet18", 10, 3, 32, MEAN, STD, checkpoint=path)
    own = {k: v for k, v in model.net.state_dict().items() if not k.endswith((".scores", ".mask"))}
    assert own.keys() == state.keys() and all(torch.equal(own[k], state[k]) for k in state)
    assert L.scored_layers(model)  # loaded into the plain network, then scored
    assert read_state_dict(path).keys() == state.keys()


def test_checkpoint_skips_pretraining(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    cfg = from_dict({**TINY, "model": {"name": "torchvision:resnet18", "checkpoint": str(path)}})
    assert phases(cfg).pretrain == 0
    with pytest.raises(ConfigError, match="not both"):
        from_dict({"model": {"checkpoint": str(path)}, "pretrain": {"checkpoint": str(path)}})


def test_checkpoint_that_does_not_fit_names_the_mismatch(tmp_path: Path) -> None:
    state = torchvision.models.resnet18(num_classes=1000).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["layer1.0.bn1.bias"]
    path = tmp_path / "imagenet.pt"
    torch.save(state, path)
    with pytest.raises(ConfigError) as exc:
        build_model("torchvision:resnet18", 10, 3, 32, MEAN, STD, checkpoint=path)
    text = str(exc.value)
    assert exc.value.field == "model.checkpoint" and "\n" not in text
    assert "fc.weight (checkpoint [1000, 512], model [10, 512])" in text
    assert "missing: layer1.0.bn1.bias" in text and "unexpected: extra.weight" in text
    torch.save({"epoch": 3}, path)
    with pytest.raises(ConfigError, match="holds no state dict"):
        read_state_dict(path)


# ---------------------------------------------------------------------------- the command line


@pytest.mark.parametrize(
    ("model", "needles"),
    [
        ({"name": "no_such_package_13:Net"}, ["model.name", "cannot import module 'no_such_package_13'"]),
        ({"name": "{m}:Gone"}, ["model.name", "has no attribute 'Gone'"]),
        ({"name": "{m}:broken"}, ["model.name", "raised ValueError: width must be even, got 3"]),
        ({"name": "{m}:NoLayers"}, ["model.name", "NoLayers has no nn.Conv2d or nn.Linear layer"]),
        ({"name": "{m}:TinyNet", "dense_layers": ["head*"]}, ["model.dense_layers", "'head*' matches no"]),
        (
            {"name": "{m}:TinyNet", "checkpoint": "{ckpt}"},
            ["model.checkpoint", "does not fit", "stem.weight"],
        ),
        ({"name": "{m}:TinyNet", "checkpoint": "{missing}"}, ["model.checkpoint", "file not found"]),
    ],
)
def test_bad_model_inputs_are_one_line_exit_2_and_start_nothing(
    model: dict, needles: list[str], user_module: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "other.pt"
    torch.save(importlib.import_module(user_module).TinyNet(width=4).state_dict(), ckpt)
    filled = {
        k: v.format(m=user_module, ckpt=ckpt, missing=tmp_path / "nope.pt") if isinstance(v, str) else v
        for k, v in model.items()
    }
    status, err = run_cli(tmp_path, filled, capsys)
    assert_refused(tmp_path, status, err, *needles)


def test_channel_pruning_of_an_untraceable_model_is_one_line(
    user_module: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prune = {**TINY["prune"], "granularity": "channel"}
    status, err = run_cli(tmp_path, {"name": f"{user_module}:Branchy"}, capsys, prune=prune)
    assert_refused(tmp_path, status, err, "prune.granularity", "torch.fx", "use prune.granularity: weight")


def test_end_to_end_run_with_an_import_path_model(
    user_module: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = {"name": f"{user_module}:TinyNet", "kwargs": {"width": 4}, "mean": [0.5] * 3, "std": [0.25] * 3}
    status, err = run_cli(tmp_path, model, capsys)
    assert status == 0, err
    run = tmp_path / "run"
    row = pd.read_parquet(run / "final.parquet").iloc[0]
    assert row.model == model["name"] and row.density == pytest.approx(0.3, abs=0.002)
    # pruned_dense.pt is the user's own state dict: it loads strictly into the unmodified
    # class, which (behind the same normalisation) computes what the run's masked model does
    exported = torch.load(run / "pruned_dense.pt", weights_only=True)
    plain = importlib.import_module(user_module).TinyNet(num_classes=10, width=4)
    plain.load_state_dict(exported, strict=True)
    masked = build_model(model["name"], 10, 3, 16, MEAN, STD, kwargs={"width": 4})
    masked.load_state_dict(RunState.load(run / "state.pt").model)
    L.set_mode(masked, "fixed")
    masked.eval(), plain.eval()
    x = torch.rand(4, 3, 16, 16)
    assert torch.allclose(plain(masked.normalize(x)), masked(x), atol=1e-5)
    assert export_state_dict(masked).keys() == exported.keys()
    scored = [n.removeprefix("net.") for n, _ in L.scored_layers(masked)]
    assert scored == ["stem", "body.0", "hidden"]  # the classifier stays dense
    zeros = sum(int((exported[f"{n}.weight"] == 0).sum()) for n in scored)
    total = sum(exported[f"{n}.weight"].numel() for n in scored)
    assert zeros / total == pytest.approx(0.7, abs=0.01)
