"""Wide-ResNet-50-2 feature extractor: torchvision's architecture, stages 1-4, no classifier.

The modules keep torchvision's names (``conv1``, ``bn1``, ``layer1`` ... ``layer4``), so the
published torchvision (IMAGENET1K_V1/V2) and timm (``wide_resnet50_2.racm_in1k``) state dicts load
key for key once their ``fc.*`` classifier is dropped.

Two things make it faster than torchvision's module as called by the official code, without changing
what it computes beyond float32 rounding: ``forward(x, levels=3)`` stops after layer3 for models
that never read layer4 (RD4AD: a third of the teacher's time), and the weights and activations are
kept channels-last, the layout oneDNN's convolutions run in without reordering every call, except
layer4, which runs faster outside oneDNN (``pdd.conv_backend``; benchmarks/README.md, "Against
anomalib"). At CPU inference every conv + BatchNorm (+ ReLU, + residual) runs instead as one
prepacked oneDNN convolution (``pdd.packed_convs``), layer4 included: 0.79x the time at batch 1,
0.95x at batch 8 (benchmarks/README.md, "Prepacked convolutions"); the wide 3x3 convolutions of
layer2-4 as Winograd F(2x2, 3x3) (``pdd.winograd``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models import wide_resnet50_2

from pdd.conv_backend import gemm_convolutions, prefers_gemm
from pdd.packed_convs import (
    FoldedConv,
    PackedResidual,
    Packs,
    output_size,
    shortcut_pair,
    usable,
)

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
        # Values are untouched (same init, same state dict); only the storage order changes.
        self.to(memory_format=torch.channels_last)
        self._packs: Packs[_PackedNet] = Packs()

    def forward(self, x: Tensor, levels: int = len(CHANNELS)) -> list[Tensor]:
        """x [B, 3, H, W] -> the outputs of layer1..layer``levels`` (channels-last tensors)."""
        if not 1 <= levels <= len(CHANNELS):
            raise ValueError(f"levels must be 1..{len(CHANNELS)}, got {levels}")
        x = x.contiguous(memory_format=torch.channels_last)
        if usable(x, self):
            plan = self._packs.plan(
                self, x, lambda size: _PackedNet(self, size, levels), levels
            )
            return plan(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = []
        for layer in (self.layer1, self.layer2, self.layer3)[:levels]:
            x = layer(x)
            features.append(x)
        if levels == len(CHANNELS):
            # 3x3 convs over 1024 channels on a 1/32 grid: at batch 1 faster outside oneDNN.
            with gemm_convolutions(prefers_gemm(x)):
                features.append(self.layer4(x))
        return features


class _PackedNet:
    """The stem and layer1..layer``levels`` as prepacked oneDNN convolutions, for inputs of ``size``."""

    def __init__(self, net: WideResNetFeatures, size: list[int], levels: int) -> None:
        self.stem = FoldedConv(net.conv1, net.bn1, size)
        self.pool = net.maxpool
        batch, channels, height, width = output_size(net.conv1, size)
        pool = net.maxpool  # torchvision's: kernel, stride and padding are ints
        grid = [
            (n + 2 * pool.padding - pool.kernel_size) // pool.stride + 1
            for n in (height, width)
        ]
        size = [batch, channels, *grid]
        self.layers: list[list[PackedResidual]] = []
        for layer in (net.layer1, net.layer2, net.layer3, net.layer4)[:levels]:
            blocks = []
            for block in layer:
                body = [
                    (block.conv1, block.bn1),
                    (block.conv2, block.bn2),
                    (block.conv3, block.bn3),
                ]
                shortcut = (
                    None
                    if block.downsample is None
                    else shortcut_pair(block.downsample)
                )
                blocks.append(PackedResidual(body, shortcut, size))
                size = output_size(block.conv3, output_size(block.conv2, size))
            self.layers.append(blocks)

    def __call__(self, x: Tensor) -> list[Tensor]:
        x = self.pool(self.stem(x, "relu"))
        features = []
        for blocks in self.layers:
            for block in blocks:
                x = block(x, "relu")
            features.append(x)
        return features
