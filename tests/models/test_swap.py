"""Pruning a model as it is: a user's class given by import path and torchvision's ResNet-18,
scored by module swap, exported as their own plain state dict.

Small inputs (3x16x16 and 3x32x32), 10 classes, CPU, one thread.
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torchvision
from torch import nn

from s2ap import layers as L
from s2ap.experiment import from_dict
from s2ap.models import Classifier, build_model, export_state_dict
from s2ap.models.swap import score_modules
from s2ap.pruning import build_method
from s2ap.pruning.compact import count_flops

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
SIZES = {"torchvision:resnet18": 32}


def _name(which: str, user_module: str) -> str:
    return f"{user_module}:TinyNet" if which == "user" else which


def _plain(which: str, user_module: str) -> nn.Module:
    """The unmodified class, built the way the user would build it."""
    if which == "user":
        return importlib.import_module(user_module).TinyNet(num_classes=10)
    return torchvision.models.resnet18(num_classes=10)


def _size(name: str) -> int:
    return SIZES.get(name, 16)


def _randomise(model: nn.Module, seed: int = 3) -> None:
    """Scores and BatchNorm statistics away from their defaults, so a wrong export shows."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for _, layer in L.scored_layers(model):
            layer.scores.normal_()
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.normal_()
                mod.bias.normal_()


WHICH = ["user", "torchvision:resnet18"]


@pytest.mark.parametrize("which", WHICH)
def test_swap_keeps_the_same_tensors_names_and_function(which: str, user_module: str) -> None:
    net = _plain(which, user_module).eval()
    before = {k: v for k, v in net.state_dict(keep_vars=True).items()}
    x = torch.rand(2, 3, 16, 16)
    expected = net(x)
    scored = score_modules(net)
    assert scored and all(isinstance(net.get_submodule(n), L.ScoredLayer) for n in scored)
    after = net.state_dict(keep_vars=True)
    assert {k for k in after if not k.endswith((".scores", ".mask"))} == set(before)
    for key, tensor in before.items():
        assert after[key] is tensor, key  # the very same weight tensors, not copies
    assert set(n for n, _ in L.scored_layers(net)) == set(scored)
    assert torch.equal(net(x), expected)  # dense mode: the user's function exactly


@pytest.mark.parametrize("which", WHICH)
def test_built_model_has_the_users_weights_and_keeps_the_head_dense(which: str, user_module: str) -> None:
    name = _name(which, user_module)
    torch.manual_seed(7)
    reference = _plain(which, user_module).eval()
    torch.manual_seed(7)
    model = build_model(name, 10, 3, _size(name), MEAN, STD).eval()
    assert isinstance(model, Classifier) and type(model.net) is type(reference)
    plain_layers = [n for n, m in reference.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    scored = [n.removeprefix("net.") for n, _ in L.scored_layers(model)]
    assert scored == plain_layers[:-1]  # every conv/linear but the final classifier
    own = {k: v for k, v in model.net.state_dict().items() if not k.endswith((".scores", ".mask"))}
    assert own.keys() == reference.state_dict().keys()
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in own.items())
    x = torch.rand(2, 3, _size(name), _size(name))
    normalised = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose(model(x), reference(normalised), atol=1e-6)


@pytest.mark.parametrize("which", WHICH)
def test_mask_densities_are_exact(which: str, user_module: str) -> None:
    name = _name(which, user_module)
    model = build_model(name, 10, 3, _size(name), MEAN, STD, prune_layers="all")
    L.set_keep(model, 0.3)
    L.init_scores(model)
    L.set_mode(model, "scores")
    masks = L.masks(model)
    total = kept = 0
    for layer_name, layer in L.scored_layers(model):
        n = layer.weight.numel()
        assert int(masks[layer_name].sum()) == L.keep_count(0.3, n), layer_name
        kept, total = kept + L.keep_count(0.3, n), total + n
    assert L.density(model)[0] == kept / total


