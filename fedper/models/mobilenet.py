"""MobileNet-v1 (Howard et al. 2017) with a FedPer split."""

from __future__ import annotations

from torch import nn

from fedper.models.registry import MODELS
from fedper.models.split import ModelSplit

# (output channels, stride) of the 13 depthwise-separable blocks after the stem
BLOCKS = [
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
]  # fmt: skip


def conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


def depthwise_separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, 1, 1, 0, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


@MODELS.add
class MobileNetV1(ModelSplit):
    """Head = classifier (1), plus the last 1, 2 or 3 depthwise-separable blocks (2-4).

    Global average pooling is adaptive, so any input from 32 px up works (at 32 px the last
    blocks see 1x1 maps); the public baseline's fixed `AvgPool2d(7)` only fit 224 px.
    """

    name = "mobile"
    label = "MobileNet-v1"  # display name in figures and tables
    max_head_layers = 4
    total_stride = 32  # the stem and four blocks halve the image: 32 px ends in 1x1 maps

    def build(self, num_classes: int, num_head_layers: int, width_multiplier: float = 1.0, **_):
        def width(channels: int) -> int:
            return max(8, int(channels * width_multiplier))

        layers: list[nn.Module] = [conv_bn(3, width(32), 2)]
        cin = width(32)
        for cout, stride in BLOCKS:
            layers.append(depthwise_separable(cin, width(cout), stride))
            cin = width(cout)
        cut = len(layers) - (num_head_layers - 1)
        base = nn.Sequential(*layers[:cut])
        head = nn.Sequential(
            *layers[cut:], nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)
        )
        return base, head
