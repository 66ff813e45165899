"""Selective scan: the sequential reference against the golden fixture, the fast scan against the reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import pdd.teachers.selective_scan as scan_module
from pdd.teachers.selective_scan import (
    fused_kernel_available,
    selective_scan,
    selective_scan_reference,
)

ARG_NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


@pytest.fixture(scope="module")
def scan_cases(fixtures_dir: Path) -> dict:
    return torch.load(fixtures_dir / "vmamba_v0" / "selective_scan_case.pt")


def _random_inputs(
    batch=2,
    groups=2,
    per_group=3,
    state=4,
    length=50,
    dt_scale=1.0,
    a_shift=0.0,
    dtype=torch.float64,
):
    channels = groups * per_group
    return (
        torch.randn(batch, channels, length, dtype=dtype),
        torch.randn(batch, channels, length, dtype=dtype) * dt_scale,
        -torch.exp(torch.randn(channels, state, dtype=dtype) + a_shift),
        torch.randn(batch, groups, state, length, dtype=dtype),
        torch.randn(batch, groups, state, length, dtype=dtype),
        torch.randn(channels, dtype=dtype),
        torch.randn(channels, dtype=dtype),
    )


@pytest.mark.parametrize("case", ["case_L50", "case_L333"])
@pytest.mark.parametrize(
    "fn", [selective_scan_reference, selective_scan], ids=["reference", "fast"]
)
def test_scan_matches_golden_float64(scan_cases: dict, case: str, fn) -> None:
    inputs = [scan_cases[case]["inputs"][name] for name in ARG_NAMES]
    out = fn(*inputs)
    assert out.dtype == torch.float64
    assert (out - scan_cases[case]["out_fp64"]).abs().max() < 1e-10


@pytest.mark.parametrize("case", ["case_L50", "case_L333"])
@pytest.mark.parametrize(
    "fn", [selective_scan_reference, selective_scan], ids=["reference", "fast"]
)
def test_scan_matches_golden_float32(scan_cases: dict, case: str, fn) -> None:
    inputs = [scan_cases[case]["inputs"][name].float() for name in ARG_NAMES]
    out = fn(*inputs)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, scan_cases[case]["out_fp32"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("chunk", [1, 7, 16, 64, 128])
def test_fast_scan_any_chunk_and_ragged_length(chunk: int) -> None:
    inputs = _random_inputs(length=333)
    expected = selective_scan_reference(*inputs)
    assert (selective_scan(*inputs, chunk=chunk) - expected).abs().max() < 1e-10


@pytest.fixture
def exact_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records how many rows each call sends to the step-by-step fallback of the fast scan."""
    counts: list[int] = []
    original = scan_module._recurrence

    def spy(log_decay: torch.Tensor, drive: torch.Tensor):
        counts.append(log_decay.shape[0])
        return original(log_decay, drive)

    monkeypatch.setattr(scan_module, "_recurrence", spy)
    return counts


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_fast_scan_long_sequence_with_huge_decays_stays_finite(
    dtype: torch.dtype, tol: float, exact_rows
) -> None:
    """L = 4096, dt up to ~20 and A down to ~-e^8: exp(+span) would overflow any naive chunked form."""
    inputs = _random_inputs(
        batch=1,
        groups=1,
        per_group=4,
        state=4,
        length=4096,
        dt_scale=8.0,
        a_shift=5.0,
        dtype=dtype,
    )
    expected = selective_scan_reference(*inputs)
    out = selective_scan(*inputs)
    assert sum(exact_rows) > 0
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected, atol=tol, rtol=tol)


def test_fast_scan_mixes_closed_form_and_exact_rows(
    monkeypatch: pytest.MonkeyPatch, exact_rows
) -> None:
    inputs = _random_inputs(length=500, dt_scale=2.0)
    monkeypatch.setitem(scan_module._SAFE_SPAN, torch.float64, 3.0)
    out = selective_scan(*inputs, chunk=32)
    rows = 2 * 6 * 16 * 4  # batch x channels x chunks x state
    assert 0 < sum(exact_rows) < rows
    assert (out - selective_scan_reference(*inputs)).abs().max() < 1e-10


@pytest.mark.parametrize("force_exact", [False, True], ids=["closed-form", "exact-rows"])
def test_fast_scan_gradcheck(force_exact: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if force_exact:
        monkeypatch.setitem(scan_module._SAFE_SPAN, torch.float64, 0.0)
    inputs = tuple(
        t.requires_grad_()
        for t in _random_inputs(batch=1, groups=2, per_group=2, state=3, length=21)
    )
    assert torch.autograd.gradcheck(lambda *args: selective_scan(*args, chunk=8), inputs)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fast_scan_gradients_match_reference_with_large_decays(
    dtype: torch.dtype,
) -> None:
    inputs = tuple(
        t.requires_grad_()
        for t in _random_inputs(length=300, dt_scale=3.0, a_shift=3.0, dtype=dtype)
    )
    grads = []
    for fn in (selective_scan_reference, selective_scan):
        out = fn(*inputs)
        grads.append(torch.autograd.grad((out + out.square()).sum(), inputs))
    for ref, ours in zip(*grads):
        assert torch.isfinite(ours).all()
        scale = ref.abs().max().clamp_min(1.0)
        assert (ours - ref).abs().max() / scale < (1e-10 if dtype == torch.float64 else 1e-4)


def test_bf16_inputs_are_computed_in_float32() -> None:
    inputs = _random_inputs(dtype=torch.float32)
    half = [t.bfloat16() for t in inputs]
    out = selective_scan(*half)
    assert out.dtype == torch.float32
    expected = selective_scan_reference(*[t.float() for t in half])
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_scan_without_optional_terms() -> None:
    u, delta, A, B, C, _, _ = _random_inputs()
    dt = delta.abs()
    expected = selective_scan_reference(u, dt, A, B, C, delta_softplus=False)
    assert (selective_scan(u, dt, A, B, C, delta_softplus=False) - expected).abs().max() < 1e-10


def test_scan_rejects_bad_shapes() -> None:
    u, delta, A, B, C, D, bias = _random_inputs()
    with pytest.raises(ValueError, match="groups"):
        selective_scan(
            u,
            delta,
            A,
            B[:, :1].expand(-1, 4, -1, -1),
            C[:, :1].expand(-1, 4, -1, -1),
            D,
            bias,
        )
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(u, delta, A[:-1], B, C, D, bias)


@pytest.mark.skipif(
    not (torch.cuda.is_available() and fused_kernel_available()),
    reason="needs CUDA and mamba_ssm",
)
def test_fused_kernel_matches_reference() -> None:
    inputs = [t.float().cuda() for t in _random_inputs(length=300)]
    expected = selective_scan_reference(*[t.cpu() for t in inputs])
    torch.testing.assert_close(selective_scan(*inputs).cpu(), expected, atol=1e-4, rtol=1e-4)


def test_fast_scan_accepts_non_contiguous_inputs() -> None:
    u, delta, A, B, C, D, bias = _random_inputs(length=70)
    u_t = u.transpose(1, 2).contiguous().transpose(1, 2)  # same values, L no longer innermost
    B_t = B.transpose(2, 3).contiguous().transpose(2, 3)
    assert not u_t.is_contiguous() and not B_t.is_contiguous()
    expected = selective_scan_reference(u, delta, A, B, C, D, bias)
    assert (selective_scan(u_t, delta, A, B_t, C, D, bias, chunk=16) - expected).abs().max() < 1e-10
