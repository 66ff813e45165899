"""VMamba v0 backbone: official key names and shapes, golden numerics, checkpoint conversion, config checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pdd.errors import ConfigError
from pdd.teachers.vmamba import TINY_CONFIG, VMambaBackbone, convert_official_state_dict


@pytest.fixture(scope="module")
def small_case(fixtures_dir: Path) -> dict:
    return torch.load(fixtures_dir / "vmamba_v0" / "small_case.pt")


@pytest.fixture(scope="module")
def tiny_keys(fixtures_dir: Path) -> dict:
    return json.loads((fixtures_dir / "vmamba_v0" / "tiny_state_dict_keys.json").read_text())


@pytest.fixture(scope="module")
def small_model(small_case: dict) -> VMambaBackbone:
    model = VMambaBackbone(**small_case["config"]).eval()
    model.load_state_dict(convert_official_state_dict(small_case["state_dict"]), strict=True)
    return model


def _run_stages(
    model: VMambaBackbone, x: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Stem output, each stage's block output (before its downsample) and the features."""
    with torch.no_grad():
        stem = model.patch_embed(x)
        blocks, features, h = [], [], stem
        for stage in model.layers:
            h = stage.blocks(h)
            blocks.append(h)
            h = stage.downsample(h)
            features.append(h.permute(0, 3, 1, 2))
    return stem, blocks, features


@pytest.mark.parametrize("suffix", ["", "_rect"])
def test_golden_float64(small_model: VMambaBackbone, small_case: dict, suffix: str) -> None:
    model = VMambaBackbone(**small_case["config"]).eval()
    model.load_state_dict(small_model.state_dict())
    model.double()
    x = small_case["input" + suffix].double()
    stem, blocks, _ = _run_stages(model, x)
    assert (stem - small_case[f"stem{suffix}_fp64"]).abs().max() < 1e-10
    for ours, ref in zip(blocks, small_case[f"blocks_out{suffix}_fp64"], strict=True):
        assert (ours - ref).abs().max() < 1e-10
    with torch.no_grad():
        features = model(x)
    for ours, ref in zip(features, small_case[f"features{suffix}_fp64"], strict=True):
        assert ours.dtype == torch.float64 and ours.is_contiguous()
        assert ours.shape == ref.shape
        assert (ours - ref).abs().max() < 1e-10


@pytest.mark.parametrize("suffix", ["", "_rect"])
def test_golden_float32(small_model: VMambaBackbone, small_case: dict, suffix: str) -> None:
    x = small_case["input" + suffix]
    stem, blocks, _ = _run_stages(small_model, x)
    torch.testing.assert_close(stem, small_case[f"stem{suffix}"], atol=1e-4, rtol=1e-4)
    for ours, ref in zip(blocks, small_case[f"blocks_out{suffix}"], strict=True):
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        features = small_model(x)
    for ours, ref in zip(features, small_case[f"features{suffix}"], strict=True):
        assert ours.dtype == torch.float32 and ours.is_contiguous()
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_block0_intermediates_float64(small_model: VMambaBackbone, small_case: dict) -> None:
    """Localises a mismatch: the SS2D pieces of layers.0.blocks.0 against the official intermediates."""
    debug = small_case["debug_block0_fp64"]
    block = VMambaBackbone(**small_case["config"]).layers[0].blocks[0]
    block.load_state_dict(small_model.layers[0].blocks[0].state_dict())
    block.double().eval()
    stem = small_case["stem_fp64"][0:1]
    op = block.op
    with torch.no_grad():
        normed = block.norm(stem)
        assert (normed - debug["norm_out"]).abs().max() < 1e-10
        assert (op.in_proj(normed) - debug["in_proj_out"]).abs().max() < 1e-10
        assert (-torch.exp(op.A_logs) - debug["scan_A"]).abs().max() < 1e-12
        assert (op(normed) - debug["op_out"]).abs().max() < 1e-10
        assert (block(stem) - small_case["blocks_out_fp64"][0][0:1]).abs().max() < 1e-10


def test_feature_shapes_and_attributes(small_model: VMambaBackbone, small_case: dict) -> None:
    assert small_model.channels == (32, 64, 128, 128)
    assert small_model.strides == (8, 16, 32, 32)
    with torch.no_grad():
        features = small_model(small_case["input_rect"])
    assert [tuple(f.shape) for f in features] == [
        (2, 32, 8, 12),
        (2, 64, 4, 6),
        (2, 128, 2, 3),
        (2, 128, 2, 3),
    ]


