"""The GPU epoch benchmark's tiny version runs on CPU and reports every figure it promises."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers.scripts import load_script


def load() -> ModuleType:
    return load_script("benchmarks/bench_gpu_epoch.py")


@pytest.mark.slow  # an epoch per variant
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_tiny_epoch_reports_every_variant_and_the_s2ap_ratio(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    returned = load().main(["--tiny", "--out", str(out), "--threads", "1"])
    figures = json.loads(out.read_text())
    assert figures == json.loads(json.dumps(returned))
    assert figures["tiny"] and figures["method"] == "hydra, sparsity 0.9"
    variants = figures["variants"]
    assert list(variants) == ["eager_fp32", "bf16", "bf16_channels_last", "bf16_channels_last_compile"]
    for row in variants.values():
        assert row["epoch_steps"] == row["steps_per_epoch"] == 4 and not row["extrapolated"]
        assert row["epoch_s"] > 0
    # Autocast is CUDA-only: on CPU the bf16 epoch is the fp32 one exactly; the memory format
    # and the compiled graph change only the order of float operations.
    fp32 = variants["eager_fp32"]["train_loss"]
    assert variants["bf16"]["train_loss"] == fp32
    for name in ("bf16_channels_last", "bf16_channels_last_compile"):
        assert variants[name]["train_loss"] == pytest.approx(fp32, rel=1e-5)
    # The score mask's top-k neither breaks the compiled graph nor recompiles it per step.
    compiled = variants["bf16_channels_last_compile"]
    assert compiled["warmup_graphs_compiled"] > 0
    assert compiled["epoch_graphs_compiled"] == 0
    assert figures["graph_breaks"] == {}
    ratio = figures["s2ap_ratio"]
    assert set(ratio["ms_per_iter"]) == {"orig", "s2ap", "s2ap_always"}
    assert ratio["s2ap_over_orig"] == pytest.approx(
        ratio["ms_per_iter"]["s2ap"] / ratio["ms_per_iter"]["orig"]
    )


@pytest.mark.slow  # a four-epoch pipeline run, a gloo process group and torch.compile
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_check_runs_every_gpu_check_in_its_tiny_cpu_form(tmp_path: Path) -> None:
    """``--check`` verifies the GPU path (on the CPU in its tiny form) before timing: device
    reads per S2AP iteration, recompiles, a DDP step, run files on the CPU."""
    bench = load()
    argv = ["--check", "--no-timing", "--device", "cpu", "--tiny", "--threads", "1"]
    figures = bench.main(argv)
    check = figures["check"]
    assert set(check) == {"device_reads", "recompiles", "ddp_step", "saved_on_cpu", "ok"}
    assert check["ok"], check
    reads = check["device_reads"]["reads_per_iteration"]
    assert len(reads) == 4 and max(reads) <= 3
    assert check["recompiles"]["graphs_later"] == 0 and check["recompiles"]["graphs_first_steps"] > 0
    assert check["saved_on_cpu"]["files"] >= 4 and check["ddp_step"]["backend"] == "gloo"
    assert figures["variants"] == {}  # --no-timing
