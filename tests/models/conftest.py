"""Model test helpers: a model whose frozen teachers are replaced by fixed feature maps.

Building the real teachers (Wide-ResNet-50-2, VMamba-Tiny) costs seconds and their features are
not what these tests are about; ``fixed_teacher_model`` swaps ``build_teachers`` for modules that
return given tensors (with the real teachers' channel widths), so tests can feed exact features.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
from torch import Tensor, nn

import pdd.models.base as base
from pdd import create_model
from pdd.models import AnomalyModel


class FixedTeacher(nn.Module):
    """Stands in for a frozen teacher: returns the given features whatever the image.

    Features are buffers, so ``model.double()`` gives float64 copies of the same float32 numbers.
    """

    def __init__(self, features: Sequence[Tensor]) -> None:
        super().__init__()
        self.channels = [f.shape[1] for f in features]
        for i, feature in enumerate(features):
            self.register_buffer(f"level{i}", feature.clone())

    def forward(self, images: Tensor) -> list[Tensor]:
        return [getattr(self, f"level{i}") for i in range(len(self.channels))]


def build_with_fixed_teachers(
    preset: str, features: Mapping[str, Sequence[Tensor]], **overrides: Any
) -> AnomalyModel:
    """``create_model(preset)`` with each teacher ``name`` returning ``features[name]``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            base,
            "build_teachers",
            lambda config, names: nn.ModuleDict({n: FixedTeacher(features[n]) for n in names}),
        )
        return create_model(preset, **{"teachers": "random", **overrides})


@pytest.fixture(scope="session")
def fixed_teacher_model() -> Callable[..., AnomalyModel]:
    """``fixed_teacher_model(preset, {teacher name: [4 features]}, **overrides)``."""
    return build_with_fixed_teachers
