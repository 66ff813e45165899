"""Distillation losses of PDD and RD4AD.

All feature lists are ordered shallow to deep (level 1 = the largest map). ``cos_b`` is the cosine
similarity between the two feature maps of one sample, each flattened to a vector; the losses
average it over the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

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


def sample_cosine(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample cosine similarity of two feature maps flattened to vectors: shape [B]."""
    return F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)


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
