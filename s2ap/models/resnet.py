"""ResNets: ResNet-18 with the CIFAR stem and ResNet-50 (bottleneck, ImageNet stem).

ResNet-18 follows the CIFAR variant used by HYDRA and most adversarial-pruning papers: a
3x3 stride-1 stem without max-pooling, because a 7x7/2 stem plus a pool would throw away
three quarters of a 32x32 image before the first block. ResNet-50 is the ImageNet "v1.5"
layout (stride on the 3x3 convolution of the bottleneck), as in torchvision.
"""

from __future__ import annotations

import logging

from torch import Tensor, nn

from s2ap.layers import LayerFactory
from s2ap.models import register

logger = logging.getLogger(__name__)


def kaiming_init(model: nn.Module) -> None:
    """Kaiming-normal (fan-out, ReLU) convolutions and identity batch norms, as torchvision does.

    Shared by the convolutional architectures so that they start from the same, well-tested
    scale; linear layers keep PyTorch's default initialisation unless a builder overrides it.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):  # includes MaskedConv2d
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _shortcut(layers: LayerFactory, in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """Identity when shapes match, otherwise a 1x1 projection; the projection is prunable too."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(
        layers.conv(in_planes, out_planes, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, layers: LayerFactory, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = layers.conv(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = layers.conv(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(layers, in_planes, planes * self.expansion, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4 (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, layers: LayerFactory, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = layers.conv(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = layers.conv(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = layers.conv(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _shortcut(layers, in_planes, out_planes, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem, four stages of residual blocks (64..512 planes), global pooling and a linear head.

    Global *adaptive* average pooling makes the head independent of the input size, so the
    same definition serves 8x8 digits and 224x224 images.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        num_blocks: tuple[int, int, int, int],
        num_classes: int,
        in_channels: int,
        layers: LayerFactory,
        imagenet_stem: bool,
    ) -> None:
        super().__init__()
        if imagenet_stem:
            self.stem = nn.Sequential(
                layers.conv(in_channels, 64, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            )
        else:
            self.stem = nn.Sequential(
                layers.conv(in_channels, 64, 3, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
            )
        in_planes = 64
        stages = []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks, strict=True)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(layers, in_planes, planes, stride))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = layers.linear(in_planes, num_classes, bias=True, head=True)
        kaiming_init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.pool(x).flatten(1))


@register("resnet18", prune_head=True, min_image_size=8)
def build_resnet18(num_classes: int, in_channels: int, image_size: int, layers: LayerFactory) -> nn.Module:
    """ResNet-18 with the CIFAR stem (about 11.17M parameters for 10 classes).

    Three stride-2 stages take 8x8 inputs down to 1x1, hence the minimum size of 8.
    """
    logger.debug("building resnet18 (CIFAR stem) for %dx%d inputs", image_size, image_size)
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels, layers, imagenet_stem=False)


@register("resnet50", prune_head=True, min_image_size=32)
def build_resnet50(num_classes: int, in_channels: int, image_size: int, layers: LayerFactory) -> nn.Module:
    """ResNet-50 with the ImageNet stem (about 25.56M parameters for 1000 classes).

    The network downsamples by 32, so anything below 32x32 collapses to a single pixel
    before the last stage; smaller inputs would still run but are not meaningful.
    """
    logger.debug("building resnet50 (ImageNet stem) for %dx%d inputs", image_size, image_size)
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels, layers, imagenet_stem=True)
