"""ResNet-34 from torchvision with a FedPer split."""

from __future__ import annotations

from torch import nn

from fedper.models.registry import MODELS
from fedper.models.split import ModelSplit


@MODELS.add
class ResNet34(ModelSplit):
    """Head = classifier (1), plus the last one or two BasicBlocks of layer4 (2-3).

    The classifier is built with the dataset's number of classes (the public baseline kept
    torchvision's 1000-way layer for one head layer). Pooling is adaptive: any size works.
    """

    name = "resnet"
    label = "ResNet-34"  # display name in figures and tables
    max_head_layers = 3
    total_stride = 32  # conv1, the max pool and layers 2-4 halve the image

    def build(self, num_classes: int, num_head_layers: int, **_):
        # imported here: torchvision costs ~170 MB per process, and MobileNet runs never need it
        from torchvision.models import resnet34

        net = resnet34(weights=None, num_classes=num_classes)
        layer4 = list(net.layer4.children())
        cut = len(layer4) - (num_head_layers - 1)
        base = nn.Sequential(
            net.conv1, net.bn1, net.relu, net.maxpool,
            net.layer1, net.layer2, net.layer3, *layer4[:cut],
        )  # fmt: skip
        head = nn.Sequential(*layer4[cut:], net.avgpool, nn.Flatten(), net.fc)
        return base, head
