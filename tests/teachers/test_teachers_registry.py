"""Teacher registry: random builds, freezing, weight files as published, strict key checks."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from pdd import teachers
from pdd.errors import ConfigError, WeightsError

SMALL_VMAMBA = {"dims": 8, "depths": [1, 1, 1, 1], "ssm_d_state": 4}
# Official VMamba v0 names of today's keys (the fixture README's legacy aliases).
LEGACY = [
    ("patch_embed.0.", "patch_embed.proj."),
    ("patch_embed.2.", "patch_embed.norm."),
    (".norm.", ".ln_1."),
    (".op.", ".self_attention."),
    ("downsample.1.", "downsample.norm."),
    ("downsample.2.", "downsample.reduction."),
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Big convolutions on a shared 2-core CPU run ~10x faster on one thread than on two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def wrn() -> teachers.Teacher:
    return teachers.build("wide_resnet50_2", seed=5)


def _with_classifier(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {**state, "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}


def test_available_lists_both_teachers() -> None:
    assert teachers.available() == ["vmamba_tiny_v0", "wide_resnet50_2"]
    with pytest.raises(ConfigError, match="unknown teacher 'resnet18'"):
        teachers.build("resnet18")


def test_teacher_is_frozen_and_stays_in_eval(wrn: teachers.Teacher) -> None:
    assert all(not p.requires_grad for p in wrn.parameters())
    parent = nn.Sequential(wrn, nn.Conv2d(1, 1, 1))
    parent.train()
    assert not wrn.training
    assert all(not m.training for m in wrn.modules())
    buffers = {k: v.clone() for k, v in wrn.state_dict().items()}
    wrn.train()
    wrn(torch.randn(2, 3, 64, 64))
    for key, value in wrn.state_dict().items():
        assert torch.equal(value, buffers[key]), key


def test_outputs_float32_and_float64(wrn: teachers.Teacher) -> None:
    x = torch.randn(1, 3, 64, 64)
    assert all(f.dtype == torch.float32 for f in wrn(x))
    double = teachers.build("vmamba_tiny_v0", **SMALL_VMAMBA).double()
    features = double(x.double())
    assert [f.dtype for f in features] == [torch.float64] * 4
    assert [f.shape[1] for f in features] == list(double.channels)
    assert double.strides == (8, 16, 32, 32)


def test_random_init_is_seeded_and_leaves_global_rng_alone(
    wrn: teachers.Teacher,
) -> None:
    before = torch.random.get_rng_state()
    again = teachers.build("wide_resnet50_2", seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert again.fingerprint() == wrn.fingerprint()
    assert (
        teachers.build("vmamba_tiny_v0", seed=6, **SMALL_VMAMBA).fingerprint()
        != teachers.build("vmamba_tiny_v0", seed=7, **SMALL_VMAMBA).fingerprint()
    )
    identity = wrn.identity()
    assert identity["weights"] == "random" and identity["seed"] == 5
    assert len(identity["fingerprint"]) == 2


def test_weight_file_round_trip_and_identity(
    wrn: teachers.Teacher, tmp_path: Path
) -> None:
    path = tmp_path / "wrn.pth"
    torch.save(_with_classifier(wrn.backbone.state_dict()), path)
    loaded = teachers.build("wide_resnet50_2", weights=path, seed=99)
    for key, value in wrn.backbone.state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[key], value), key
    identity = loaded.identity()
    assert identity["weights"] == "wrn.pth"
    assert identity["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_safetensors_without_bn_counters_loads(
    wrn: teachers.Teacher, tmp_path: Path
) -> None:
    """timm publishes wide_resnet50_2.racm_in1k as safetensors with torchvision names."""
    from safetensors.torch import save_file

    state = {
        k: v.contiguous()
        for k, v in wrn.backbone.state_dict().items()
        if "num_batches_tracked" not in k
    }
    path = tmp_path / "model.safetensors"
    save_file(_with_classifier(state), str(path))
    loaded = teachers.build("wide_resnet50_2", weights=path, seed=1)
    assert loaded.fingerprint() == pytest.approx(wrn.fingerprint(), rel=1e-12)


def test_wrong_key_and_shape_are_named(wrn: teachers.Teacher, tmp_path: Path) -> None:
    state = wrn.backbone.state_dict()
    renamed = dict(state)
    renamed["layer1.0.conv1.weights"] = renamed.pop("layer1.0.conv1.weight")
    path = tmp_path / "renamed.pth"
    torch.save(renamed, path)
    with pytest.raises(WeightsError) as info:
        teachers.build("wide_resnet50_2", weights=path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert "missing keys layer1.0.conv1.weight" in message
    assert "unexpected keys layer1.0.conv1.weights" in message

    reshaped = dict(state)
    reshaped["layer4.2.bn3.weight"] = torch.ones(1024)
    with pytest.raises(
        WeightsError, match=r"layer4\.2\.bn3\.weight \(1024,\) != \(2048,\)"
    ):
        teachers.build("wide_resnet50_2", weights=reshaped)


def test_vmamba_official_layout_loads(tmp_path: Path) -> None:
    """Wrapped under "model", legacy key names, classifier included: accepted as published."""
    source = teachers.build("vmamba_tiny_v0", seed=3, **SMALL_VMAMBA)
    legacy = {}
    for key, value in source.backbone.state_dict().items():
        for new, old in LEGACY:
            if new in key:
                key = key.replace(new, old)
                break
        legacy[key] = value
    legacy.update(
        {
            "norm.weight": torch.ones(64),
            "norm.bias": torch.zeros(64),
            "head.weight": torch.zeros(10, 64),
        }
    )
    path = tmp_path / "vssm.pth"
    torch.save({"model": legacy, "epoch": 292}, path)
    loaded = teachers.build("vmamba_tiny_v0", weights=path, seed=4, **SMALL_VMAMBA)
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(loaded(x), source(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_vmamba_fixture_config_and_weights(fixtures_dir: Path) -> None:
    """The golden small case builds through the registry with its own config keys."""
    case = torch.load(fixtures_dir / "vmamba_v0" / "small_case.pt")
    teacher = teachers.build(
        "vmamba_tiny_v0", weights=case["state_dict"], **case["config"]
    )
    for ours, reference in zip(teacher(case["input"]), case["features"]):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)
    assert teacher.channels == (32, 64, 128, 128)


def test_vmamba_rejects_wrong_width() -> None:
    state = teachers.build("vmamba_tiny_v0", **SMALL_VMAMBA).backbone.state_dict()
    with pytest.raises(WeightsError, match="shape mismatch"):
        teachers.build("vmamba_tiny_v0", weights=state, **{**SMALL_VMAMBA, "dims": 16})
