"""Building blocks shared by PDD and RD4AD: the feature adapter, bottlenecks and decoder stages.

Decoder stages follow reverse distillation: "de-bottleneck" blocks (the ResNet bottleneck with its
stride-2 3x3 conv replaced by a 2x2 stride-2 transposed conv) that double the resolution while the
channels go from the deeper teacher level to the shallower one. Widths use the wide-ResNet factor 2
(inner width = 2 x planes, output = 4 x planes), as in the Wide-ResNet-50-2 teacher they mirror.

``init_as_released`` gives the trainable parts the initialisation of the released PDD decoder and
of the official RD4AD code (both use torchvision's ResNet recipe), rather than PyTorch's defaults.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pdd.packed_convs import PackedResidual, Packs, shortcut_pair, usable

__all__ = [
    "Adapter",
    "Bottleneck",
    "DeBottleneck",
    "DecoderStage",
    "channels_last",
    "conv_bn",
    "init_as_released",
]

# Wide-ResNet-50-2: a bottleneck's inner width is 2 x planes, its output 4 x planes.
WIDTH_FACTOR = 2
EXPANSION = 4


def init_as_released(module: nn.Module) -> None:
    """Kaiming-normal (``fan_out``, ReLU gain) for every ``Conv2d``, BatchNorm weight 1 / bias 0.

    ``ConvTranspose2d`` is not a ``Conv2d`` subclass and keeps PyTorch's default, as in the released
    code. Draws from the global RNG, so the run's seed (set before the model is built) fixes them.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)


def channels_last(module: nn.Module) -> None:
    """Store ``module``'s conv weights channels-last, the layout of the teachers' features.

    Values are untouched (same init, same state dict, checkpoints load into it); only the storage
    order changes, so oneDNN needs no layout conversion of weights or activations between the
    teacher and the trainable parts. Measured on the AVX-512 CPU (benchmarks/README.md): the
    training step 10-20 % faster, batch-8 inference 8-19 % faster.
    """
    module.to(memory_format=torch.channels_last)


def conv_bn(
    c_in: int, c_out: int, kernel: int, *, stride: int = 1, dilation: int = 1
) -> list[nn.Module]:
    """A bias-free conv (same padding) followed by BatchNorm, as a list to splice into Sequentials."""
    padding = dilation * (kernel - 1) // 2
    return [
        nn.Conv2d(
            c_in,
            c_out,
            kernel,
            stride=stride,
            padding=padding,
            dilation=dilation,
            bias=False,
        ),
        nn.BatchNorm2d(c_out),
    ]


class _Residual(nn.Module):
    """``act(body(x) + shortcut(x))`` with ``body`` = [conv, BN, act, conv, BN, act, conv, BN].

    At CPU inference the three conv + BN pairs and the shortcut run as prepacked oneDNN
    convolutions with the activations and the addition fused (``pdd.packed_convs``); everywhere
    else (training, CUDA, autocast) as the modules themselves.
    """

    activation = "relu"
    body: nn.Sequential
    act: nn.Module

    def __init__(self) -> None:
        super().__init__()
        self._packs: Packs[PackedResidual] = Packs()

    def _shortcut(self) -> nn.Module:
        return self.shortcut

    def forward(self, x: Tensor) -> Tensor:
        if usable(x, self):
            return self._packs.plan(self, x, self._pack)(x, self.activation)
        return self.act(self.body(x) + self._shortcut()(x))

    def _pack(self, size: list[int]) -> PackedResidual:
        b = self.body
        pairs = [(b[0], b[1]), (b[3], b[4]), (b[6], b[7])]
        return PackedResidual(pairs, shortcut_pair(self._shortcut()), size)


class Adapter(_Residual):
    """A(c_in -> c_out): maps a VMamba feature into the Wide-ResNet feature space of the same level.

    1x1 conv to ``max(c_in, c_out) / 4`` channels, 3x3 conv with dilation 2 (a wider view at the
    same cost), 1x1 conv to ``c_out``; residual through a 1x1 projection when the widths differ.
    """

    activation = "gelu"

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        mid = max(c_in, c_out) // 4
        self.body = nn.Sequential(
            *conv_bn(c_in, mid, 1),
            nn.GELU(),
            *conv_bn(mid, mid, 3, dilation=2),
            nn.GELU(),
            *conv_bn(mid, c_out, 1),
        )
        self.project = (
            nn.Conv2d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()
        )
        self.act = nn.GELU()

    def _shortcut(self) -> nn.Module:
        return self.project


class Bottleneck(_Residual):
    """Wide-ResNet bottleneck (1x1, 3x3 with ``stride``, 1x1), for RD4AD's OCBE."""

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        width, c_out = planes * WIDTH_FACTOR, planes * EXPANSION
        self.body = nn.Sequential(
            *conv_bn(c_in, width, 1),
            nn.ReLU(inplace=True),
            *conv_bn(width, width, 3, stride=stride),
            nn.ReLU(inplace=True),
            *conv_bn(width, c_out, 1),
        )
        self.shortcut: nn.Module = (
            nn.Sequential(*conv_bn(c_in, c_out, 1, stride=stride))
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )
        self.act = nn.ReLU(inplace=True)


class DeBottleneck(_Residual):
    """Reverse-distillation bottleneck: as ``Bottleneck``, but ``upsample`` doubles H and W with a
    2x2 stride-2 transposed conv in place of the strided 3x3 (and in the shortcut)."""

    def __init__(self, c_in: int, planes: int, upsample: bool = False) -> None:
        super().__init__()
        width, c_out = planes * WIDTH_FACTOR, planes * EXPANSION
        middle: nn.Module = (
            nn.ConvTranspose2d(width, width, 2, stride=2, bias=False)
            if upsample
            else nn.Conv2d(width, width, 3, padding=1, bias=False)
        )
        self.body = nn.Sequential(
            *conv_bn(c_in, width, 1),
            nn.ReLU(inplace=True),
            middle,
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            *conv_bn(width, c_out, 1),
        )
        self.shortcut: nn.Module
        if upsample:
            self.shortcut = nn.Sequential(
                nn.ConvTranspose2d(c_in, c_out, 2, stride=2, bias=False),
                nn.BatchNorm2d(c_out),
            )
        elif c_in != c_out:
            self.shortcut = nn.Sequential(*conv_bn(c_in, c_out, 1))
        else:
            self.shortcut = nn.Identity()
        self.act = nn.ReLU(inplace=True)


class DecoderStage(nn.Sequential):
    """One student level: ``c_in`` at H x W -> ``c_out`` at 2H x 2W in ``blocks`` de-bottlenecks."""

    def __init__(self, c_in: int, c_out: int, blocks: int) -> None:
        if c_out % EXPANSION:
            raise ValueError(
                f"decoder stage output width {c_out} is not a multiple of {EXPANSION}"
            )
        if blocks < 1:
            raise ValueError(f"a decoder stage needs at least one block, got {blocks}")
        planes = c_out // EXPANSION
        layers = [DeBottleneck(c_in, planes, upsample=True)]
        layers += [DeBottleneck(c_out, planes) for _ in range(blocks - 1)]
        super().__init__(*layers)