def test_tiny_state_dict_matches_official_keys_and_shapes(tiny_keys: dict) -> None:
    model = VMambaBackbone(**TINY_CONFIG)
    ours = [(key, list(value.shape)) for key, value in model.state_dict().items()]
    official = [
        (key, shape)
        for key, shape, _ in tiny_keys["state_dict"]
        if not key.startswith("classifier.")
    ]
    assert ours == official
    assert sum(p.numel() for p in model.parameters()) == tiny_keys["params_without_classifier"]
    assert model.channels == (192, 384, 768, 768) and model.strides == (8, 16, 32, 32)


def test_official_constructor_accepted(tiny_keys: dict) -> None:
    model = VMambaBackbone(**tiny_keys["constructor"])
    assert sum(p.numel() for p in model.parameters()) == tiny_keys["params_without_classifier"]


def test_legacy_tiny_checkpoint_converts_and_loads_strictly(tiny_keys: dict) -> None:
    """A Tiny checkpoint as published: under "model", every key by its legacy name, classifier included."""
    source = VMambaBackbone(**TINY_CONFIG)
    shapes = {key: shape for key, shape, _ in tiny_keys["state_dict"]}
    state = {**source.state_dict()}
    state.update({key: torch.randn(shapes[key]) for key in shapes if key.startswith("classifier.")})
    legacy = {tiny_keys["legacy_aliases"][key]: value for key, value in state.items()}
    assert (
        len(legacy) == tiny_keys["num_keys"] and "head.weight" in legacy and "norm.bias" in legacy
    )
    converted = convert_official_state_dict({"model": legacy})
    assert not any(key.startswith(("classifier.", "head.", "norm.")) for key in converted)
    target = VMambaBackbone(**TINY_CONFIG)
    target.load_state_dict(converted, strict=True)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)


def test_current_names_pass_through(small_case: dict, small_model: VMambaBackbone) -> None:
    converted = convert_official_state_dict(small_case["state_dict"])
    assert set(converted) == set(small_model.state_dict())


def test_conversion_does_not_hide_missing_backbone_keys(small_case: dict) -> None:
    state = convert_official_state_dict(small_case["state_dict"])
    del state["layers.1.blocks.0.op.Ds"]
    with pytest.raises(RuntimeError, match="layers.1.blocks.0.op.Ds"):
        VMambaBackbone(**small_case["config"]).load_state_dict(state, strict=True)


def test_rejects_input_not_multiple_of_32(small_model: VMambaBackbone) -> None:
    with pytest.raises(ConfigError, match="multiples of 32"):
        small_model(torch.randn(1, 3, 64, 72))


@pytest.mark.parametrize(
    "override",
    [
        {"forward_type": "v2"},
        {"mlp_ratio": 4.0},
        {"ssm_act_layer": "gelu"},
        {"downsample_version": "v3"},
        {"norm_layer": "bn"},
        {"posembed": True},
        {"ssm_conv": 4},
        {"bogus_key": 1},
    ],
)
def test_unsupported_config_is_rejected(override: dict) -> None:
    with pytest.raises(ConfigError):
        VMambaBackbone(**{**TINY_CONFIG, "dims": 8, "depths": [1, 1, 1, 1], **override})


def test_honoured_config_keys_change_the_model() -> None:
    model = VMambaBackbone(
        dims=[8, 16, 32],
        depths=[1, 0, 1],
        ssm_d_state=2,
        ssm_ratio=1.0,
        ssm_dt_rank=3,
        ssm_conv=1,
        ssm_conv_bias=False,
        patch_size=2,
        in_chans=1,
        patch_norm=False,
    )
    keys = model.state_dict()
    assert keys["layers.0.blocks.0.op.x_proj_weight"].shape == (4, 3 + 4, 8)
    assert "layers.0.blocks.0.op.conv2d.weight" not in keys and "patch_embed.2.weight" not in keys
    with torch.no_grad():
        features = model.eval()(torch.randn(1, 1, 16, 24))
    assert [tuple(f.shape) for f in features] == [
        (1, 16, 4, 6),
        (1, 32, 2, 3),
        (1, 32, 2, 3),
    ]


