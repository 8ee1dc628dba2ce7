"""The GPU path's parts that CPU can show (issue 32): the device a launcher assigned, DataLoader
workers for data on disk, and how often ``compile: true`` compiles in a digits run."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import Dataset, Subset

from s2ap import pipeline as P
from s2ap.distributed import resolve_device
from s2ap.experiment import from_dict
from s2ap.tensor_data import CropFlip, TensorImageDataset, loader_workers
from tests.helpers.configs import tiny_run


def test_an_assigned_gpu_wins_over_the_local_rank() -> None:
    assigned = torch.device("cuda", 3)
    assert resolve_device("auto", 0, assigned) == assigned
    assert resolve_device("cuda", 1, assigned) == assigned
    assert resolve_device("cpu", 0, assigned) == torch.device("cpu")  # the config said CPU
    assert resolve_device("cpu", 0, torch.device("cpu")) == torch.device("cpu")


class OnDisk(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> Any:
        return torch.zeros(3, 4, 4), 0


def test_workers_only_for_data_read_from_disk() -> None:
    images = TensorImageDataset(torch.zeros(8, 3, 4, 4, dtype=torch.uint8), torch.zeros(8), ["a"], 255.0)
    assert loader_workers(CropFlip(Subset(images, [0, 1]), padding=1), cpus=8) == 0
    assert loader_workers(OnDisk(), cpus=8) == 7
    assert loader_workers(Subset(OnDisk(), [0]), cpus=1) == 0  # one CPU: the main process reads


@pytest.mark.slow  # compiles with dynamo and trains every phase
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_compiled_digits_run_compiles_a_few_graphs_per_phase_and_none_per_epoch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Dynamo's guards (and so its recompiles) do not depend on the backend: the eager one
    counts them without code generation. Per phase (each in one layer mode, its graphs afresh):
    the training pass and the attack's (the input needs a gradient), so at most 4 recompiles in
    the run; no graph after a phase's first epoch (no last partial batch), no graph break, never
    at the recompile limit."""
    graphs: list[int] = []

    def counting(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Any:
        graphs.append(1)
        return gm.forward

    monkeypatch.setattr(
        P, "compiled", lambda m, on, backend="inductor": torch.compile(m, backend=counting) if on else m
    )
    torch._dynamo.utils.counters.clear()
    seen: list[tuple[str, int, int]] = []
    cfg = tiny_run(
        {
            "compile": True,
            "pretrain.epochs": 2,
            "prune.epochs": 3,
            "s2ap.enabled": True,
            "finetune.epochs": 2,
            "data.train_limit": 200,
        }
    )  # 200 % 64: a partial batch to drop
    P.Pipeline(
        from_dict(cfg), reporter=lambda row, _: seen.append((row["phase"], row["epoch"], len(graphs)))
    ).run()
    per_phase: dict[str, list[int]] = {}
    for phase, _, count in seen:
        per_phase.setdefault(phase, []).append(count)
    before = 0
    for phase, counts in per_phase.items():
        assert counts[0] - before <= 2, (phase, counts)  # at most 1 recompile in a phase
        assert len(set(counts)) == 1, (phase, counts)  # nothing compiled after its first epoch
        before = counts[-1]
    assert len(graphs) - len(per_phase) <= 4  # recompiles in the run
    assert not torch._dynamo.utils.counters["graph_break"]
