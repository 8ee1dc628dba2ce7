"""Pruning methods beyond HYDRA: HARP, RLTH, channel pruning, AdaSAP, AWP during pruning."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from s2ap import layers as L
from s2ap.config import ConfigError
from s2ap.experiment import from_dict, with_overrides
from s2ap.models import MODELS, build_model, mask_layers
from s2ap.pipeline import Pipeline, run_experiment
from s2ap.pruning import METHODS, build_method
from s2ap.pruning.compact import count_flops
from s2ap.sharpness import (
    AdaptiveWeightPerturbation,
)
from tests.helpers.configs import tiny_run

TINY = tiny_run(
    {
        "data.train_limit": 128,
        "data.test_limit": 64,
        "attack.steps": 1,
        "pretrain.epochs": 1,
        "prune.epochs": 2,
        "s2ap.gamma": 0.01,
        "eval.pgd_steps": 2,
        "eval.val_limit": 32,
    },
    without_keys=(
        "data.batch_size",
        "pretrain.lr",
        "prune.method",
        "prune.sparsity",
        "finetune.lr",
        "s2ap.enabled",
    ),
)
SIZES = {"resnet50": 32}


def tiny(**overrides: object):
    return with_overrides(from_dict(TINY), overrides)


def cfg_for(method: str, model: str = "cnn", **prune: object):
    return from_dict({"model": {"name": model}, "prune": {"method": method, **prune}})


def model_for(name: str = "cnn", granularity: str = "weight", channels: int = 3):
    size = SIZES.get(name, 8)
    net = build_model(name, 10, channels, size, [0.5] * channels, [0.25] * channels, granularity=granularity)
    return net, (1, channels, size, size)


def bound(method: str, model: str = "cnn", granularity: str = "weight", **prune: object):
    """A method bound to a fresh model and prepared, as the pipeline does."""
    net, shape = model_for(model, granularity)
    if granularity == "channel":
        prune = {"granularity": "channel", **prune}
    m = build_method(cfg_for(method, model, **prune))
    m.bind(net, shape)
    m.prepare(net)
    return m, net, shape


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


# ---------------------------------------------------------------------------- every method


@pytest.mark.parametrize("s2ap", [False, True])
@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_runs_end_to_end_with_and_without_s2ap(method: str, s2ap: bool, tmp_path: Path) -> None:
    overrides = {"prune.method": method, "s2ap.enabled": s2ap}
    if s2ap and METHODS.get(method).s2ap_unsupported:
        # A method S2AP cannot wrap says so upfront, in one line naming the field.
        with pytest.raises(ConfigError) as exc:
            tiny(**overrides)
        assert exc.value.field == "s2ap.enabled" and method in one_line(exc)
        return
    final = run_experiment(tiny(**overrides), tmp_path)
    epochs = pd.read_parquet(tmp_path / "epochs.parquet")
    prune = epochs[epochs.phase == "prune"]
    cls = METHODS.get(method)
    assert len(prune) == (2 if cls.trains_scores else 0) and prune.hamming.notna().all()
    assert (epochs.phase == "pretrain").sum() == (1 if cls.pretrains else 0)
    assert (epochs.phase == "finetune").sum() == (1 if cls.finetunes else 0)
    if s2ap:
        assert list(prune.s2ap_active) == [False, True]
    assert 0 <= final["robust_acc"] <= 1 and 0 <= final["clean_acc"] <= 1
    if cls.default_granularity == "weight":
        assert final["density"] == pytest.approx(0.1, abs=0.002)
    else:
        assert 0.05 < final["density"] < 0.3 and (tmp_path / "pruned_compact.pt").is_file()
    assert (tmp_path / "pruned_dense.pt").is_file()


@pytest.mark.parametrize("method", ["hydra", "harp"])
def test_channel_pruning_to_a_flops_target_end_to_end(method: str, tmp_path: Path) -> None:
    cfg = tiny(
        **{
            "prune.method": method,
            "prune.granularity": "channel",
            "prune.flops_reduction": 4,
            "s2ap.enabled": True,
        }
    )
    p = Pipeline(cfg, tmp_path)
    p.run()
    final = p.state.final
    assert final["dense_flops"] / final["compact_flops"] == pytest.approx(final["flops_reduction"])
    compact = torch.load(tmp_path / "pruned_compact.pt", weights_only=False)
    x = torch.rand(5, 1, 8, 8)
    p.model.eval()
    compact.eval()
    assert torch.allclose(compact(x), p.model(x), atol=1e-5)
    assert count_flops(compact, (1, 1, 8, 8)) == pytest.approx(final["compact_flops"])
    if method == "hydra":  # uniform rates: the target holds by construction
        assert final["flops_reduction"] >= 4
    assert all(int(layer.mask.sum()) >= 1 for _, layer in L.scored_layers(p.model))


class _Stop(Exception):
    pass


@pytest.mark.slow  # multi-epoch training, twice
@pytest.mark.parametrize(
    "overrides",
    [
        {"prune.method": "harp", "s2ap.enabled": True},
        {"prune.method": "adasap", "adasap.warmup_epochs": 1},
        {
            "prune.method": "hydra",
            "prune.granularity": "channel",
            "s2ap.enabled": True,
            "s2ap.perturb": "weights",
        },
    ],
    ids=["harp", "adasap", "hydra-channel-awp"],
)
def test_resume_mid_pruning_gives_the_same_result(overrides: dict, tmp_path: Path) -> None:
    """Method state (HARP's rates and penalty weight, AdaSAP's schedule) and the hooks a
    fresh model lacks (mask functions, channel gates) survive an interruption."""
    cfg = tiny(**{**overrides, "prune.epochs": 3})
    full = Pipeline(cfg, tmp_path / "full")
    full_final = full.run()

    def stop(metrics: dict, path: object) -> None:
        if metrics["global_epoch"] == 3:  # pretrain 1 + prune 2 of 3
            raise _Stop

    with pytest.raises(_Stop):
        Pipeline(cfg, tmp_path / "cut", reporter=stop).run()
    resumed = Pipeline(cfg, tmp_path / "cut", resume_from=tmp_path / "cut" / "state.pt")
    resumed_final = resumed.run()
    for (_, a), (_, b) in zip(L.scored_layers(full.model), L.scored_layers(resumed.model), strict=True):
        assert torch.equal(a.mask, b.mask) and torch.equal(a.weight, b.weight)
    for key in ("clean_acc", "pgd_acc", "density", "hamming"):
        assert full_final[key] == resumed_final[key], key


# ---------------------------------------------------------------------------- AWP during pruning


def test_awp_during_pruning_is_a_switch_and_leaves_weights_untouched(tmp_path: Path) -> None:
    cfg = tiny(**{"s2ap.enabled": True, "s2ap.perturb": "weights", "finetune.epochs": 0})
    p = Pipeline(cfg, tmp_path)
    snapshots: list[dict[str, torch.Tensor]] = []
    prepare = p.method.prepare

    def capture(model: nn.Module) -> None:
        prepare(model)
        snapshots.append(
            {n: t.detach().clone() for n, t in model.named_parameters() if not n.endswith("scores")}
        )

    p.method.prepare = capture  # type: ignore[method-assign]
    p.run()
    epochs = pd.read_parquet(tmp_path / "epochs.parquet")
    assert list(epochs[epochs.phase == "prune"].s2ap_active) == [False, True]
    after = dict(p.model.named_parameters())
    for name, before in snapshots[0].items():
        assert torch.equal(after[name].detach(), before), name
    with pytest.raises(ConfigError) as exc:
        tiny(**{"s2ap.perturb": "both"})
    assert exc.value.field == "s2ap.perturb"


def test_harp_rates_stay_within_bounds() -> None:
    m, net, _ = bound("harp", sparsity=0.8)
    lo = m.lower
    assert lo == pytest.approx(0.1 * 0.2)
    assert torch.equal(m.rates(), torch.full((len(m.names),), 1 - 0.8, dtype=torch.float64))
    for scale in (1.0, 10.0, 1e3):
        with torch.no_grad():
            m.logits.normal_(0, scale)
        k = m.rates()
        assert (k >= lo).all() and (k <= 1).all()
    with torch.no_grad():
        m.logits.fill_(-1e4)
    assert torch.allclose(m.rates(), torch.full_like(m.rates(), lo))
    for _, layer in L.scored_layers(net):
        assert int(layer.full_mask().sum()) >= max(1, round(lo * layer.weight.numel()))


def test_harp_penalty_is_zero_exactly_when_the_budget_holds() -> None:
    m, net, _ = bound("harp", sparsity=0.9)
    gen = torch.Generator().manual_seed(1)
    seen = set()
    for _ in range(40):
        with torch.no_grad():
            m.logits.copy_(torch.randn(m.logits.shape, generator=gen, dtype=torch.float64) * 1.5)
        ratio = float(m.budget_ratio().detach())
        pen = float(m.penalty(net).detach())
        sizes, k = m.sizes, m.rates().detach()
        assert ratio == pytest.approx(float((sizes * k).sum() / sizes.sum() / 0.1 - 1))
        assert (pen == 0.0) == (ratio <= 0)
        if ratio > 0:
            assert pen == pytest.approx(m.coef * ratio, rel=1e-6)
        seen.add(ratio > 0)
    assert seen == {True, False}


def test_harp_weight_grows_linearly_then_freezes_once_an_epoch_ends_within_budget() -> None:
    """HARP's code: weight (epoch + 1) * gamma until an epoch ends within budget, then frozen;
    candidates for the returned mask only from that epoch on."""
    m, net, _ = bound("harp", sparsity=0.9)
    init = m.cfg.harp.penalty_init
    seen = []
    for epoch, logit in enumerate([3.0, 3.0, -3.0, 3.0, 3.0]):  # over, over, within, over, over
        m.on_epoch_start(net, "prune", epoch)
        seen.append(m.coef)
        assert m.admissible() == (epoch > 2)
        with torch.no_grad():
            m.logits.fill_(logit)
        m.on_epoch_end(net, epoch)
    assert seen == [init, 2 * init, 3 * init, 3 * init, 3 * init]
    assert (m.frozen, m.reached) == (3 * init, 2)
    state = m.state_dict()
    m.prepare(net)  # a new search starts over
    assert (m.coef, m.frozen, m.reached, m.admissible()) == (init, None, None, False)
    m.load_state_dict(state)
    assert (m.frozen, m.reached) == (3 * init, 2)


def test_harp_rate_gradient_is_the_sum_of_mask_gradients() -> None:
    m, net, _ = bound("harp", sparsity=0.7)
    with torch.no_grad():
        m.logits.normal_(0, 0.5)
    x, y = torch.rand(6, 3, 8, 8), torch.randint(0, 10, (6,))
    F.cross_entropy(net(x), y).backward()
    lo = m.lower
    sig = torch.sigmoid(m.logits.detach() + m._offset)
    dk_dr = (1 - lo) * sig * (1 - sig)
    for i, (_, layer) in enumerate(L.scored_layers(net)):
        # Straight-through: dL/dM_i = dL/ds_i * sign(s_i); the rate gets their sum.
        mask_grad_sum = (layer.scores.grad * layer.scores.detach().sign()).sum().double()
        assert m.logits.grad[i].item() == pytest.approx(
            (mask_grad_sum * dk_dr[i]).item(), rel=1e-4, abs=1e-12
        )


@pytest.mark.parametrize("granularity", ["weight", "channel"])
def test_harp_exported_densities_equal_learned_rates(granularity: str) -> None:
    m, net, _ = bound("harp", granularity=granularity, sparsity=0.8)
    with torch.no_grad():
        m.logits.normal_(0, 1.0)
    rates = m.layer_rates()
    L.freeze_masks(net)
    _, per_layer = L.density(net)
    dense = L.dense_state_dict(net)
    for name, layer in L.scored_layers(net):
        n = layer.scores.numel()
        if name not in rates:  # channel pruning leaves the head whole
            assert per_layer[name] == 1.0
            continue
        assert per_layer[name] == pytest.approx(rates[name], abs=0.5 / n + 1e-6)
        assert per_layer[name] == pytest.approx(round(rates[name] * n) / n, abs=1e-6)
        kept = int((dense[f"{name}.weight"] != 0).sum())
        assert kept == pytest.approx(per_layer[name] * layer.weight.numel(), abs=0.5)


def test_harp_strategy_list_sets_initial_rates_and_must_match_layers() -> None:
    cfg = from_dict(
        {"prune": {"method": "harp", "sparsity": 0.8}, "harp": {"init_rates": [0.5, 0.3, 0.2, 0.1, 0.9]}}
    )
    m = build_method(cfg)
    net, shape = model_for()
    m.bind(net, shape)
    m.prepare(net)
    assert m.rates().tolist() == [0.5, 0.3, 0.2, 0.1, 0.9]
    bad = from_dict({"prune": {"method": "harp"}, "harp": {"init_rates": [0.2, 0.2]}})
    with pytest.raises(ConfigError) as exc:
        build_method(bad).bind(model_for()[0], shape)
    assert exc.value.field == "harp.init_rates" and "5 pruned layers" in one_line(exc)
    with pytest.raises(ConfigError) as exc:  # in a run, before any training
        Pipeline(tiny(**{"prune.method": "harp", "harp.init_rates": [0.2] * 3}))
    assert exc.value.field == "harp.init_rates"


def test_harp_returns_the_last_epoch_when_no_epoch_meets_the_budget(tmp_path: Path) -> None:
    cfg = tiny(
        **{
            "prune.method": "harp",
            "prune.epochs": 2,
            "finetune.epochs": 0,
            "pretrain.epochs": 0,
            "harp.init_rates": [1.0] * 5,
            "harp.penalty_init": 1e-6,
        }
    )
    p = Pipeline(cfg, tmp_path)
    p.run()
    assert p.method.reached is None and p.state.best.epoch == 1 and p.state.best.iteration is None
    assert p.method.budget_ratio() <= 0  # enforce_budget still shifts the rates into the budget


def test_harp_best_epoch_rates_come_back_with_their_scores(tmp_path: Path) -> None:
    cfg = tiny(
        **{
            "prune.method": "harp",
            "prune.epochs": 3,
            "prune.best_mask": "val_robust",
            "finetune.epochs": 0,
            "harp.enforce_budget": False,
        }
    )
    p = Pipeline(cfg, tmp_path)
    p.run()
    best = p.state.best
    assert torch.equal(p.method.logits.detach().cpu(), best.method["logits"])
    masks = mask_layers(p.model, torch.load(tmp_path / "masks.pt", weights_only=True))
    rates = p.method.layer_rates()
    for name, mask in masks.items():
        assert float(mask.float().mean()) == pytest.approx(rates[name], abs=0.5 / mask.numel() + 1e-9)


@pytest.mark.parametrize("granularity", ["weight", "channel"])
def test_harp_search_ends_within_budget_keeping_the_learned_ordering(granularity: str) -> None:
    m, net, _ = bound("harp", granularity=granularity, sparsity=0.8)
    with torch.no_grad():
        m.logits.copy_(torch.linspace(0.5, 2.0, len(m.names), dtype=torch.float64))
    before = m.rates().detach()
    assert float(m.budget_ratio().detach()) > 0
    m.finish_search(net)
    after = m.rates().detach()
    assert -1e-6 < float(m.budget_ratio().detach()) <= 0
    assert (after.argsort() == before.argsort()).all() and (after < before).all()
    L.freeze_masks(net)
    kept = sum(
        int(layer.full_mask().sum()) for name, layer in L.scored_layers(net) if name in m.layer_rates()
    )
    total = sum(layer.weight.numel() for name, layer in L.scored_layers(net) if name in m.layer_rates())
    assert kept / total <= 0.2 + 0.01
    m.finish_search(net)  # within budget: nothing moves
    assert torch.equal(m.rates().detach(), after)


# ---------------------------------------------------------------------------- RLTH


@pytest.mark.parametrize("perturb", ["scores", "weights"])
def test_rlth_weights_never_change(perturb: str, tmp_path: Path) -> None:
    cfg = tiny(**{"prune.method": "rlth", "s2ap.enabled": True, "s2ap.perturb": perturb})
    p = Pipeline(cfg, tmp_path)
    snapshots: list[dict[str, torch.Tensor]] = []
    prepare = p.method.prepare

    def capture(model: nn.Module) -> None:
        prepare(model)
        snapshots.append({n: t.detach().clone() for n, t in model.named_parameters()})

    p.method.prepare = capture  # type: ignore[method-assign]
    p.run()
    assert len(snapshots) == 1
    after = dict(p.model.named_parameters())
    for name, before in snapshots[0].items():
        if name.endswith("scores"):
            assert not torch.equal(after[name].detach(), before), name  # only the scores train
        else:
            assert torch.equal(after[name].detach(), before), name
    phases = pd.read_parquet(tmp_path / "epochs.parquet").phase.tolist()
    assert phases == ["prune", "prune"]


def test_rlth_signed_constant_init_and_bad_config() -> None:
    cfg = from_dict({"prune": {"method": "rlth"}, "rlth": {"weight_init": "signed_constant"}})
    net, shape = model_for()
    build_method(cfg).prepare(net)
    for _, layer in L.scored_layers(net):
        std = math.sqrt(2.0 / layer.fan_in)
        assert torch.allclose(layer.weight.detach().abs(), torch.full_like(layer.weight, std))
    with pytest.raises(ConfigError) as exc:
        from_dict({"prune": {"method": "rlth"}, "pretrain": {"checkpoint": "x.pt"}})
    assert exc.value.field == "pretrain.checkpoint"
    with pytest.raises(ConfigError) as exc:
        from_dict({"prune": {"method": "rlth", "granularity": "channel"}})
    assert exc.value.field == "prune.granularity" and "rlth" in one_line(exc)


# ---------------------------------------------------------------------------- channel pruning


@pytest.mark.parametrize("model_name", MODELS.names())
def test_compact_network_matches_masked_network_and_reported_size(model_name: str) -> None:
    m, net, shape = bound("hydra", model=model_name, granularity="channel", sparsity=0.7)
    torch.manual_seed(3)
    with torch.no_grad():
        for _, layer in L.scored_layers(net):
            layer.scores.normal_()
        for mod in net.modules():  # non-trivial BatchNorm: a pruned channel must still be zero
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.normal_()
                mod.bias.normal_()
    net.eval()
    x = torch.rand(3, *shape[1:])
    expected = net(x)
    small, report = m.export(net)
    small.eval()
    assert torch.allclose(small(x), expected, atol=1e-5)
    assert not any(isinstance(mod, L.ScoredLayer) for mod in small.modules())
    assert report.params == sum(p.numel() for p in small.parameters()) < report.dense_params
    assert report.flops == pytest.approx(count_flops(small, shape))
    assert report.flops == pytest.approx(float(m.plan.flops(m.counts)))
    assert report.dense_flops == pytest.approx(count_flops(net, shape)) and report.flops < report.dense_flops
    # The dense export (pruned_dense.pt) computes the same function in the plain model.
    plain = build_model(model_name, 10, 3, shape[-1], [0.5] * 3, [0.25] * 3, masked=False)
    plain.load_state_dict(L.dense_state_dict(net))
    plain.eval()
    assert torch.allclose(plain(x), expected, atol=1e-5)


def test_compact_cnn_parameter_count_by_hand() -> None:
    m, net, shape = bound("hydra", granularity="channel", sparsity=0.75)
    _, report = m.export(net)
    c1, c2, c3, h = (m.counts[f"net.{n}"] for n in ("features.0", "features.2", "features.5", "classifier.0"))
    assert (c1, c2, c3, h) == (8, 16, 16, 32)  # round(0.25 * (32, 64, 64, 128))
    params = (3 * 9 + 1) * c1 + (c1 * 9 + 1) * c2 + (c2 * 9 + 1) * c3 + (c3 * 4 + 1) * h + (h + 1) * 10
    assert report.params == params
    flops = 64 * (3 * 9 * c1 + c1 * 9 * c2) + 16 * c2 * 9 * c3 + c3 * 4 * h + h * 10
    assert report.flops == flops
    assert net.net.classifier[2].full_mask().all()  # the head keeps every class


@pytest.mark.parametrize("factor", [4, 15])
@pytest.mark.parametrize("model_name", ["vgg16_bn", "resnet18"])
def test_flops_reduction_targets_of_table_9(model_name: str, factor: float) -> None:
    m, net, shape = bound("hydra", model=model_name, granularity="channel", flops_reduction=factor)
    _, report = m.export(net)
    assert factor <= report.flops_reduction < factor * 1.2


def test_bad_channel_targets_and_layers_say_so_in_one_line() -> None:
    net, shape = model_for("vit", "channel")
    with pytest.raises(ConfigError) as exc:
        build_method(cfg_for("hydra", "vit", granularity="channel", flops_reduction=15)).bind(net, shape)
    assert exc.value.field == "prune.flops_reduction" and "at most" in one_line(exc)
    with pytest.raises(ConfigError) as exc:
        from_dict({"prune": {"flops_reduction": 4}})
    assert exc.value.field == "prune.flops_reduction" and "granularity" in one_line(exc)
    with pytest.raises(ConfigError) as exc:
        from_dict({"prune": {"granularity": "channel", "flops_reduction": 0.5}})
    assert exc.value.field == "prune.flops_reduction"

    factory = L.LayerFactory(granularity="channel")
    grouped = nn.Sequential(
        factory.conv(3, 8, 3, padding=1),
        nn.ReLU(),
        factory.conv(8, 8, 3, padding=1, groups=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        factory.linear(8, 10, head=True),
    )
    with pytest.raises(ConfigError) as exc:
        build_method(cfg_for("hydra", granularity="channel")).bind(grouped, (1, 3, 8, 8))
    assert exc.value.field == "prune.granularity" and "'2'" in one_line(exc) and "groups=2" in str(exc.value)


def test_residual_outputs_are_zeroed_not_removed() -> None:
    m, net, _ = bound("hydra", model="resnet18", granularity="channel")
    nodes = m.plan.nodes
    assert (
        nodes["net.layer1.0.conv1"].removable and nodes["net.layer1.0.conv1"].follower == "net.layer1.0.bn1"
    )
    assert not nodes["net.layer1.0.conv2"].removable  # its output meets the skip connection
    assert nodes["net.layer1.0.conv2"].producer == ("net.layer1.0.conv1", 1)
    assert nodes["net.fc"].exempt


# ---------------------------------------------------------------------------- AdaSAP


def test_adasap_phases_schedule_and_uniform_finetuning() -> None:
    """Dense warm-up epochs, then a pruning step every adasap.prune_every iterations (R steps
    over the remaining iterations, exponential schedule, the last one at the target)."""
    cfg = from_dict(
        {
            "prune": {"method": "adasap", "sparsity": 0.75, "epochs": 4},
            "adasap": {"warmup_epochs": 2, "prune_every": 2},
        }
    )
    assert from_dict({"prune": {"method": "adasap"}}).adasap.prune_every == 30  # seed 004's schedule
    m = build_method(cfg)
    net, shape = model_for("cnn", "channel")
    m.bind(net, shape)
    m.prepare(net)
    conv = "net.features.2"  # 64 channels, target 16
    kept, dense = [], []
    steps = 3  # iterations per epoch: 6 after the warm-up, so R = 3 steps, after iterations 2, 4, 6
    for epoch in range(4):
        pert = m.on_epoch_start(net, "prune", epoch)
        assert isinstance(pert, AdaptiveWeightPerturbation) and (pert.rho_min, pert.rho_max) == (0.01, 2.0)
        for step in range(steps):
            dense.append(m.dense)
            if m.dense:
                assert all(layer.current_mask().all() for _, layer in L.scored_layers(net))
            m.on_iteration(net, epoch, step, steps)
            kept.append({n: layer.mask.flatten().clone() for n, layer in L.scored_layers(net)})
        m.on_epoch_end(net, epoch)
    assert dense == [True] * 8 + [False] * 4  # dense through the warm-up and the first interval
    counts = [int(k[conv].sum()) for k in kept[6:]]
    r1, r2 = round(64 * 0.25 ** (1 / 3)), round(64 * 0.25 ** (2 / 3))
    # Before the first step the layers report the target mask without applying it (dense).
    assert counts == [16, r1, r1, r2, r2, 16]
    for a, b in zip(kept[7:], kept[8:], strict=False):
        assert bool((b[conv] <= a[conv]).all())  # pruned neurons stay pruned
    assert int(kept[-1]["net.classifier.2"].sum()) == 10
    fin = m.on_epoch_start(net, "finetune", 0)
    assert fin.rho_min == fin.rho_max == cfg.adasap.finetune_rho
    assert m.on_epoch_start(net, "pretrain", 0) is None
    with pytest.raises(ConfigError) as exc:
        from_dict({"prune": {"method": "adasap"}, "adasap": {"rho_min": 3.0}})
    assert exc.value.field == "adasap.rho_max"
