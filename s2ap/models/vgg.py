"""VGG-16 with batch normalisation, in the CIFAR layout (conv stack then one linear layer).

The ImageNet VGG has a 4096-4096 fully connected head (>100M parameters) that is pointless
on 32x32 inputs, where the feature map is already 1x1 after five poolings; the CIFAR variant
used in the adversarial-pruning literature keeps the 13 convolutions and a single 512-to-class
linear head (about 14.7M parameters for 10 classes).
"""

from __future__ import annotations

import logging

from torch import Tensor, nn

from s2ap.layers import LayerFactory
from s2ap.models import register
from s2ap.models.resnet import kaiming_init

logger = logging.getLogger(__name__)

# Output channels of each 3x3 convolution; "M" is a 2x2 max-pool.
VGG16_CONFIG: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)


class VGG(nn.Module):
    """Convolution/BN/ReLU stack, adaptive 1x1 pooling and a linear head.

    Pooling uses ``ceil_mode=True`` so inputs smaller than 32x32 (where a map would reach
    1x1 before the last pool) still run; for power-of-two sizes >= 32 this changes nothing.
    The convolutions have no bias because the following batch norm's shift makes it
    redundant, and a redundant parameter would only blur what pruning removes.
    """

    def __init__(
        self, config: tuple[int | str, ...], num_classes: int, in_channels: int, layers: LayerFactory
    ) -> None:
        super().__init__()
        modules: list[nn.Module] = []
        channels = in_channels
        for item in config:
            if item == "M":
                modules.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            else:
                assert isinstance(item, int)
                modules += [
                    layers.conv(channels, item, 3, padding=1, bias=False),
                    nn.BatchNorm2d(item),
                    nn.ReLU(inplace=True),
                ]
                channels = item
        self.features = nn.Sequential(*modules)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = layers.linear(channels, num_classes, bias=True, head=True)
        kaiming_init(self)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register("vgg16_bn", prune_head=True, min_image_size=8)
def build_vgg16_bn(num_classes: int, in_channels: int, image_size: int, layers: LayerFactory) -> nn.Module:
    """VGG-16-BN for small images; sizes below 32 work thanks to ceil-mode pooling."""
    logger.debug("building vgg16_bn for %dx%d inputs", image_size, image_size)
    return VGG(VGG16_CONFIG, num_classes, in_channels, layers)
