"""How often a training iteration reads the device (a host sync on a GPU): at most three times
per S2AP or AWP iteration, counted on the CPU by patching every way a tensor's value reaches
Python (issue 32, item 4). On a GPU ``benchmarks/bench_gpu_epoch.py --check`` counts them with
``torch.cuda.set_sync_debug_mode``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from s2ap import layers as L
from s2ap.config import AttackConfig, ObjectiveConfig
from s2ap.distributed import DistInfo, ShardedBatches
from s2ap.experiment import from_dict
from s2ap.models import build_model
from s2ap.objectives import build_objective
from s2ap.pruning import build_method
from s2ap.sharpness import score_perturbation, weight_perturbation
from s2ap.train import Epoch, Trainer, build_optimizer

MAX_READS_PER_ITERATION = 3
READERS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__")


class Reads:
    """Counts the reads of tensor values into Python while active."""

    def __init__(self) -> None:
        self.count = 0
        self.active = False


@contextmanager
def counting_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[Reads]:
    reads = Reads()

    def wrap(original):  # type: ignore[no-untyped-def]
        def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
            if reads.active:
                reads.count += 1
            return original(*args, **kwargs)

        return counted

    for name in READERS:
        monkeypatch.setattr(torch.Tensor, name, wrap(getattr(torch.Tensor, name)))
    monkeypatch.setattr(torch, "equal", wrap(torch.equal))  # a comparison read as one bool
    yield reads


def net(what: str) -> tuple[nn.Module, list[nn.Parameter]]:
    torch.manual_seed(0)
    model = build_model("resnet18", 10, 3, 8, [0.5] * 3, [0.25] * 3)
    method = build_method(from_dict({"prune": {"method": "hydra", "sparsity": 0.8}}))
    method.prepare(model)
    layers = [layer for _, layer in L.scored_layers(model)]
    if what == "scores":
        params = method.parameters(model)
    else:
        L.freeze_masks(model)
        params = [layer.weight for layer in layers]  # type: ignore[misc]
    for p in model.parameters():
        p.requires_grad_(any(p is q for q in params))
    return model, params


# The default S2AP case runs in the fast tier; the other ResNet-18 score cases (2.5-4 s each:
# sorting 11M scores) in the slow tier, so every case still runs in CI.
SLOW = pytest.mark.slow
CASES = [
    pytest.param("scores", "surface", "fresh", marks=SLOW),
    ("scores", "algorithm1", "fresh"),
    pytest.param("scores", "algorithm1_reset", "fresh", marks=SLOW),
    pytest.param("scores", "algorithm1", "previous", marks=SLOW),
    ("weights", "surface", "fresh"),
    ("weights", "algorithm1", "previous"),
]


@pytest.mark.parametrize(("what", "projection", "ascent"), CASES)
def test_at_most_three_device_reads_per_iteration(
    what: str, projection: str, ascent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, params = net(what)
    layers = [layer for _, layer in L.scored_layers(model)]
    make = score_perturbation if what == "scores" else weight_perturbation
    # gamma large enough that z flips mask entries (the case that runs every pass)
    pert = make(layers, 0.5, projection, 5.0, ascent)
    objective = build_objective(ObjectiveConfig(name="pgd"), AttackConfig(steps=2, eps=0.03, step_size=0.01))
    trainer = Trainer(model, objective, build_optimizer(params, "sgd", 0.05, 0.9, 0.0))
    steps, batch = 4, 6
    data = [(torch.rand(batch, 3, 8, 8), torch.randint(0, 10, (batch,))) for _ in range(steps)]
    batches = ShardedBatches(steps * batch, batch, shuffle=False, dist_info=DistInfo())
    seen: list[float] = []
    ctx = Epoch("prune", 0, pert, before_update=lambda loss, n: seen.append(loss))
    with counting_reads(monkeypatch) as reads:
        reads.active = True
        result = trainer.epoch(data, batches, ctx)
        reads.active = False
    assert len(seen) == steps and all(isinstance(v, float) for v in seen)
    assert result.perturbed_frac is not None and result.perturbed_frac > 0  # z did change the gradient
    assert len(result.perturbation_norms) == steps and all(n > 0 for n in result.perturbation_norms)
    per_epoch = 2  # the epoch's sums and its perturbation norms, read once at its end
    assert reads.count <= MAX_READS_PER_ITERATION * steps + per_epoch, reads.count


def test_the_counter_sees_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    t = torch.ones(3)
    with counting_reads(monkeypatch) as reads:
        reads.active = True
        float(t.sum())
        bool(t.any())
        t.tolist()
        torch.equal(t, t)
        reads.active = False
    assert reads.count == 4
