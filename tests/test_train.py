"""The one training loop: what a step changes, with which gradient, and how it fails."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from s2ap import layers as L
from s2ap.config import AttackConfig, ObjectiveConfig
from s2ap.data import load_splits
from s2ap.distributed import DistInfo, ShardedBatches
from s2ap.errors import TrainingDiverged
from s2ap.experiment import from_dict, with_overrides
from s2ap.models import build_model
from s2ap.objectives import build_objective
from s2ap.pruning import build_method
from s2ap.sharpness import score_perturbation, weight_perturbation
from s2ap.tensor_data import device_loader
from s2ap.train import Epoch, Trainer, build_optimizer, on_device
from tests.helpers.configs import tiny_run

TINY = tiny_run(without_keys=("pretrain", "finetune"))
CLEAN = build_objective(ObjectiveConfig(name="clean"), AttackConfig())


def tiny(**overrides: object):
    return with_overrides(from_dict(TINY), overrides)


def pruning_model(seed: int = 0):
    """A cnn in score mode with only its scores trainable, as in the mask search."""
    torch.manual_seed(seed)
    model = build_model("cnn", 10, 3, 8, [0.5] * 3, [0.25] * 3)
    method = build_method(tiny())
    method.prepare(model)
    params = method.parameters(model)
    for p in model.parameters():
        p.requires_grad_(any(p is q for q in params))
    return model, params


def test_gamma_zero_perturbation_step_equals_plain_step() -> None:
    from s2ap.distributed import DistInfo, ShardedBatches
    from s2ap.objectives import build_objective
    from s2ap.sharpness import score_perturbation
    from s2ap.train import Epoch, Trainer, build_optimizer

    cfg = tiny()
    splits = load_splits(cfg.data, 0)
    outs = []
    for gamma in (None, 0.0):
        torch.manual_seed(0)
        i = splits.info
        model = build_model("cnn", 10, i.in_channels, 8, i.mean, i.std)
        from s2ap.pruning import build_method

        method = build_method(cfg)
        method.prepare(model)
        params = method.parameters(model)
        for p in model.parameters():
            p.requires_grad_(any(p is q for q in params))
        batches = ShardedBatches(len(splits.train), 64, True, DistInfo())
        loader = torch.utils.data.DataLoader(splits.train, batch_sampler=batches)
        opt = build_optimizer(params, "sgd", 0.1, 0.9, 1e-4)
        pert = (
            None
            if gamma is None
            else score_perturbation([ly for _, ly in L.scored_layers(model)], gamma, "surface")
        )
        torch.manual_seed(1)
        trainer = Trainer(model, build_objective(cfg.objective, cfg.attack), opt, torch.device("cpu"))
        trainer.epoch(loader, batches, Epoch(perturbation=pert))
        outs.append([p.detach().clone() for p in params])
    assert all(torch.equal(a, b) for a, b in zip(*outs, strict=True))


def test_a_step_with_s2ap_uses_the_gradient_at_the_perturbed_scores() -> None:
    """Algorithm 1: the update is -lr * grad L(s + z), z = gamma ||s_l|| g_l / ||g_l||, and
    the scores it is applied to are the unperturbed ones; the weights do not move."""
    model, params = pruning_model()
    x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 10, (16,))
    gamma, lr = 0.3, 1.0
    # The expected update, computed by hand on a copy.
    ref = copy.deepcopy(model)
    ref_scores = [layer.scores for _, layer in L.scored_layers(ref)]
    start = [s.detach().clone() for s in ref_scores]
    grads = torch.autograd.grad(F.cross_entropy(ref(x), y), ref_scores)
    with torch.no_grad():
        for s, g in zip(ref_scores, grads, strict=True):
            s.add_(gamma * s.norm() / g.norm() * g)
    grads_at_z = torch.autograd.grad(F.cross_entropy(ref(x), y), ref_scores)
    expected = [s0 - lr * g for s0, g in zip(start, grads_at_z, strict=True)]

    weights = [p.detach().clone() for n, p in model.named_parameters() if not n.endswith("scores")]
    opt = build_optimizer(params, "sgd", lr, 0.0, 0.0)
    pert = score_perturbation([layer for _, layer in L.scored_layers(model)], gamma, "surface")
    _, _, changed = Trainer(model, CLEAN, opt).step(x, y, perturbation=pert)
    assert changed
    for (_, layer), want in zip(L.scored_layers(model), expected, strict=True):
        assert torch.allclose(layer.scores.detach(), want, atol=1e-6)
    after = [p.detach() for n, p in model.named_parameters() if not n.endswith("scores")]
    assert all(torch.equal(a, b) for a, b in zip(weights, after, strict=True))


def test_a_step_without_perturbation_is_plain_sgd_on_the_trainable_tensors() -> None:
    model, params = pruning_model()
    x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 10, (16,))
    start = [p.detach().clone() for p in params]
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    opt = build_optimizer(params, "sgd", 0.5, 0.0, 0.0)
    loss, logits, changed = Trainer(model, CLEAN, opt).step(x, y)
    assert not changed and logits.shape == (16, 10) and torch.isfinite(loss)
    for p, p0, g in zip(params, start, grads, strict=True):
        assert torch.allclose(p.detach(), p0 - 0.5 * g, atol=1e-6)


def test_a_nan_loss_raises_and_leaves_the_tensors_untouched() -> None:
    model, params = pruning_model()
    start = [p.detach().clone() for p in params]
    opt = build_optimizer(params, "sgd", 0.1, 0.9, 0.0)
    x = torch.full((4, 3, 8, 8), float("nan"))
    with pytest.raises(TrainingDiverged, match="loss is nan"):
        Trainer(model, CLEAN, opt).step(x, torch.zeros(4, dtype=torch.long))
    assert all(torch.equal(p.detach(), p0) for p, p0 in zip(params, start, strict=True))


def _bn_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}


@pytest.mark.parametrize("objective", ["clean", "trades"])
@pytest.mark.parametrize("what", ["scores", "weights"])
def test_the_perturbed_pass_leaves_batch_norm_statistics_alone(objective: str, what: str) -> None:
    """Running statistics after a step with S2AP (or AWP) equal those after the same step
    without the second pass: only the pass at the unperturbed point updates them."""
    torch.manual_seed(0)
    net = build_model("resnet18", 10, 3, 8, [0.5] * 3, [0.25] * 3)
    method = build_method(tiny())
    method.prepare(net)
    loss = build_objective(ObjectiveConfig(name=objective), AttackConfig(steps=1))
    x, y = torch.rand(6, 3, 8, 8), torch.randint(0, 10, (6,))
    assert _bn_buffers(net), "the model must have batch norm for this test to mean anything"
    results = []
    for perturbed in (False, True):
        model = copy.deepcopy(net)
        params = method.parameters(model) if what == "scores" else [layer.weight for layer in scored(model)]
        for p in model.parameters():
            p.requires_grad_(any(p is q for q in params))
        opt = build_optimizer(params, "sgd", 0.1, 0.9, 0.0)
        mine = scored(model)
        pert = None
        if perturbed:
            make = score_perturbation if what == "scores" else weight_perturbation
            pert = make(mine, 0.5, "algorithm1", eta=10.0)
        noise = torch.zeros_like(x) if objective == "trades" else None
        torch.manual_seed(1)
        _, _, changed = Trainer(model, loss, opt).step(x, y, noise, perturbation=pert)
        assert changed == perturbed  # the second pass did run
        results.append(_bn_buffers(model))
    plain, with_s2ap = results
    assert plain.keys() == with_s2ap.keys()
    assert all(torch.equal(plain[k], with_s2ap[k]) for k in plain)
    assert any(not torch.equal(plain[k], _bn_buffers(net)[k]) for k in plain)  # the first pass did update


def scored(model: torch.nn.Module) -> list[L.ScoredLayer]:
    return [layer for _, layer in L.scored_layers(model)]


def test_the_fast_path_runs_on_cpu_with_autocast_off_and_changes_no_result() -> None:
    """amp on CPU is off (bf16 autocast is CUDA-only): an epoch with amp=True is the fp32
    epoch exactly; channels_last weights compute the same logits."""
    cfg = tiny()
    train = load_splits(cfg.data, 0).train
    objective = build_objective(cfg.objective, cfg.attack)
    results = []
    for amp in (False, True):
        model, params = pruning_model()
        batches = ShardedBatches(len(train), 64, shuffle=True, dist_info=DistInfo())
        loader = device_loader(train, batches, torch.device("cpu"))
        assert loader is not None
        optimizer = build_optimizer(params, "sgd", 0.1, 0.9, 0.0)
        torch.manual_seed(3)
        trainer = Trainer(model, objective, optimizer, torch.device("cpu"), amp=amp)
        res = trainer.epoch(loader, batches, Epoch())
        results.append((res.loss_sum, res.correct, res.n, [p.detach().clone() for p in params]))
    (loss0, correct0, n0, p0), (loss1, correct1, n1, p1) = results
    assert (loss0, correct0, n0) == (loss1, correct1, n1) and n0 == len(train)
    assert all(torch.equal(a, b) for a, b in zip(p0, p1, strict=True))

    model, _ = pruning_model()
    x = torch.rand(4, 3, 8, 8)
    expected = model(x)
    nhwc = on_device(
        copy.deepcopy(model), {"amp": False, "channels_last": True, "compile": False}, torch.device("cpu")
    )
    conv = next(m for m in nhwc.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(nhwc(x), expected, rtol=1e-5, atol=1e-5)


def test_the_pass_at_s_is_forward_only_when_the_ascent_gradient_is_taken_at_s_plus_z_prev() -> None:
    """Algorithm 1's carried z: when the ascent gradient is taken at s + z_prev, the gradient
    at s would be overwritten unused. Skipping its backward changes nothing, bit for bit:
    the same scores and batch-norm statistics as the full computation, one backward fewer."""
    torch.manual_seed(0)
    net = build_model("resnet18", 10, 3, 8, [0.5] * 3, [0.25] * 3)
    method = build_method(tiny())
    method.prepare(net)
    x, y = torch.rand(6, 3, 8, 8), torch.randint(0, 10, (6,))
    runs = []
    for shortcut in (True, False):
        model = copy.deepcopy(net)
        params = method.parameters(model)
        for p in model.parameters():
            p.requires_grad_(any(p is q for q in params))
        pert = score_perturbation(scored(model), 0.5, "algorithm1", eta=10.0)
        if not shortcut:  # plan as usual, but always run the backward at s
            pert.plan_ascent = lambda plan=pert.plan_ascent: plan() and False  # type: ignore[method-assign]
        trainer = Trainer(model, CLEAN, build_optimizer(params, "sgd", 0.1, 0.9, 0.0))
        grad_modes: list[bool] = []
        model.register_forward_hook(lambda *_, modes=grad_modes: modes.append(torch.is_grad_enabled()))
        moved = []
        for _ in range(3):
            trainer.step(x, y, perturbation=pert)
            moved.append(pert.moved)
        runs.append(([p.detach().clone() for p in params], _bn_buffers(model), moved, grad_modes))
    (p0, bn0, moved0, modes0), (p1, bn1, moved1, modes1) = runs
    assert moved0 == moved1 and moved0[0] is False and any(moved0)  # z_prev flips from step 2 on
    assert modes0.count(False) == sum(moved0) and False not in modes1  # forward-only passes at s
    assert all(torch.equal(a, b) for a, b in zip(p0, p1, strict=True))
    assert all(torch.equal(bn0[k], bn1[k]) for k in bn0)
