"""L-inf PGD: the perturbation stays in its ball and the unit box, the model's mode is restored, the loss rises."""

import torch
import torch.nn.functional as F

from s2ap.attacks import PGD
from s2ap.models import build_model

SMALL = {"resnet50": 32, "vit": 8, "wrn28_4": 8}


def small_model(name: str = "cnn", channels: int = 3, size: int | None = None, **kw):
    size = size or SMALL.get(name, 16)
    return build_model(name, 10, channels, size, [0.5] * channels, [0.25] * channels, **kw)


def test_pgd_stays_in_eps_ball_and_unit_box() -> None:
    model = small_model()
    x = torch.rand(16, 3, 16, 16)
    x[:4] = 0.0
    x[4:8] = 1.0
    y = torch.randint(0, 10, (16,))
    for loss in ("ce", "kl"):
        adv = PGD(eps=8 / 255, step_size=2 / 255, steps=5, loss=loss)(model, x, y)
        assert (adv - x).abs().max() <= 8 / 255 + 1e-6
        assert adv.min() >= 0 and adv.max() <= 1
        assert (adv - x).abs().max() > 0


def test_pgd_restores_model_mode_and_increases_loss() -> None:
    model = small_model()
    model.train()
    x, y = torch.rand(32, 3, 16, 16), torch.randint(0, 10, (32,))
    adv = PGD(steps=10, random_start=False)(model, x, y)
    assert model.training
    model.eval()
    with torch.no_grad():
        assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y)