def test_gradients_flow_and_eval_is_deterministic(
    small_case: dict, small_model: VMambaBackbone
) -> None:
    x = small_case["input"][:1].clone().requires_grad_()
    small_model.train()
    try:
        first = small_model(x)
        second = small_model(x)
    finally:
        small_model.eval()
    assert all(torch.equal(a, b) for a, b in zip(first, second))  # no dropout or drop-path
    first[-1].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_bf16_autocast_on_cpu_scans_in_float32(
    small_model: VMambaBackbone, small_case: dict, monkeypatch
) -> None:
    """The same autocast path as on a GPU: bf16 matmuls, the scan widened to float32."""
    import pdd.teachers.vmamba as vmamba_module

    scan_dtypes = []
    original = vmamba_module.cross_selective_scan

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        scan_dtypes.append((args[0].dtype, out.dtype))
        return out

    monkeypatch.setattr(vmamba_module, "cross_selective_scan", spy)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        features = small_model(small_case["input"])
    assert scan_dtypes and all(out == torch.float32 for _, out in scan_dtypes)
    assert any(inp == torch.bfloat16 for inp, _ in scan_dtypes)
    for ours, ref in zip(features, small_case["features"]):
        assert (ours.float() - ref).abs().max() < 0.05 * ref.abs().max()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_autocast_on_gpu(small_model: VMambaBackbone, small_case: dict) -> None:
    model = VMambaBackbone(**small_case["config"]).eval().cuda()
    model.load_state_dict(small_model.state_dict())
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        features = model(small_case["input"].cuda())
    for ours, ref in zip(features, small_case["features"]):
        assert torch.isfinite(ours).all()
        assert (ours.float().cpu() - ref).abs().max() < 0.1 * ref.abs().max()


@pytest.mark.parametrize("shape", [(2, 16, 16, 32), (3, 300, 24), (1, 8, 8, 32)])
def test_projections_through_onednn_equal_torchs_linear(shape: tuple[int, ...]) -> None:
    """``conv_backend.linear`` (a oneDNN 1x1 convolution from ``ONEDNN_MIN_ROWS`` rows, ``F.linear``
    below) gives ``F.linear``'s result and shape, for channels-last maps, token rows, a strided
    slice (``chunk``'s half of a wider tensor, as VMamba's ``in_proj`` output is split) and few rows.
    The float32 golden test above runs stage 1 of the official fixture (16 x 16 = 256 rows an
    image) through the oneDNN path, so it also checks it against the official code."""
    from pdd import conv_backend

    generator = torch.Generator().manual_seed(3)
    wide = torch.randn(*shape[:-1], 2 * shape[-1], generator=generator)
    x = wide.chunk(2, dim=-1)[1]
    weight = torch.randn(40, shape[-1], generator=generator)
    ours = conv_backend.linear(x, weight)
    assert ours.shape == (*shape[:-1], 40) and ours.is_contiguous()
    torch.testing.assert_close(ours, torch.nn.functional.linear(x, weight), rtol=1e-5, atol=1e-5)
    assert 16 * 16 >= conv_backend.ONEDNN_MIN_ROWS


def test_projections_take_onednn_only_where_it_pays(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many float32 CPU rows an image: one 1x1 convolution; few rows an image (however many in
    the batch), float64 or oneDNN disabled: GEMM."""
    from pdd import conv_backend

    calls: list[str] = []
    real_conv2d, real_linear = torch.nn.functional.conv2d, torch.nn.functional.linear
    monkeypatch.setattr(
        conv_backend.F, "conv2d", lambda *a, **k: calls.append("onednn") or real_conv2d(*a, **k)
    )
    monkeypatch.setattr(
        conv_backend.F, "linear", lambda *a, **k: calls.append("gemm") or real_linear(*a, **k)
    )
    weight = torch.randn(8, 16)
    rows = conv_backend.ONEDNN_MIN_ROWS
    conv_backend.linear(torch.randn(rows, 16), weight)
    conv_backend.linear(torch.randn(rows - 1, 16), weight)
    conv_backend.linear(torch.randn(1, rows, 16), weight)
    conv_backend.linear(torch.randn(8, rows // 4, 16), weight)  # 2 x rows in the batch
    conv_backend.linear(torch.randn(rows, 16, dtype=torch.float64), weight.double())
    with torch.backends.mkldnn.flags(enabled=False):
        conv_backend.linear(torch.randn(rows, 16), weight)
    assert calls == ["onednn", "gemm", "onednn", "gemm", "gemm", "gemm"]
