"""Teacher registry: frozen pretrained backbones that give the four stage features PDD distils.

``build(name, weights=None, **overrides)`` returns a ``Teacher``: a frozen wrapper (no gradients,
always in eval mode, so BatchNorm statistics never move) around a backbone whose forward returns
four BCHW stage features. ``weights`` is ``None`` (random init under ``seed``, for tests and demos),
a file path (read without running code from it) or a state dict. Official checkpoints load as
published: wrappers and legacy names are undone, only the classifier is dropped, and every
backbone key must match by name and shape; anything else is a ``WeightsError`` that names the
file and the first offending keys.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pdd.errors import ConfigError, WeightsError

__all__ = ["ARITHMETIC_REVISION", "TEACHERS", "Teacher", "available", "build", "load_strict"]

ARITHMETIC_REVISION = 5
"""Bumped whenever a teacher's forward changes how it rounds (operations fused, reordered or
folded) for the same weights and input: stored teacher features made by another revision are
never served (``pdd.training.feature_cache``). 2: VMamba's in_proj as two halves, its depthwise
conv + SiLU as one oneDNN call. 3: Wide-ResNet's wide 3x3 convolutions as Winograd F(2x2, 3x3)
(``pdd.winograd``); VMamba's projections choose their library by an image's rows, not the batch's
(``pdd.conv_backend.linear``). 4: those on grids of 16 4x4 tiles or more as F(4x4, 3x3). 5: the
Winograd filters transformed in another order (a value in tens of millions may round the other
way)."""

# How many offending keys an error message lists before "(+N more)".
_KEYS_SHOWN = 5


class Teacher(nn.Module):
    """A frozen backbone: ``forward(x) -> [f1, f2, f3, f4]`` BCHW, never trained, always eval."""

    def __init__(
        self,
        name: str,
        backbone: nn.Module,
        channels: tuple[int, ...],
        strides: tuple[int, ...],
        options: Mapping[str, Any],
    ) -> None:
        super().__init__()
        self.name = name
        self.backbone = backbone
        self.channels = tuple(channels)
        self.strides = tuple(strides)
        self.options = dict(options)
        # Provenance for identity(): set by build().
        self.weights_path: Path | None = None
        self.seed: int | None = None
        self._sha256: str | None = None
        for param in self.parameters():
            param.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Teacher:
        """Stay in eval mode whatever a parent asks: a teacher's BN statistics must never move."""
        return super().train(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.backbone(x))

    def fingerprint(self) -> list[float]:
        """Sum and sum of squares of all parameters and buffers (float64): verifies a rebuild."""
        total = torch.zeros((), dtype=torch.float64)
        squares = torch.zeros((), dtype=torch.float64)
        for tensor in self.backbone.state_dict().values():
            if tensor.is_floating_point():
                values = tensor.detach().to(torch.float64)
                total += values.sum()
                squares += values.square().sum()
        return [total.item(), squares.item()]

    def identity(self) -> dict[str, Any]:
        """What these weights are: file name and SHA-256, or random init with seed and fingerprint."""
        info: dict[str, Any] = {"name": self.name}
        if self.options:
            info["options"] = dict(self.options)
        if self.weights_path is not None:
            if self._sha256 is None:
                from pdd.teachers.weight_files import sha256_file

                self._sha256 = sha256_file(self.weights_path)
            info.update(weights=self.weights_path.name, sha256=self._sha256)
        elif self.seed is not None:
            info.update(
                weights="random", seed=self.seed, fingerprint=self.fingerprint()
            )
        else:
            info.update(weights="state dict", fingerprint=self.fingerprint())
        return info


@dataclass(frozen=True)
class _TeacherSpec:
    """How to make one named teacher and how to turn its published state dict into ours."""

    make: Callable[[dict[str, Any]], tuple[nn.Module, tuple[int, ...], tuple[int, ...]]]
    convert: Callable[[dict[str, Tensor]], dict[str, Tensor]]


def _make_wide_resnet(
    options: dict[str, Any],
) -> tuple[nn.Module, tuple[int, ...], tuple[int, ...]]:
    from pdd.teachers import wide_resnet

    if options:
        raise ConfigError(
            f"wide_resnet50_2: the teacher takes no options, got {', '.join(sorted(options))}"
        )
    return wide_resnet.WideResNetFeatures(), wide_resnet.CHANNELS, wide_resnet.STRIDES


