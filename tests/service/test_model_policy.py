"""The service refuses import-path models (code execution) unless its operator allows the
module, and accepts registered, torchvision: and timm: names; refused before anything is
imported, as a 422 naming the field."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from service import model_policy
from service.specs import SpecProblem, validate


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    return tmp_path.resolve()


@pytest.fixture
def trap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An importable module (``sys.modules`` shows whether it was imported: a refusal must
    come before anything imports it)."""
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "s2ap_policy_trap.py").write_text(
        "from torch import nn\n"
        "def net(num_classes):\n    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delenv(model_policy.ENV, raising=False)
    sys.modules.pop("s2ap_policy_trap", None)
    yield "s2ap_policy_trap"
    sys.modules.pop("s2ap_policy_trap", None)


def refused(fn: Callable[[], Any]) -> SpecProblem:
    with pytest.raises(SpecProblem) as info:
        fn()
    return info.value


@pytest.mark.parametrize(
    "where",
    [
        lambda name: {"base": {"model": {"name": name}}},
        lambda name: {"overrides": {"model.name": name}},
        lambda name: {"grid": {"model.name": ["cnn", name]}},
        lambda name: {"grid": {"model": [{"name": name}]}},
        lambda name: {"search": {"model.name": {"type": "choice", "values": [name]}}},
    ],
)
def test_import_paths_are_refused_wherever_the_spec_names_them(
    where: Callable[[str], dict[str, Any]],
    trap: str,
    tiny_spec: Callable[..., dict[str, Any]],
    root: Path,
) -> None:
    spec = tiny_spec()
    for key, value in where(f"{trap}:net").items():
        spec[key] = {**spec[key], **value} if isinstance(spec.get(key), dict) else value
    problem = refused(lambda: validate(spec, root))
    assert problem.code == "model_not_allowed" and problem.field is not None and "model" in problem.field
    assert f"'{trap}:net' is an import path" in problem.message and model_policy.ENV in problem.message
    assert trap not in sys.modules  # refused before anything imported it


def test_library_and_registered_names_are_accepted(
    tiny_spec: Callable[..., dict[str, Any]], root: Path
) -> None:
    spec = tiny_spec(grid={"model.name": ["cnn", "torchvision:resnet18"]})
    spec["base"]["data"] = {"name": "synthetic", "train_limit": 64}
    valid = validate(spec, root)
    assert valid.trials_total == 2 * 2
    assert model_policy.refusal("timm:resnet18", ()) is None
    assert model_policy.refusal("resnet18", ()) is None


def test_listed_prefixes_allow_their_modules_only(
    trap: str, tiny_spec: Callable[..., dict[str, Any]], root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert model_policy.allowed_prefixes({model_policy.ENV: " lab.models, other., "}) == (
        "lab.models",
        "other",
    )
    prefixes = ("lab.models",)
    assert model_policy.refusal("lab.models:Net", prefixes) is None
    assert model_policy.refusal("lab.models.resnets:build", prefixes) is None
    assert "only modules under lab.models" in str(model_policy.refusal("lab.modelsx:Net", prefixes))
    assert model_policy.refusal("lab:Net", prefixes) is not None
    monkeypatch.setenv(model_policy.ENV, trap)
    spec = tiny_spec()
    spec["base"]["model"] = {"name": f"{trap}:net"}
    spec["base"]["data"] = {"name": "synthetic", "train_limit": 64}
    assert validate(spec, root).spec.base_config().model.name == f"{trap}:net"


def test_model_checkpoint_must_stay_in_the_data_dir(
    tiny_spec: Callable[..., dict[str, Any]], root: Path
) -> None:
    spec = tiny_spec()
    spec["base"]["model"] = {"name": "cnn", "checkpoint": "/etc/passwd"}
    problem = refused(lambda: validate(spec, root))
    assert problem.code == "path_outside_data_dir" and problem.field == "base.model.checkpoint"


@pytest.mark.parametrize(
    "where",
    [
        lambda name: {"base": {"data": {"name": name}}},
        lambda name: {"grid": {"data.name": ["digits", name]}},
    ],
)
def test_import_path_data_sets_are_refused_unless_allowed(
    where: Callable[[str], dict[str, Any]],
    trap: str,
    tiny_spec: Callable[..., dict[str, Any]],
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(model_policy.DATA_ENV, raising=False)
    monkeypatch.setenv(model_policy.ENV, trap)  # allowing it as a model does not allow it as data
    spec = tiny_spec()
    for key, value in where(f"{trap}:net").items():
        spec[key] = {**spec[key], **value} if isinstance(spec.get(key), dict) else value
    problem = refused(lambda: validate(spec, root))
    assert problem.code == "data_not_allowed" and problem.field is not None and "data" in problem.field
    assert f"'{trap}:net' is an import path" in problem.message and model_policy.DATA_ENV in problem.message
    assert trap not in sys.modules
    assert model_policy.refusal("torchvision:x", (), "data") is not None  # no library exception for data
    monkeypatch.setenv(model_policy.DATA_ENV, trap)
    spec["base"]["data"] = {"name": f"{trap}:net"}
    spec.pop("grid", None)
    assert validate(spec, root).spec.base_config().data.name == f"{trap}:net"