@pytest.mark.parametrize("granularity", ["weight", "channel"])
@pytest.mark.parametrize("which", WHICH)
def test_export_loads_strictly_into_the_unmodified_class_with_the_same_logits(
    which: str, granularity: str, user_module: str
) -> None:
    name = _name(which, user_module)
    size = _size(name)
    cfg = from_dict(
        {"model": {"name": name}, "prune": {"method": "hydra", "sparsity": 0.6, "granularity": granularity}}
    )
    model = build_model(name, 10, 3, size, MEAN, STD, granularity=granularity)
    method = build_method(cfg)
    method.bind(model, (1, 3, size, size))
    method.prepare(model)
    _randomise(model)
    model.eval()
    x = torch.rand(3, 3, size, size)
    masked = model(x)
    state = export_state_dict(model)
    plain = _plain(which, user_module)
    plain.load_state_dict(state, strict=True)
    plain.eval()
    normalised = model.normalize(x)
    assert torch.allclose(plain(normalised), masked, atol=1e-5)
    # the pruned weights are exact zeros in the export, the dense head is untouched
    density, _ = L.density(model)
    zeros = sum(
        int((state[f"{n.removeprefix('net.')}.weight"] == 0).sum()) for n, _ in L.scored_layers(model)
    )
    total = sum(layer.weight.numel() for _, layer in L.scored_layers(model))
    assert zeros >= round((1 - density) * total) and density < 0.6


def test_channel_compact_export_of_torchvision_resnet18_is_smaller_and_agrees() -> None:
    name = "torchvision:resnet18"
    cfg = from_dict(
        {"model": {"name": name}, "prune": {"method": "hydra", "sparsity": 0.5, "granularity": "channel"}}
    )
    model = build_model(name, 10, 3, 32, MEAN, STD, granularity="channel")
    method = build_method(cfg)
    shape = (1, 3, 32, 32)
    method.bind(model, shape)
    method.prepare(model)
    _randomise(model)
    model.eval()
    x = torch.rand(2, 3, 32, 32)
    expected = model(x)
    small, report = method.export(model)
    small.eval()
    assert torch.allclose(small(x), expected, atol=1e-4)
    assert not any(isinstance(m, L.ScoredLayer) for m in small.modules())
    assert report.params == sum(p.numel() for p in small.parameters()) < report.dense_params
    assert report.flops == pytest.approx(count_flops(small, shape)) and report.flops < report.dense_flops
    # inside each basic block the first convolution shrinks (its channels feed only conv2)
    assert small.net.layer1[0].conv1.out_channels == 32 and small.net.layer1[0].conv2.in_channels == 32
    assert "net.layer1.0.conv1" in report.shrunk_layers


def test_dense_layer_patterns_choose_what_stays_dense(user_module: str) -> None:
    name = f"{user_module}:TinyNet"
    model = build_model(name, 10, 3, 16, MEAN, STD, dense_layers=["classifier", "body.*"])
    assert [n for n, _ in L.scored_layers(model)] == ["net.stem", "net.hidden"]
    model = build_model(name, 10, 3, 16, MEAN, STD, dense_layers=[])
    assert len(L.scored_layers(model)) == 4  # an empty list: nothing stays dense
    model = build_model("resnet18", 10, 3, 8, MEAN, STD, dense_layers=["stem.*", "fc"])
    scored = [n for n, _ in L.scored_layers(model)]
    assert "net.stem.0" not in scored and "net.fc" not in scored and len(scored) == 19


def test_registered_models_are_scored_as_before() -> None:
    # the registry's own choice: ResNet prunes its head, the ViT keeps it dense
    resnet = [n for n, _ in L.scored_layers(build_model("resnet18", 10, 3, 8, MEAN, STD))]
    assert resnet[-1] == "net.fc" and len(resnet) == 21
    vit = [n for n, _ in L.scored_layers(build_model("vit", 10, 3, 8, MEAN, STD))]
    assert "net.head" not in vit and len(vit) == 1 + 8 * 4
