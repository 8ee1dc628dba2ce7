"""Training objectives: TRADES as its formula, PGD-AT and clean cross-entropy."""

import pytest
import torch
import torch.nn.functional as F

from s2ap.attacks import PGD
from s2ap.models import build_model
from s2ap.objectives import TradesObjective, trades_loss

SMALL = {"resnet50": 32, "vit": 8, "wrn28_4": 8}


def small_model(name: str = "cnn", channels: int = 3, size: int | None = None, **kw):
    size = size or SMALL.get(name, 16)
    return build_model(name, 10, channels, size, [0.5] * channels, [0.25] * channels, **kw)


def test_trades_matches_formula() -> None:
    torch.manual_seed(1)
    clean, adv = torch.randn(6, 10), torch.randn(6, 10)
    y = torch.randint(0, 10, (6,))
    p_clean = clean.softmax(1)
    kl = (p_clean * (p_clean.log() - adv.log_softmax(1))).sum(1).mean()
    expected = F.cross_entropy(clean, y) + 6.0 * kl
    assert trades_loss(clean, adv, y, 6.0).item() == pytest.approx(expected.item(), rel=1e-5)
    model = small_model()
    obj = TradesObjective(PGD(steps=2), beta=6.0)
    batch = obj.craft(model, torch.rand(4, 3, 16, 16), torch.randint(0, 10, (4,)))
    loss, logits = obj.loss(model, batch)
    expected = trades_loss(model(batch.x), model(batch.x_adv), batch.y, 6.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
