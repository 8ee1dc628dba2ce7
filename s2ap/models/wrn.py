"""Wide ResNet (Zagoruyko & Komodakis, 2016) with pre-activation blocks; WRN-28-4 by default.

Depth 28 gives (28 - 4) / 6 = 4 blocks in each of three groups of width 16k, 32k, 64k
(k = 4: 64, 128, 256 channels), about 5.85M parameters for 10 classes.
"""

from __future__ import annotations

import logging

from torch import Tensor, nn

from s2ap.layers import LayerFactory
from s2ap.models import register
from s2ap.models.resnet import kaiming_init

logger = logging.getLogger(__name__)


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus the shortcut (pre-activation).

    When the shape changes, the 1x1 projection shortcut takes the *activated* input, as in
    the original implementation, so the first BN-ReLU is shared by both branches.
    """

    def __init__(self, layers: LayerFactory, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = layers.conv(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = layers.conv(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.equal_in_out = in_planes == out_planes and stride == 1
        self.shortcut = (
            None
            if self.equal_in_out
            else layers.conv(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        # Not in place: ``x`` itself is still needed for the identity shortcut.
        o = nn.functional.relu(self.bn1(x))
        out = self.conv1(o)
        out = self.conv2(self.relu(self.bn2(out)))
        residual = x if self.shortcut is None else self.shortcut(o)
        return out + residual


class WideResNet(nn.Module):
    """3x3 stem (16 channels), three groups of wide blocks, final BN-ReLU, pooling, head."""

    def __init__(
        self, depth: int, widen: int, num_classes: int, in_channels: int, layers: LayerFactory
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.conv1 = layers.conv(in_channels, 16, 3, stride=1, padding=1, bias=False)
        in_planes = 16
        groups = []
        for width, stride in zip(widths, (1, 2, 2), strict=True):
            blocks = []
            for j in range(n):
                blocks.append(WideBlock(layers, in_planes, width, stride if j == 0 else 1))
                in_planes = width
            groups.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = groups
        self.bn = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = layers.linear(in_planes, num_classes, bias=True, head=True)
        kaiming_init(self)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn(out))
        return self.fc(self.pool(out).flatten(1))


@register("wrn28_4", prune_head=True, min_image_size=8)
def build_wrn28_4(num_classes: int, in_channels: int, image_size: int, layers: LayerFactory) -> nn.Module:
    """WRN-28-4; two stride-2 groups take 8x8 inputs to 2x2 before global pooling."""
    logger.debug("building wrn28_4 for %dx%d inputs", image_size, image_size)
    return WideResNet(28, 4, num_classes, in_channels, layers)
