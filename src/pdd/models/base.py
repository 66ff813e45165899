"""``AnomalyModel``: what every trainable model family promises the engine, CLI and export.

A model owns its frozen teachers (under ``teachers.*``) and its trainable parts (everything else).
``forward`` is inference (smoothed anomaly maps and image scores), ``loss`` is training.

Training splits in two so the frozen teachers' work can be done once per image and reused
(``pdd.training.feature_cache``): ``teacher_features(images)`` returns only the teacher levels the
model reads (``teacher_levels()``), named ``"<teacher>.<level>"``; ``loss_from_features`` is the rest
of the loss. ``loss(images)`` is exactly the two in a row, so precomputed features of the same images
give the same loss.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

from pdd import teachers as teacher_registry
from pdd.errors import CheckpointError
from pdd.models.anomaly_map import AnomalyMap

__all__ = ["AnomalyModel", "TeacherFeatures", "build_teachers", "feature_name"]

TeacherFeatures = dict[str, Tensor]
"""Frozen teacher outputs of a batch, ``"<teacher>.<level>"`` (level from 1) -> [B, C, H, W]."""


def feature_name(teacher: str, level: int) -> str:
    """The ``TeacherFeatures`` key of one teacher level (levels count from 1)."""
    return f"{teacher}.{level}"


_TEACHER_PREFIX = "teachers."
# Relative tolerance when comparing random teachers' fingerprints (float64 sums of float32 values).
# The same seed gives weights that differ in the last float32 bits between CPUs (vectorised
# transcendental functions in the initialisers): VMamba's sum moved by 2.3e-9 relative between an
# AVX-512 Xeon and an AVX-512 EPYC. Another seed or another init moves it by orders of magnitude more.
_FINGERPRINT_RTOL = 1e-6


def build_teachers(config: Mapping[str, Any], names: Sequence[str]) -> nn.ModuleDict:
    """The named teachers with the weights the config asks for.

    ``teacher_weights[name]`` (a file) wins; otherwise ``teachers: pretrained`` resolves the cached
    official file (a missing file is a ``WeightsError`` with the command that fixes it) and
    ``teachers: random`` initialises under ``teacher_seed``.
    """
    built = nn.ModuleDict()
    for name in names:
        path = config["teacher_weights"].get(name)
        if path is None and config["teachers"] == "pretrained":
            from pdd.teachers.weights import resolve

            path = resolve(name)
        built[name] = teacher_registry.build(
            name,
            weights=path,
            seed=config["teacher_seed"],
            **config["teacher_options"].get(name, {}),
        )
    return built


class AnomalyModel(nn.Module, ABC):
    """Base of the model families: frozen teachers + trainable students, one config dict."""

    family: ClassVar[str]

    def __init__(self, config: Mapping[str, Any], teacher_names: Sequence[str]) -> None:
        super().__init__()
        self.config: dict[str, Any] = dict(config)
        self.teachers = build_teachers(config, teacher_names)
        self.anomaly_map = AnomalyMap(config["sigma"])

    @abstractmethod
    def feature_pairs(self, images: Tensor) -> list[tuple[Tensor, Tensor]]:
        """(student feature, target feature) pairs whose disagreement is the anomaly map."""

    @abstractmethod
    def teacher_levels(self) -> dict[str, tuple[int, ...]]:
        """Per teacher, the levels (from 1) this model reads: all that training needs of them."""

    @abstractmethod
    def teacher_features(self, images: Tensor) -> TeacherFeatures:
        """The frozen teachers' outputs at ``teacher_levels()``: the same for an image every epoch."""

    @abstractmethod
    def loss_from_features(self, features: TeacherFeatures) -> dict[str, Tensor]:
        """The training loss given ``teacher_features`` of the batch (see ``loss``)."""

    def loss(self, images: Tensor) -> dict[str, Tensor]:
        """Training loss: ``"loss"`` is the total, the other keys are its terms (for logging)."""
        return self.loss_from_features(self.teacher_features(images))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images [B, 3, S, S] (normalised) -> smoothed anomaly maps [B, S, S], image scores [B]."""
        _check_images(images)
        return self.anomaly_map(
            self.feature_pairs(images), (images.shape[-2], images.shape[-1])
        )

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Everything a checkpoint must hold: all state except the (rebuildable) teachers."""
        return {
            k: v
            for k, v in self.state_dict().items()
            if not k.startswith(_TEACHER_PREFIX)
        }

    def load_trainable_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Load ``trainable_state_dict()`` output; every key must match (teachers untouched)."""
        own = self.trainable_state_dict()
        missing = [key for key in own if key not in state_dict]
        unexpected = [key for key in state_dict if key not in own]
        mismatched = [
            key
            for key in own
            if key in state_dict
            and tuple(state_dict[key].shape) != tuple(own[key].shape)
        ]
        for problem, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", mismatched),
        ):
            if keys:
                raise CheckpointError(
                    f"trainable weights do not fit this {self.config['preset']} model: "
                    f"{problem} keys {', '.join(keys[:5])}"
                    + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
                )
        self.load_state_dict(dict(state_dict), strict=False)

    def teacher_identity(self) -> dict[str, dict[str, Any]]:
        """Per teacher: weights file name and SHA-256, or ``random`` with seed and fingerprint."""
        return {name: teacher.identity() for name, teacher in self.teachers.items()}

    def check_teacher_identity(self, expected: Mapping[str, Mapping[str, Any]]) -> None:
        """Raise ``CheckpointError`` unless these teachers are the ones ``expected`` describes."""
        actual = self.teacher_identity()
        if set(actual) != set(expected):
            raise CheckpointError(
                f"teachers differ: checkpoint has {sorted(expected)}, model has {sorted(actual)}"
            )
        for name, want in expected.items():
            have = actual[name]
            for key in sorted(set(want) | set(have)):
                if key == "fingerprint":
                    same = len(want.get(key, [])) == len(have.get(key, [])) and all(
                        math.isclose(a, b, rel_tol=_FINGERPRINT_RTOL)
                        for a, b in zip(want[key], have[key])
                    )
                else:
                    same = want.get(key) == have.get(key)
                if not same:
                    raise CheckpointError(
                        f"teacher {name} differs from the checkpoint's: {key} is "
                        f"{have.get(key)!r}, expected {want.get(key)!r}"
                    )


def _check_images(images: Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
    if images.shape[-2] % 32 or images.shape[-1] % 32:
        raise ValueError(
            f"image height and width must be multiples of 32, got {tuple(images.shape[-2:])}"
        )
