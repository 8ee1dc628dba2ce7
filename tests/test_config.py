"""Config parsing, overrides and the one-line errors users see."""

import subprocess
import sys

import pytest

from s2ap.config import ConfigError, ExperimentConfig
from s2ap.experiment import from_dict, load, with_overrides
from s2ap.run import main as run_main


def test_defaults_are_the_papers() -> None:
    cfg = from_dict({})
    assert cfg.attack.eps == pytest.approx(8 / 255) and cfg.attack.steps == 10
    assert cfg.objective.name == "trades" and cfg.objective.beta == 6.0
    assert (cfg.prune.epochs, cfg.s2ap.warmup_epochs) == (20, 5)
    assert (cfg.pretrain.epochs, cfg.finetune.epochs) == (100, 100)


def test_fraction_strings_and_overrides_make_new_frozen_config(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("attack:\n  eps: 4/255\nprune:\n  sparsity: 0.8\n")
    cfg = load(path, ["prune.sparsity=0.95", "s2ap.enabled=true"])
    assert cfg.attack.eps == pytest.approx(4 / 255)
    assert cfg.prune.sparsity == 0.95 and cfg.s2ap.enabled is True
    with pytest.raises(AttributeError):
        cfg.prune.sparsity = 0.5  # type: ignore[misc]
    assert cfg.hash() != with_overrides(cfg, {"s2ap.gamma": 0.5}).hash()
    assert cfg.hash() == with_overrides(cfg, {"out_dir": "elsewhere"}).hash()


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"prune": {"sparsty": 0.9}}, "prune.sparsty", "unknown key"),
        ({"prune": {"sparsity": 1.0}}, "prune.sparsity", "(0, 1)"),
        ({"prune": {"sparsity": 0}}, "prune.sparsity", "(0, 1)"),
        ({"s2ap": {"gamma": -0.1}}, "s2ap.gamma", ">= 0"),
        (
            {"s2ap": {"enabled": True, "warmup_epochs": 20}, "prune": {"epochs": 20}},
            "s2ap.warmup_epochs",
            "smaller",
        ),
        ({"model": {"name": "resnet19"}}, "model.name", "resnet18"),
        ({"prune": {"method": "hydro"}}, "prune.method", "hydra"),
        ({"data": {"name": "cifar100"}}, "data.name", "digits"),
        ({"objective": {"name": "mart"}}, "objective.name", "trades"),
        ({"attack": {"steps": "ten"}}, "attack.steps", "integer"),
    ],
)
def test_bad_values_name_field_and_allowed(data, field, words) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(data)
    assert info.value.field == field
    assert words in str(info.value)


@pytest.mark.slow  # python -m s2ap.run subprocesses (torch import)
def test_cli_bad_input_one_line_exit_2(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("prune:\n  sparsity: 1.5\n")
    proc = subprocess.run([sys.executable, "-m", "s2ap.run", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "prune.sparsity" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "s2ap.run",
            str(path),
            "--set",
            "prune.sparsity=0.5",
            "--set",
            "model.name=nope",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "model.name" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "s2ap.run", str(tmp_path / "missing.yaml")], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "not found" in proc.stderr


@pytest.mark.parametrize(
    ("setting", "field", "words"),
    [
        ("s2ap.projection=ball", "s2ap.projection", "algorithm1"),
        ("prune.best_mask=train_loss", "prune.best_mask", "train_loss_iter"),
        ("data.augment=maybe", "data.augment", "bool or null"),
        ("adasap.prune_every=0", "adasap.prune_every", ">= 1"),
        ("harp.penalty_init=0", "harp.penalty_init", "> 0"),
        ("harp.penalty_growth=2", "harp.penalty_growth", "unknown key"),
        ("amp=fast", "amp", "bool or null"),
        ("channels_last=nhwc", "channels_last", "bool or null"),
        ("compile=maybe", "compile", "true or false"),
    ],
)
def test_cli_bad_method_fidelity_settings_are_one_line_exit_2(
    tmp_path, capsys, setting, field, words
) -> None:
    # The CLI's main() in this process; test_cli_bad_input_one_line_exit_2 runs the real command.
    path = tmp_path / "c.yaml"
    path.write_text("prune:\n  method: hydra\n")
    status = run_main([str(path), "--set", setting, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.strip().count("\n") == 0 and err.startswith("error: ") and "Traceback" not in err
    assert field in err and words in err, err
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_method_fidelity_defaults() -> None:
    cfg = from_dict({})
    assert cfg.s2ap.projection == "algorithm1"
    assert cfg.prune.best_mask == "train_loss_iter"
    assert cfg.data.augment is None and cfg.adasap.prune_every == 30


@pytest.mark.slow  # a fresh interpreter importing the library
def test_core_does_not_import_ray_or_fastapi() -> None:
    code = (
        "import sys, s2ap, s2ap.pipeline, s2ap.run, s2ap.report, s2ap.evaluate, s2ap.metrics;"
        "bad = [m for m in ('ray', 'fastapi', 'uvicorn') if m in sys.modules]; print(bad); assert not bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_config_is_frozen_dataclass() -> None:
    assert ExperimentConfig.__dataclass_params__.frozen  # type: ignore[attr-defined]
