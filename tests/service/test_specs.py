"""Submitted specs are data: safe parsing, bounded size, every path kept in the data dir,
and the same validation as the CLI (no Ray import)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.specs import SpecProblem, check_plain, confine, parse_body, validate

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    return tmp_path.resolve()


def problem(fn: Any, *args: Any, **kwargs: Any) -> SpecProblem:
    with pytest.raises(SpecProblem) as info:
        fn(*args, **kwargs)
    return info.value


def test_valid_spec_resolves_paths_into_the_data_dir_and_counts_trials(
    tiny_spec: Callable[..., dict[str, Any]], root: Path
) -> None:
    from s2ap.tune.spec import load_spec

    valid = validate(tiny_spec(num_samples=3), root)
    assert valid.name == "tiny"
    assert valid.trials_total == 2 * 3 == valid.spec.num_trials()
    assert valid.resolved["storage"] == str(root / "runs" / "tune")
    assert valid.resolved["base"]["data"]["root"] == str(root / "data")  # the default, made absolute
    again = load_spec(valid.resolved, nodes=None)  # what the job's CLI will read back
    assert again.num_trials() == valid.trials_total


@pytest.mark.slow  # a fresh interpreter validating a spec
def test_validation_does_not_import_ray(tiny_spec: Callable[..., dict[str, Any]], root: Path) -> None:
    import subprocess

    code = (
        "import sys, pathlib; from service.specs import validate; "
        f"validate({tiny_spec()!r}, pathlib.Path({str(root)!r})); "
        "assert 'ray' not in sys.modules, 'ray imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_quickstart_spec_is_accepted(root: Path) -> None:
    spec = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    valid = validate(spec, root)
    assert valid.trials_total == valid.spec.num_trials() > 1


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"storage": "/etc"}, "storage"),
        ({"storage": "../elsewhere"}, "storage"),
        ({"storage": "s3://bucket/x"}, "storage"),
        ({"storage": "~/runs"}, "storage"),
        ({"pretrain_cache": "/var/tmp/cache"}, "pretrain_cache"),
        ({"optuna_storage": "postgresql://db/optuna"}, "optuna_storage"),
        ({"optuna_storage": "sqlite:////tmp/optuna.db"}, "optuna_storage"),
        ({"overrides": {"data.root": "/usr/share"}}, "overrides.data.root"),
        ({"overrides": {"data": {"root": "/usr/share"}}}, "overrides.data.root"),
        ({"grid": {"data.root": ["data", "/proc"]}}, "grid.data.root[1]"),
        ({"grid": {"data": [{"name": "digits", "root": "/proc"}]}}, "grid.data[0].root"),
        ({"base": "/etc/passwd"}, "base"),
    ],
)
def test_paths_outside_the_data_dir_are_refused_with_their_field(
    tiny_spec: Callable[..., dict[str, Any]], root: Path, changes: dict[str, Any], field: str
) -> None:
    err = problem(validate, tiny_spec(**changes), root)
    assert err.code == "path_outside_data_dir"
    assert err.field == field


def test_base_checkpoint_and_mask_paths_are_confined(
    tiny_spec: Callable[..., dict[str, Any]], root: Path
) -> None:
    spec = tiny_spec()
    spec["base"]["pretrain"]["checkpoint"] = "/root/model.pt"
    assert problem(validate, spec, root).field == "base.pretrain.checkpoint"
    spec = tiny_spec()
    spec["base"]["prune"]["mask"] = "../../mask.pt"
    assert problem(validate, spec, root).field == "base.prune.mask"


def test_a_symlink_out_of_the_data_dir_is_caught(
    root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    outside = tmp_path_factory.mktemp("outside")
    (root / "escape").symlink_to(outside)
    assert problem(confine, "escape/runs", root, "storage").code == "path_outside_data_dir"
    assert confine("data/../data/x", root, "storage") == str(root / "data" / "x")


def test_base_given_as_a_file_inside_the_data_dir_is_inlined(
    tiny_spec: Callable[..., dict[str, Any]], root: Path
) -> None:
    base = tiny_spec()["base"]
    (root / "base.yaml").write_text(yaml.safe_dump(base))
    valid = validate(tiny_spec(base="base.yaml"), root)
    assert valid.resolved["base"]["data"]["train_limit"] == 64


def test_invalid_spec_names_the_field_like_the_cli(
    tiny_spec: Callable[..., dict[str, Any]], root: Path
) -> None:
    spec = tiny_spec()
    spec["base"]["prune"]["sparsity"] = 1.5
    err = problem(validate, spec, root)
    assert (err.code, err.field) == ("invalid_spec", "base.prune.sparsity")
    assert "(0, 1)" in err.message
    err = problem(
        validate, tiny_spec(search={"s2ap.gamma": {"type": "loguniform", "low": 0, "high": 1}}), root
    )
    assert err.field == "search.s2ap.gamma.low"


def test_resources_are_checked_against_the_cluster_nodes(
    tiny_spec: Callable[..., dict[str, Any]], root: Path
) -> None:
    spec = tiny_spec(resources={"workers": 3, "cpus_per_worker": 2}, num_samples=3)
    assert problem(validate, spec, root, nodes=[{"CPU": 4.0}]).field == "resources.workers"
    assert validate(spec, root, nodes=None).trials_total == 6  # no node list: the job checks


def test_huge_grids_are_refused_before_validation(
    tiny_spec: Callable[..., dict[str, Any]], root: Path
) -> None:
    spec = tiny_spec(grid={"seed": list(range(200)), "prune.sparsity": [0.1 * i for i in range(1, 10)]})
    err = problem(validate, spec, root, max_grid_cells=1000)
    assert err.field == "grid" and "1800" in err.message


@pytest.mark.parametrize(
    ("body", "content_type", "code"),
    [
        pytest.param(b"a: [1", "application/yaml", "malformed_yaml", id="yaml"),
        pytest.param(b"{'a': 1}", "application/json", "malformed_json", id="json"),
        pytest.param(b"!!python/object/apply:os.system ['true']", None, "malformed_yaml", id="python-tag"),
        pytest.param(b"\xff\xfe", "application/yaml", "malformed_body", id="not-utf8"),
        pytest.param(b"   \n", "application/yaml", "empty_body", id="blank"),
        pytest.param(b"when: 2024-01-01", "application/yaml", "invalid_spec", id="yaml-date"),
        pytest.param(b"[" * 5000 + b"]" * 5000, "application/json", "spec_too_complex", id="deep-json"),
        pytest.param(b"[" * 5000 + b"]" * 5000, "application/yaml", "spec_too_complex", id="deep-yaml"),
        pytest.param(b"{1: a}", "application/yaml", "invalid_spec", id="int-key"),
    ],
)
def test_malformed_bodies_are_refused(body: bytes, content_type: str | None, code: str) -> None:
    assert problem(parse_body, body, content_type).code == code


def test_yaml_alias_bombs_are_bounded() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    err = problem(parse_body, "\n".join(lines).encode(), "application/yaml")
    assert err.code == "spec_too_complex"


def test_plain_data_passes(tiny_spec: Callable[..., dict[str, Any]], root: Path) -> None:
    check_plain({"a": [1, 2.5, "x", None, True, {"b": []}]})
    data = parse_body(yaml.safe_dump(tiny_spec()).encode(), "application/yaml; charset=utf-8")
    assert data == tiny_spec()
