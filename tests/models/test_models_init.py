"""Initialisation as released (DESIGN.md §1): Kaiming-normal convs, BatchNorm 1/0, under the seed.

Models are built at the real channel widths (fixed-feature teachers stand in for the real ones, so
only the trainable parts are built), where every trainable conv has >= 12,288 weights: the sample
std of one layer is then within ~0.7 % of the true one, and the 10 % bound is over 10 sigma away.

Mutations (scratch copy) and the test that killed each:
- no re-initialisation (PyTorch defaults) or ``mode="fan_in"``: ``test_convs_are_kaiming_normal_fan_out``;
- ``kaiming_uniform_`` instead of normal: same test (the tail fraction);
- transposed convs re-initialised too: ``test_transposed_convs_keep_pytorch_default``;
- one part left out (e.g. the prior, the RD4AD bottleneck): ``test_convs_are_kaiming_normal_fan_out``;
- the whole model re-initialised, teachers included: ``test_teachers_are_untouched``;
- a fixed generator instead of the global RNG: ``test_seed_fixes_the_initial_weights``;
- BatchNorm weights set to 0: ``test_batchnorm_starts_at_one_and_zero``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import lightning as L
import pytest
import torch
from torch import Tensor, nn

import pdd.models.base as base
from pdd import create_model
from pdd.models import AnomalyModel
from pdd.models.pdd import CNN_TEACHER, SSM_TEACHER

PRESETS = ["pdd", "pdd-reference", "rd4ad"]
# The real teachers' channel widths (Wide-ResNet-50-2 layer1..4, VMamba-Tiny v0 stages 1..4).
FULL = {CNN_TEACHER: [256, 512, 1024, 2048], SSM_TEACHER: [192, 384, 768, 768]}
SMALL = {CNN_TEACHER: [16, 32, 64, 128], SSM_TEACHER: [8, 16, 32, 32]}
# Parts that must own trainable convs, per family: a part left out of the init shows up here.
PARTS = {"pdd": ("ina.", "mmu.", "prior.", "students."), "rd4ad": ("bottleneck.", "decoder.")}


def channel_stubs(widths: dict[str, list[int]]) -> dict[str, list[Tensor]]:
    return {name: [torch.zeros(1, c, 1, 1) for c in chans] for name, chans in widths.items()}


def trainable_modules(model: AnomalyModel, kind: type[nn.Module]) -> dict[str, nn.Module]:
    return {
        name: module
        for name, module in model.named_modules()
        if type(module) is kind and not name.startswith("teachers.")
    }


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Big tensors on a shared 2-core CPU: one thread is faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def full_models(fixed_teacher_model: Callable[..., AnomalyModel]) -> dict[str, AnomalyModel]:
    return {preset: fixed_teacher_model(preset, channel_stubs(FULL)) for preset in PRESETS}


@pytest.mark.parametrize("preset", PRESETS)
def test_convs_are_kaiming_normal_fan_out(
    full_models: dict[str, AnomalyModel], preset: str
) -> None:
    """Every trainable Conv2d: std within 10 % of sqrt(2 / fan_out), mean ~0, normal tails."""
    model = full_models[preset]
    convs = trainable_modules(model, nn.Conv2d)
    for part in PARTS[model.family]:
        assert any(name.startswith(part) for name in convs), f"no conv in {part}"
    beyond, total = 0, 0
    for name, conv in convs.items():
        weight = conv.weight.detach()
        assert weight.numel() >= 12_288, name
        fan_out = weight.shape[0] * weight.shape[2] * weight.shape[3]
        expected = math.sqrt(2.0 / fan_out)
        std, mean = torch.std_mean(weight)
        assert abs(std.item() / expected - 1.0) < 0.10, f"{name}: std {std:.3g} vs {expected:.3g}"
        assert abs(mean.item()) < 0.05 * expected, name
        beyond += int((weight.abs() > 2 * expected).sum())
        total += weight.numel()
    # A normal puts 4.55 % of its mass beyond 2 sigma; a uniform of the same std puts none.
    assert 0.040 < beyond / total < 0.051, f"fraction beyond 2 sigma: {beyond / total:.4f}"


@pytest.mark.parametrize("preset", PRESETS)
def test_transposed_convs_keep_pytorch_default(
    full_models: dict[str, AnomalyModel], preset: str
) -> None:
    """PyTorch's default: uniform with bound 1/sqrt(fan_in), std 1/sqrt(3 fan_in) (torch's fan_in
    of a transposed weight [in, out, k, k] is out * k * k)."""
    transposed = trainable_modules(full_models[preset], nn.ConvTranspose2d)
    assert transposed
    for name, conv in transposed.items():
        weight = conv.weight.detach()
        fan_in = weight.shape[1] * weight.shape[2] * weight.shape[3]
        bound = 1.0 / math.sqrt(fan_in)
        assert weight.abs().max().item() <= bound, name
        assert abs(weight.std().item() * math.sqrt(3 * fan_in) - 1.0) < 0.10, name


@pytest.mark.parametrize("preset", PRESETS)
def test_batchnorm_starts_at_one_and_zero(
    full_models: dict[str, AnomalyModel], preset: str
) -> None:
    """Weight 1, bias 0, fresh running stats (PyTorch's defaults too: pins them, e.g. against a
    zero-initialised last BN per block)."""
    norms = trainable_modules(full_models[preset], nn.BatchNorm2d)
    assert norms
    for name, norm in norms.items():
        assert torch.equal(norm.weight, torch.ones_like(norm.weight)), name
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias)), name
        assert torch.equal(norm.running_mean, torch.zeros_like(norm.running_mean)), name
        assert torch.equal(norm.running_var, torch.ones_like(norm.running_var)), name


@pytest.mark.parametrize("preset", PRESETS)
def test_seed_fixes_the_initial_weights(
    fixed_teacher_model: Callable[..., AnomalyModel], preset: str
) -> None:
    """As the runner does (``seed_everything(seed)`` then build): same seed, identical trainable
    weights; another seed, every conv different."""

    def build(seed: int) -> dict[str, Tensor]:
        L.seed_everything(seed, verbose=False)
        return fixed_teacher_model(preset, channel_stubs(SMALL)).trainable_state_dict()

    first, again, other = build(3), build(3), build(4)
    assert sorted(first) == sorted(again) == sorted(other)
    for key, value in first.items():
        assert torch.equal(value, again[key]), key
        if value.dim() == 4:
            assert not torch.equal(value, other[key]), key


class _TeacherWithWeights(nn.Module):
    """A stand-in teacher that owns a conv and a BatchNorm with values no init would give."""

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        self.channels = channels
        self.conv = nn.Conv2d(3, 8, 3, bias=False)
        self.norm = nn.BatchNorm2d(8)
        for tensor, value in ((self.conv.weight, 0.25), (self.norm.weight, 0.5), (self.norm.bias, 0.1)):
            nn.init.constant_(tensor, value)


@pytest.mark.parametrize("preset", PRESETS)
def test_teachers_are_untouched(monkeypatch: pytest.MonkeyPatch, preset: str) -> None:
    """The initialisation reaches the trainable parts only, never a (frozen) teacher's weights."""
    monkeypatch.setattr(
        base,
        "build_teachers",
        lambda config, names: nn.ModuleDict({n: _TeacherWithWeights(SMALL[n]) for n in names}),
    )
    model = create_model(preset, teachers="random")
    assert model.teachers
    for name, teacher in model.teachers.items():
        assert torch.all(teacher.conv.weight == 0.25), name
        assert torch.all(teacher.norm.weight == 0.5) and torch.all(teacher.norm.bias == 0.1), name
