"""Shared students run as released: the prior-fed student (2) before student 1 in every step.

With ``students: shared`` one decoder serves both students, so each of its BatchNorm layers updates
its running statistics twice per step, and the order of the two updates changes the result
(0.9 * (0.9 r + 0.1 a) + 0.1 b differs from the same with a and b swapped). The golden test pins the
order against the released code's numbers; this one pins it on a small model, by hand.

Mutation (scratch copy): student 1 run first in ``PDD.student_features`` fails
``test_one_step_updates_shared_bn_as_student2_then_student1``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor

from pdd.models import AnomalyModel
from pdd.models.pdd import CNN_TEACHER, SSM_TEACHER

BATCH = 2
# Small teachers at a 64 px input: CNN levels at /4../32, VMamba levels at /8../32.
Y = [(16, 16), (32, 8), (64, 4), (128, 2)]
Z = [(8, 8), (16, 4), (32, 2), (32, 2)]


def features() -> dict[str, list[Tensor]]:
    generator = torch.Generator().manual_seed(7)
    return {
        CNN_TEACHER: [torch.rand(BATCH, c, s, s, generator=generator) * 2 for c, s in Y],
        SSM_TEACHER: [torch.randn(BATCH, c, s, s, generator=generator) for c, s in Z],
    }


def running_stats(model: AnomalyModel) -> dict[str, Tensor]:
    """The shared decoder's BatchNorm buffers (running mean, var and the update count)."""
    return {
        key: value.clone()
        for key, value in model.state_dict().items()
        if key.startswith("students.0.") and ("running_" in key or "num_batches" in key)
    }


def by_hand(model: AnomalyModel, images: Tensor, prior_fed_first: bool) -> dict[str, Tensor]:
    """The two students' decoder passes, in the given order, on a copy of ``model``."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        targets, u = model.targets(images)
        priors = model.prior(u, [tuple(targets[2].shape[-2:]), tuple(targets[1].shape[-2:])])
        decoder = model.students[0]
        if prior_fed_first:
            decoder(u, priors)
            decoder(u)
        else:
            decoder(u)
            decoder(u, priors)
    return running_stats(model)


def test_one_step_updates_shared_bn_as_student2_then_student1(
    fixed_teacher_model: Callable[..., AnomalyModel],
) -> None:
    model = fixed_teacher_model("pdd-reference", features(), image_size=64).train()
    assert len(model.students) == 1  # one decoder shared by both students
    images = torch.zeros(BATCH, 3, 64, 64)  # ignored by the fixed teachers
    released_order = by_hand(model, images, prior_fed_first=True)
    opposite_order = by_hand(model, images, prior_fed_first=False)

    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.5, 0.999))
    optimizer.zero_grad()
    model.loss(images)["loss"].backward()
    optimizer.step()
    after_step = running_stats(model)

    assert sorted(after_step) == sorted(released_order)
    for key, value in after_step.items():
        torch.testing.assert_close(value, released_order[key], rtol=1e-6, atol=1e-7, msg=key)
        if key.endswith("num_batches_tracked"):
            assert value.item() == 2, key  # both students passed through the shared decoder
    differs = [
        key
        for key, value in after_step.items()
        if not torch.allclose(value.double(), opposite_order[key].double(), rtol=1e-4, atol=1e-6)
    ]
    assert differs, "the student order made no difference to the running statistics"
