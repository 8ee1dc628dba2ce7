"""A user's own model module, written into a temporary folder and put on ``sys.path`` for one
test: the project never saw it and reaches it only by import path (``<module>:TinyNet``)."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SOURCE = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    """A user's network: conv-BN-ReLU twice, a hidden linear layer and a classifier."""

    def __init__(self, num_classes: int = 10, width: int = 8, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.body = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.hidden = nn.Linear(8 * width, 32)
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.body(torch.relu(self.bn(self.stem(x))))
        return self.classifier(torch.relu(self.hidden(self.pool(x).flatten(1))))


class Branchy(TinyNet):
    """Data-dependent control flow: torch.fx cannot trace it (weight pruning does not care)."""

    def forward(self, x):
        if x.mean() > 0.5:
            x = x * 0.5
        return super().forward(x)


def make(num_classes, width=4):
    """A factory function that names only num_classes (no in_channels, no image_size)."""
    return TinyNet(num_classes=num_classes, width=width)


def broken(num_classes):
    raise ValueError("width must be even, got 3")


class NoLayers(nn.Module):
    """Returns one value per class but has no conv or linear layer."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool1d(num_classes)

    def forward(self, x):
        return self.pool(x.flatten(1).unsqueeze(1)).squeeze(1)


NOT_CALLABLE = 3
'''

_COUNTER = itertools.count()


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The name of a fresh, importable module holding :data:`SOURCE` (unique per test, so no
    test sees another's import)."""
    name = f"s2ap_test_usernet_{next(_COUNTER)}"
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / f"{name}.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    yield name
    sys.modules.pop(name, None)
