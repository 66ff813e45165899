"""Wide-ResNet-50-2 feature extractor: torchvision's architecture, stages 1-4, no classifier.

The modules keep torchvision's names (``conv1``, ``bn1``, ``layer1`` ... ``layer4``), so the
published torchvision (IMAGENET1K_V1/V2) and timm (``wide_resnet50_2.racm_in1k``) state dicts load
key for key once their ``fc.*`` classifier is dropped.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import wide_resnet50_2

__all__ = ["CHANNELS", "CLASSIFIER_PREFIXES", "STRIDES", "WideResNetFeatures"]

CHANNELS: tuple[int, ...] = (256, 512, 1024, 2048)
STRIDES: tuple[int, ...] = (4, 8, 16, 32)
# Keys of the published checkpoints that the feature extractor does not have.
CLASSIFIER_PREFIXES: tuple[str, ...] = ("fc.",)


class WideResNetFeatures(nn.Module):
    """``wide_resnet50_2`` without avgpool/fc; forward returns the outputs of layer1..layer4."""

    def __init__(self) -> None:
        super().__init__()
        net = wide_resnet50_2(weights=None)
        self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool = net.maxpool
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.layer4 = net.layer4

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        y1 = self.layer1(x)
        y2 = self.layer2(y1)
        y3 = self.layer3(y2)
        y4 = self.layer4(y3)
        return [y1, y2, y3, y4]
