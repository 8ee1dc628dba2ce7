"""The controls of issue 27: a random direction with the sharpness direction's per-layer
norms, and AWP finetuning as its own setting (with or without S2AP pruning)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from s2ap import experiment
from s2ap import layers as L
from s2ap.config import S2APConfig
from s2ap.errors import ConfigError
from s2ap.models import build_model
from s2ap.pruning import build_method
from s2ap.sharpness import LayerwisePerturbation, SharpnessSchedule, score_perturbation


def pruned_model(seed: int = 0):
    torch.manual_seed(seed)
    net = build_model("cnn", 10, 3, 16, [0.5] * 3, [0.25] * 3)
    build_method(experiment.from_dict({"prune": {"method": "hydra", "sparsity": 0.8}})).prepare(net)
    return net, [layer for _, layer in L.scored_layers(net)]


def backward(net, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
    net.zero_grad()
    F.cross_entropy(net(x), y).backward()


def climbed(pert: LayerwisePerturbation, layers) -> list[torch.Tensor]:
    before = [layer.scores.detach().clone() for layer in layers]
    pert.climb()
    z = [layer.scores.detach() - s0 for layer, s0 in zip(layers, before, strict=True)]
    pert.restore()
    return z


@pytest.mark.parametrize("projection", ["surface", "algorithm1_reset", "algorithm1"])
def test_random_direction_has_the_sharpness_norms_per_layer_and_another_direction(projection: str) -> None:
    net, layers = pruned_model()
    backward(net)
    sharp = score_perturbation(layers, 0.05, projection, eta=0.01)
    rand = score_perturbation(layers, 0.05, projection, eta=0.01)
    rand.randomize(7)
    z_sharp, z_rand = climbed(sharp, layers), climbed(rand, layers)
    for a, b, layer in zip(z_sharp, z_rand, layers, strict=True):
        assert a.norm().item() > 0
        assert b.norm().item() == pytest.approx(a.norm().item(), rel=1e-4)
        assert b.norm().item() <= 0.05 * layer.scores.detach().norm().item() * (1 + 1e-4)
        # Another direction: far from the gradient's (which the sharpness z follows).
        cos = F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
        assert abs(cos) < 0.5


def test_random_direction_is_seeded_and_a_resume_draws_the_same_next_step() -> None:
    net, layers = pruned_model()
    backward(net)
    a, b, c = (score_perturbation(layers, 0.05, "surface") for _ in range(3))
    a.randomize(3)
    b.randomize(3)
    c.randomize(4)
    first = climbed(a, layers)
    assert all(torch.equal(x, y) for x, y in zip(first, climbed(b, layers), strict=True))
    assert not torch.allclose(first[0], climbed(c, layers)[0])
    # a resumed copy of ``a`` (its generator state carried in the run state) draws a's next z
    resumed = score_perturbation(layers, 0.05, "surface")
    resumed.randomize(3)
    resumed.load_state_dict(a.state_dict())
    assert all(torch.equal(x, y) for x, y in zip(climbed(a, layers), climbed(resumed, layers), strict=True))


def test_the_schedule_randomizes_only_the_search_from_the_run_seed() -> None:
    _, layers = pruned_model()
    s2ap = S2APConfig(enabled=True, gamma=0.01, warmup_epochs=0, direction="random")
    one, other = (SharpnessSchedule(s2ap, layers, seed=s, search_lr=0.1, finetune_lr=0.01) for s in (1, 2))
    assert one.search.random_seed is not None and one.search.random_seed != other.search.random_seed
    assert one.finetune is not None and one.finetune.random_seed is None  # finetuning's AWP ascends
    plain = SharpnessSchedule(
        S2APConfig(enabled=True, gamma=0.01, warmup_epochs=0), layers, seed=1, search_lr=0.1, finetune_lr=0.01
    )
    assert plain.search.random_seed is None


def test_awp_finetuning_without_s2ap_perturbs_only_kept_weights() -> None:
    net, layers = pruned_model()
    L.freeze_masks(net)
    for layer in layers:
        layer.weight.requires_grad_(True)  # finetuning trains the kept weights
    schedule = SharpnessSchedule(
        S2APConfig(enabled=False, gamma=0.01, projection="surface"), layers, awp=True
    )
    assert schedule.for_epoch("prune", 3) is None  # no S2AP in the mask search
    awp = schedule.for_epoch("finetune", 0)
    assert isinstance(awp, LayerwisePerturbation)
    backward(net)
    before = [layer.weight.detach().clone() for layer in layers]
    awp.climb()
    for layer, w0 in zip(layers, before, strict=True):
        nu, kept = layer.weight.detach() - w0, layer.full_mask()
        assert 0 < kept.sum() < kept.numel()
        assert nu[kept == 0].abs().max() == 0 and nu[kept == 1].abs().max() > 0
        assert nu.norm().item() == pytest.approx(0.01 * (w0 * kept).norm().item(), rel=1e-4)
    awp.restore()
    assert all(torch.equal(layer.weight.detach(), w0) for layer, w0 in zip(layers, before, strict=True))


def test_finetune_awp_follows_s2ap_unless_set_and_the_old_key_is_refused() -> None:
    cfg = experiment.from_dict
    assert cfg({}).finetune_awp is False and cfg({"s2ap": {"enabled": True}}).finetune_awp is True
    assert cfg({"finetune": {"awp": True}}).finetune_awp is True
    assert cfg({"s2ap": {"enabled": True}, "finetune": {"awp": False}}).finetune_awp is False
    with pytest.raises(ConfigError) as err:
        cfg({"s2ap": {"finetune_awp": False}})
    assert str(err.value) == "s2ap.finetune_awp: renamed: use finetune.awp"
    with pytest.raises(ConfigError, match="renamed: use finetune.awp"):
        experiment.with_overrides(cfg({}), ["s2ap.finetune_awp=false"])


def test_the_controls_are_identity_columns() -> None:
    orig_awp = experiment.identity(
        experiment.from_dict({"finetune": {"awp": True}, "s2ap": {"gamma": 0.005}})
    )
    assert orig_awp["s2ap"] is False and orig_awp["finetune_awp"] is True
    assert orig_awp["gamma"] == 0.005 and orig_awp["direction"] is None  # AWP used gamma; no search
    orig = experiment.identity(experiment.from_dict({}))
    assert orig["finetune_awp"] is False and orig["gamma"] is None and orig["projection"] is None
    rand = experiment.identity(
        experiment.from_dict({"s2ap": {"enabled": True, "warmup_epochs": 1, "direction": "random"}})
    )
    assert rand["direction"] == "random" and rand["finetune_awp"] is True
    assert experiment.applies(experiment.from_dict({"finetune": {"awp": True}}), "s2ap.gamma")
    assert not experiment.applies(experiment.from_dict({"finetune": {"awp": True}}), "s2ap.direction")
