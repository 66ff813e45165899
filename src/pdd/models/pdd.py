"""PDD: Manifold-Prior Diverse Distillation (Lu et al., CVPR 2026).

Two frozen teachers look at the image: a CNN (Wide-ResNet-50-2, features y1..y4) and a state-space
model (VMamba-Tiny v0, features z1..z4 at half the CNN's resolution). The distillation targets are

    f_l = y_l + up2(A_l(z_l))          l = 1..3   (InA: VMamba context injected into CNN features)
    u   = y4 + A_4(z4)                            (MMU: the unified manifold the students decode)

Student 1 decodes u with reverse-distillation stages D3, D2, D1. Student 2 decodes u too, but the
MPA prior (p16, p32, predicted from u) is added to the inputs of its D2' and D1'. Both are trained
to reproduce f_l; the diversity loss keeps them apart at level 1 and together deeper. At test time
both students' disagreement with f_l makes the anomaly map.

Ablations (config switches): ``dual_teacher: false`` (CNN only: f_l = y_l, u = y4), ``ina: false``
(f_l = y_l), ``mpa: false``, ``num_students: 1`` (only the prior-fed student, trained with L_s2;
without MPA it is a plain student), ``diversity: false``. ``students: shared`` uses one decoder for
both students (the released code): then only the prior makes student 2 differ, and, as released,
student 2 runs first in each forward.

Trainable parts start as in the released decoder: Kaiming-normal convs, BatchNorm at 1 / 0
(``blocks.init_as_released``), drawn from the global RNG that the run's seed fixes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from pdd.models import losses
from pdd.models.base import AnomalyModel, TeacherFeatures, feature_name
from pdd.models.blocks import Adapter, DecoderStage, channels_last, init_as_released

__all__ = ["CNN_TEACHER", "PDD", "SSM_TEACHER", "ManifoldPrior", "Student"]

CNN_TEACHER = "wide_resnet50_2"
SSM_TEACHER = "vmamba_tiny_v0"


class ManifoldPrior(nn.Module):
    """MPA: from u, predict additive priors for the inputs of decoder levels 2 and 1.

    A shared 1x1 conv (to half the width) + BN + GELU, then one 1x1 head per level, each resized
    bilinearly to that level's input grid.
    """

    def __init__(self, c_in: int, c_out: Sequence[int]) -> None:
        super().__init__()
        mid = c_in // 2
        self.shared = nn.Sequential(
            nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.GELU()
        )
        self.heads = nn.ModuleList(nn.Conv2d(mid, c, 1, bias=False) for c in c_out)

    def forward(self, u: Tensor, sizes: Sequence[tuple[int, int]]) -> list[Tensor]:
        hidden = self.shared(u)
        return [
            F.interpolate(head(hidden), size=size, mode="bilinear", align_corners=False)
            for head, size in zip(self.heads, sizes)
        ]


class Student(nn.Module):
    """Reverse-distillation decoder: u (level 4) -> [s1, s2, s3], shallow first.

    ``priors`` (p for the input of level 2, p for the input of level 1) are added when given.
    """

    def __init__(self, channels: Sequence[int], blocks: Sequence[int]) -> None:
        super().__init__()
        c1, c2, c3, c4 = channels
        self.level3 = DecoderStage(c4, c3, blocks[0])
        self.level2 = DecoderStage(c3, c2, blocks[1])
        self.level1 = DecoderStage(c2, c1, blocks[2])

    def forward(
        self, u: Tensor, priors: Sequence[Tensor] | None = None
    ) -> list[Tensor]:
        s3 = self.level3(u)
        s2 = self.level2(s3 if priors is None else s3 + priors[0])
        s1 = self.level1(s2 if priors is None else s2 + priors[1])
        return [s1, s2, s3]


class PDD(AnomalyModel):
    """PDD and its ablations; see the module docstring for the wiring."""

    family = "pdd"

    def __init__(self, config: Mapping[str, Any]) -> None:
        names = [CNN_TEACHER, SSM_TEACHER] if config["dual_teacher"] else [CNN_TEACHER]
        super().__init__(config, names)
        cnn = self.teachers[CNN_TEACHER].channels
        ssm = self.teachers[SSM_TEACHER].channels if config["dual_teacher"] else None
        self.ina = (
            nn.ModuleList(Adapter(ssm[i], cnn[i]) for i in range(3))
            if config["ina"] and ssm
            else None
        )
        self.mmu = Adapter(ssm[3], cnn[3]) if ssm else None
        self.prior = ManifoldPrior(cnn[3], (cnn[2], cnn[1])) if config["mpa"] else None
        count = (
            1 if config["num_students"] == 1 or config["students"] == "shared" else 2
        )
        self.students = nn.ModuleList(
            Student(cnn, config["decoder_blocks"]) for _ in range(count)
        )
        for part in (self.ina, self.mmu, self.prior, self.students):
            if part is not None:
                init_as_released(part)
                channels_last(part)

    def teacher_levels(self) -> dict[str, tuple[int, ...]]:
        """All four CNN levels; VMamba's four with InA, only z4 (for the MMU) without."""
        levels = {CNN_TEACHER: (1, 2, 3, 4)}
        if self.mmu is not None:
            levels[SSM_TEACHER] = (1, 2, 3, 4) if self.ina is not None else (4,)
        return levels

    def teacher_features(self, images: Tensor) -> TeacherFeatures:
        features: TeacherFeatures = {}
        for name, levels in self.teacher_levels().items():
            outputs = self.teachers[name](images)
            features.update({feature_name(name, level): outputs[level - 1] for level in levels})
        return features

    def targets(self, images: Tensor) -> tuple[list[Tensor], Tensor]:
        """Distillation targets [f1, f2, f3] and the unified manifold u."""
        return self.targets_from_features(self.teacher_features(images))

    def targets_from_features(self, features: TeacherFeatures) -> tuple[list[Tensor], Tensor]:
        """``targets`` from the teachers' outputs (``teacher_features``)."""
        y = [features[feature_name(CNN_TEACHER, level)] for level in (1, 2, 3, 4)]
        if self.mmu is None:
            return list(y[:3]), y[3]
        z4 = features[feature_name(SSM_TEACHER, 4)]
        if self.ina is None:
            f = list(y[:3])
        else:
            # up2 as the authors' UpsamplingBilinear2d (align_corners=True), to y_l's exact grid.
            f = [
                y[i]
                + F.interpolate(
                    adapter(features[feature_name(SSM_TEACHER, i + 1)]),
                    size=y[i].shape[-2:],
                    mode="bilinear",
                    align_corners=True,
                )
                for i, adapter in enumerate(self.ina)
            ]
        return f, y[3] + self.mmu(z4)

    def student_features(
        self, u: Tensor, targets: Sequence[Tensor]
    ) -> list[list[Tensor]]:
        """Each student's [s1, s2, s3]. With one student, it is the prior-fed one."""
        priors = None
        if self.prior is not None:
            priors = self.prior(
                u, [tuple(targets[2].shape[-2:]), tuple(targets[1].shape[-2:])]
            )
        if self.config["num_students"] == 1:
            return [self.students[0](u, priors)]
        # As released: the prior-fed student runs first, so a shared decoder's BatchNorm running
        # statistics are updated by student 2's batch, then by student 1's.
        prior_fed = self.students[-1](u, priors)
        return [self.students[0](u), prior_fed]

    def feature_pairs(self, images: Tensor) -> list[tuple[Tensor, Tensor]]:
        f, u = self.targets(images)
        return [
            (s, t)
            for student in self.student_features(u, f)
            for s, t in zip(student, f)
        ]

    def loss_from_features(self, features: TeacherFeatures) -> dict[str, Tensor]:
        weights = self.config["loss"]
        f, u = self.targets_from_features(features)
        students = self.student_features(u, f)
        # The prior-fed student (the only one when num_students is 1) is trained with L_s2.
        s2 = losses.student2_loss(
            students[-1], f, weights["a"], weights["b"], self.config["cos_term"]
        )
        terms = {"loss_s2": s2}
        total = s2
        if len(students) == 2:
            terms["loss_s1"] = losses.student1_loss(students[0], f, weights["a"])
            total = total + terms["loss_s1"]
        if self.config["diversity"]:
            terms["loss_div"] = losses.diversity_loss(
                students[0], students[1], weights["tau_low"], weights["tau_high"]
            )
            total = total + weights["w"] * terms["loss_div"]
        return {"loss": total, **terms}
