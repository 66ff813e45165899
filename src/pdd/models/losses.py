"""Distillation losses of PDD and RD4AD.

All feature lists are ordered shallow to deep (level 1 = the largest map). ``cos_b`` is the cosine
similarity between the two feature maps of one sample, each flattened to a vector; the losses
average it over the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CosTerm",
    "diversity_loss",
    "rd4ad_loss",
    "sample_cosine",
    "student1_loss",
    "student2_loss",
]

CosTerm = Literal["one_minus", "plus"]


def _check_pairs(a: Sequence[Tensor], b: Sequence[Tensor]) -> None:
    if len(a) != len(b):
        raise ValueError(f"feature lists differ in length: {len(a)} vs {len(b)}")
    for level, (x, y) in enumerate(zip(a, b), start=1):
        if x.shape != y.shape:
            raise ValueError(
                f"level {level}: shapes differ, {tuple(x.shape)} vs {tuple(y.shape)}"
            )


_EPS = 1e-8  # as F.cosine_similarity: each norm clamped at eps


class _SampleCosine(torch.autograd.Function):
    """Per-sample cosine with a hand-written backward of two full-size passes per input.

    ``F.cosine_similarity`` on [B, C*H*W] vectors makes several full-size temporaries forward and
    backward (divisions by the broadcast norms, their products), and ``flatten`` copies a
    channels-last map first; in a PDD training step on cached features that was about 40 % of the
    time. Here the forward is three reductions over the map as it lies in memory (summed blockwise,
    more accurate than the flattened dot), and the gradient of cos = <a, b> / (|a| |b|) is
    d cos / d a = b / (|a| |b|) - cos a / |a|^2, one scaled add per input.
    """

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor) -> Tensor:  # type: ignore[override]
        dims = tuple(range(1, a.dim()))
        norm_a = torch.linalg.vector_norm(a, dim=dims)
        norm_b = torch.linalg.vector_norm(b, dim=dims)
        clamped_a, clamped_b = norm_a.clamp_min(_EPS), norm_b.clamp_min(_EPS)
        cosine = (a * b).sum(dims) / (clamped_a * clamped_b)
        ctx.save_for_backward(a, b, norm_a, norm_b, clamped_a, clamped_b, cosine)
        return cosine

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:  # type: ignore[override]
        a, b, norm_a, norm_b, clamped_a, clamped_b, cosine = ctx.saved_tensors
        shape = (-1,) + (1,) * (a.dim() - 1)
        cross = (grad / (clamped_a * clamped_b)).view(shape)

        def own(norm: Tensor, clamped: Tensor) -> Tensor:
            # A norm clamped at eps is a constant: no gradient through it.
            return torch.where(norm > _EPS, -grad * cosine / clamped**2, 0.0).view(
                shape
            )

        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = torch.addcmul(b * cross, a, own(norm_a, clamped_a))
        if ctx.needs_input_grad[1]:
            grad_b = torch.addcmul(a * cross, b, own(norm_b, clamped_b))
        return grad_a, grad_b


def sample_cosine(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample cosine similarity of two feature maps, each taken as one vector: shape [B]."""
    if a.shape != b.shape or a.dim() < 2:
        raise ValueError(
            f"sample_cosine needs two [B, ...] tensors of one shape, got {tuple(a.shape)} "
            f"and {tuple(b.shape)}"
        )
    return _SampleCosine.apply(a, b)


def student1_loss(
    students: Sequence[Tensor], targets: Sequence[Tensor], a: float
) -> Tensor:
    """L_s1 = a * sum_l MSE(s_l, f_l)."""
    _check_pairs(students, targets)
    return a * torch.stack([F.mse_loss(s, f) for s, f in zip(students, targets)]).sum()


def student2_loss(
    students: Sequence[Tensor],
    targets: Sequence[Tensor],
    a: float,
    b: float,
    cos_term: CosTerm = "one_minus",
) -> Tensor:
    """L_s2 = a * sum_l MSE + b * sum_l mean_b(1 - cos_b)   (``one_minus``: the paper).

    ``plus`` is the released code's ``+ b * mean_b(cos_b)``, which rewards dissimilar directions;
    it is kept only to reproduce that code.
    """
    mse = student1_loss(students, targets, a)
    cosines = torch.stack(
        [sample_cosine(s, f).mean() for s, f in zip(students, targets)]
    )
    if cos_term == "one_minus":
        return mse + b * (1.0 - cosines).sum()
    if cos_term == "plus":
        return mse + b * cosines.sum()
    raise ValueError(f"cos_term must be 'one_minus' or 'plus', got {cos_term!r}")


def diversity_loss(
    first: Sequence[Tensor], second: Sequence[Tensor], tau_low: float, tau_high: float
) -> Tensor:
    """Push the two students apart at level 1, keep them together at levels 2 and 3.

    L_div = mean_b relu(cos_b(s2_1, s1_1) - tau_low) + sum_{l>=2} mean_b relu(tau_high - cos_b(s2_l, s1_l)).
    """
    _check_pairs(first, second)
    shallow = F.relu(sample_cosine(second[0], first[0]) - tau_low).mean()
    deeper = [
        F.relu(tau_high - sample_cosine(s2, s1)).mean()
        for s1, s2 in zip(first[1:], second[1:])
    ]
    return shallow + torch.stack(deeper).sum() if deeper else shallow


def rd4ad_loss(students: Sequence[Tensor], targets: Sequence[Tensor]) -> Tensor:
    """RD4AD: sum_l mean_b(1 - cos_b(s_l, f_l))."""
    _check_pairs(students, targets)
    return torch.stack(
        [(1.0 - sample_cosine(s, f)).mean() for s, f in zip(students, targets)]
    ).sum()
