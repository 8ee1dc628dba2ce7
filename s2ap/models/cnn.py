"""A small CNN for fast CPU runs (tests, smoke experiments on the 8x8..32x32 digits data).

It has no batch normalisation on purpose: BN statistics are per process, so a DDP run
would not compute the same function as a single-process run on the same global batch.
Without BN the two are equivalent, which is what the distributed tests rely on.
"""

from __future__ import annotations

import logging

from torch import Tensor, nn

from s2ap.layers import LayerFactory
from s2ap.models import register
from s2ap.models.resnet import kaiming_init

logger = logging.getLogger(__name__)


class SmallCNN(nn.Module):
    """conv32-conv64-pool-conv64, adaptive 2x2 pooling, a 128-unit hidden layer and the head.

    The adaptive pool fixes the head's input size (64 * 2 * 2) whatever the image size.
    """

    def __init__(self, num_classes: int, in_channels: int, layers: LayerFactory) -> None:
        super().__init__()
        self.features = nn.Sequential(
            layers.conv(in_channels, 32, 3, padding=1, bias=True),
            nn.ReLU(inplace=True),
            layers.conv(32, 64, 3, padding=1, bias=True),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            layers.conv(64, 64, 3, padding=1, bias=True),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(2),
        )
        self.classifier = nn.Sequential(
            layers.linear(64 * 2 * 2, 128, bias=True),
            nn.ReLU(inplace=True),
            layers.linear(128, num_classes, bias=True, head=True),
        )
        kaiming_init(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


@register("cnn", prune_head=True, min_image_size=8)
def build_cnn(num_classes: int, in_channels: int, image_size: int, layers: LayerFactory) -> nn.Module:
    """The small CNN; one 2x pooling step means 8x8 inputs still leave a 4x4 map to pool."""
    logger.debug("building cnn for %dx%d inputs", image_size, image_size)
    return SmallCNN(num_classes, in_channels, layers)
