"""Wide-ResNet-50-2 teacher: torchvision's architecture, key names and stage outputs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torchvision.models import wide_resnet50_2
from torchvision.models.feature_extraction import create_feature_extractor

from pdd import teachers
from pdd.teachers.wide_resnet import CHANNELS, STRIDES, WideResNetFeatures


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Big convolutions on a shared 2-core CPU run ~10x faster on one thread than on two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def torchvision_net() -> torch.nn.Module:
    torch.manual_seed(3)
    net = wide_resnet50_2(weights=None).eval()
    # Non-trivial BN statistics, so a wrongly wired BN would show in the outputs.
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return net


def test_keys_are_torchvision_keys_without_classifier(
    torchvision_net: torch.nn.Module,
) -> None:
    ours = set(WideResNetFeatures().state_dict())
    theirs = {k for k in torchvision_net.state_dict() if not k.startswith("fc.")}
    assert ours == theirs


def test_stage_outputs_match_torchvision_layers(
    torchvision_net: torch.nn.Module,
) -> None:
    teacher = teachers.build("wide_resnet50_2", weights=torchvision_net.state_dict())
    extractor = create_feature_extractor(
        torchvision_net, return_nodes=["layer1", "layer2", "layer3", "layer4"]
    )
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ours = teacher(x)
        reference = list(extractor(x).values())
    assert len(ours) == 4
    for level, (a, b, channels, stride) in enumerate(
        zip(ours, reference, CHANNELS, STRIDES), start=1
    ):
        assert a.shape == (2, channels, 64 // stride, 96 // stride), f"level {level}"
        # Channels-last convolutions sum in another order than torchvision's NCHW ones: float32
        # rounding only (~1e-6 of the feature scale), far below any wiring error.
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * b.abs().max().item())
    assert teacher.channels == CHANNELS and teacher.strides == STRIDES


def test_levels_stop_early_with_the_same_features(
    torchvision_net: torch.nn.Module,
) -> None:
    """``levels=3`` (RD4AD) gives layer1..3 exactly as the full forward does, and no layer4."""
    backbone = teachers.build(
        "wide_resnet50_2", weights=torchvision_net.state_dict()
    ).backbone
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        full = backbone(x)
        three = backbone(x, levels=3)
    assert len(three) == 3
    for a, b in zip(three, full):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="levels"):
        backbone(x, levels=5)


def test_no_classifier_or_pooling() -> None:
    names = dict(WideResNetFeatures().named_children())
    assert "fc" not in names and "avgpool" not in names