def _convert_wide_resnet(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    from pdd.teachers import wide_resnet

    state_dict = _unwrap(state_dict)
    return {
        key: value
        for key, value in state_dict.items()
        if not key.startswith(wide_resnet.CLASSIFIER_PREFIXES)
    }


def _make_vmamba(
    options: dict[str, Any],
) -> tuple[nn.Module, tuple[int, ...], tuple[int, ...]]:
    from pdd.teachers import vmamba

    backbone = vmamba.VMambaBackbone(**{**vmamba.TINY_CONFIG, **options})
    return backbone, tuple(backbone.channels), tuple(backbone.strides)


def _convert_vmamba(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    from pdd.teachers import vmamba

    return dict(vmamba.convert_official_state_dict(dict(state_dict)))


TEACHERS: dict[str, _TeacherSpec] = {
    "wide_resnet50_2": _TeacherSpec(_make_wide_resnet, _convert_wide_resnet),
    "vmamba_tiny_v0": _TeacherSpec(_make_vmamba, _convert_vmamba),
}


def available() -> list[str]:
    """Names accepted by ``build``."""
    return sorted(TEACHERS)


def build(
    name: str,
    weights: str | os.PathLike[str] | Mapping[str, Tensor] | None = None,
    *,
    seed: int = 0,
    **overrides: Any,
) -> Teacher:
    """A frozen teacher; random init always runs under ``seed`` in a forked RNG (global RNG untouched).

    ``overrides`` are architecture options (VMamba: the keys of its config dict, e.g. a small
    ``dims``/``depths`` for tests); Wide-ResNet takes none.
    """
    if name not in TEACHERS:
        raise ConfigError(
            f"unknown teacher '{name}'; available: {', '.join(available())}"
        )
    spec = TEACHERS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone, channels, strides = spec.make(dict(overrides))
    teacher = Teacher(name, backbone, channels, strides, overrides)
    if weights is None:
        teacher.seed = seed
        return teacher
    if isinstance(weights, Mapping):
        source = "state dict"
        state_dict = dict(weights)
    else:
        from pdd.teachers.weight_files import read_state_dict

        teacher.weights_path = Path(weights)
        source = str(weights)
        state_dict = read_state_dict(weights)
    load_strict(teacher.backbone, spec.convert(state_dict), source=source, what=name)
    return teacher


def _unwrap(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``{"model": sd}`` / ``{"state_dict": sd}`` as published -> ``sd``."""
    for wrapper in ("model", "state_dict"):
        inner = state_dict.get(wrapper)
        if isinstance(inner, Mapping):
            return dict(inner)
    return dict(state_dict)


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_KEYS_SHOWN])
    more = len(keys) - _KEYS_SHOWN
    return shown + (f" (+{more} more)" if more > 0 else "")


def load_strict(
    module: nn.Module, state_dict: Mapping[str, Any], *, source: str, what: str
) -> None:
    """Load every key of ``module`` from ``state_dict`` by exact name and shape, or raise.

    BatchNorm's ``num_batches_tracked`` counters may be absent (older torchvision files and
    safetensors exports drop them); they do not affect an eval-mode forward.
    """
    expected = module.state_dict()
    missing = [
        key
        for key in expected
        if key not in state_dict and not key.endswith("num_batches_tracked")
    ]
    unexpected = [key for key in state_dict if key not in expected]
    problems = []
    if missing:
        problems.append(f"missing keys {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_listing(unexpected)}")
    wrong_type = [
        key
        for key, value in state_dict.items()
        if key in expected and not isinstance(value, Tensor)
    ]
    if wrong_type:
        problems.append(f"entries that are not tensors {_listing(wrong_type)}")
    mismatched = [
        f"{key} {tuple(value.shape)} != {tuple(expected[key].shape)}"
        for key, value in state_dict.items()
        if key in expected
        and isinstance(value, Tensor)
        and value.shape != expected[key].shape
    ]
    if mismatched:
        problems.append(f"shape mismatch (file != model) {_listing(mismatched)}")
    if problems:
        raise WeightsError(
            f"{source}: weights do not fit the {what} teacher: {'; '.join(problems)}"
        )
    module.load_state_dict(dict(state_dict), strict=False)
