"""RD4AD baseline: reverse distillation from one-class embedding (Deng & Li, CVPR 2022).

The frozen Wide-ResNet-50-2 gives y1..y3 (256@/4, 512@/8, 1024@/16). The one-class bottleneck
embedding (OCBE) brings y1 and y2 down to /16 with strided 3x3 convs, concatenates them with y3 and
compresses the result with bottleneck blocks to 2048@/32. A decoder that mirrors the encoder
(de-bottleneck stages of 3, 4 and 6 blocks) reconstructs y3, y2, y1 from it; the loss is
sum_l mean_b (1 - cos_b) and the anomaly map is the same as PDD's. OCBE and decoder start as in
the official code: Kaiming-normal convs, BatchNorm at 1 / 0 (``blocks.init_as_released``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from pdd.conv_backend import gemm_convolutions, prefers_gemm
from pdd.models import losses
from pdd.models.base import AnomalyModel, TeacherFeatures, feature_name
from pdd.models.blocks import (
    Bottleneck,
    DecoderStage,
    channels_last,
    conv_bn,
    init_as_released,
)
from pdd.packed_convs import usable

__all__ = ["OCBE", "RD4AD"]

TEACHER = "wide_resnet50_2"


class OCBE(nn.Module):
    """One-class bottleneck embedding: [y1, y2, y3] -> one 4 x ``planes`` map at half y3's grid."""

    def __init__(self, channels: Sequence[int], planes: int, blocks: int) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.reduce1 = nn.Sequential(
            *conv_bn(c1, c2, 3, stride=2),
            nn.ReLU(inplace=True),
            *conv_bn(c2, c3, 3, stride=2),
            nn.ReLU(inplace=True),
        )
        self.reduce2 = nn.Sequential(
            *conv_bn(c2, c3, 3, stride=2), nn.ReLU(inplace=True)
        )
        width = planes * 4
        self.blocks = nn.Sequential(
            Bottleneck(3 * c3, planes, stride=2),
            *(Bottleneck(width, planes) for _ in range(blocks - 1)),
        )

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        y1, y2, y3 = features
        fused = torch.cat([self.reduce1(y1), self.reduce2(y2), y3], dim=1)
        # 3x3 convs over 1024 channels on a 1/16-1/32 grid: at batch 1 faster outside oneDNN,
        # unless they run prepacked (pdd.packed_convs), which is faster still.
        with gemm_convolutions(prefers_gemm(fused) and not usable(fused, self.blocks)):
            return self.blocks(fused)


class RD4AD(AnomalyModel):
    """Wide-ResNet-50-2 teacher, OCBE, mirrored decoder."""

    family = "rd4ad"

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(config, [TEACHER])
        c1, c2, c3, c4 = self.teachers[TEACHER].channels
        blocks = config["decoder_blocks"]
        self.bottleneck = OCBE((c1, c2, c3), c4 // 4, config["bottleneck_blocks"])
        self.decoder = nn.ModuleList(
            [
                DecoderStage(c4, c3, blocks[0]),
                DecoderStage(c3, c2, blocks[1]),
                DecoderStage(c2, c1, blocks[2]),
            ]
        )
        for part in (self.bottleneck, self.decoder):
            init_as_released(part)
            channels_last(part)

    def teacher_levels(self) -> dict[str, tuple[int, ...]]:
        return {TEACHER: (1, 2, 3)}

    def teacher_features(self, images: Tensor) -> TeacherFeatures:
        # RD4AD never reads layer4: the backbone stops after layer3 (a third of its time).
        targets = self.teachers[TEACHER].backbone(images, levels=3)
        return {feature_name(TEACHER, i + 1): y for i, y in enumerate(targets)}

    def _features(self, features: TeacherFeatures) -> tuple[list[Tensor], list[Tensor]]:
        """Teacher targets [y1, y2, y3] and the decoder's reconstructions, shallow first."""
        targets = [features[feature_name(TEACHER, level)] for level in (1, 2, 3)]
        x = self.bottleneck(targets)
        outputs = []
        for stage in self.decoder:
            x = stage(x)
            outputs.append(x)
        return targets, outputs[::-1]

    def feature_pairs(self, images: Tensor) -> list[tuple[Tensor, Tensor]]:
        targets, students = self._features(self.teacher_features(images))
        return list(zip(students, targets))

    def loss_from_features(self, features: TeacherFeatures) -> dict[str, Tensor]:
        targets, students = self._features(features)
        return {"loss": losses.rd4ad_loss(students, targets)}
