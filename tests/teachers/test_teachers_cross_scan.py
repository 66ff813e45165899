"""Four-direction cross scan: visiting orders, the fused CPU kernel against the float64 PyTorch path,
and how the kernel is chosen, built and reported."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

import pdd.teachers.cross_scan as cross_scan_module
from pdd import teachers
from pdd.errors import PDDError
from pdd.teachers.cross_scan import (
    _cross_scan_gathered,
    cross_selective_scan,
    visit_order,
)


def test_visit_order_is_vmamba_cross_scan() -> None:
    """Row-major, column-major and both reversed, as VMamba v0's CrossScan lays out (B, 4, D, L)."""
    height, width = 3, 5
    grid = torch.arange(height * width).view(1, 1, height, width)
    row = grid.flatten(2)
    col = grid.transpose(2, 3).flatten(2)
    xs = torch.stack([row, col], 1)
    expected = torch.cat([xs, xs.flip(-1)], 1)[0, :, 0]
    assert torch.equal(visit_order(height, width), expected)


def _inputs(
    batch: int,
    height: int,
    width: int,
    inner: int,
    state: int,
    rank: int,
    *,
    seed: int = 0,
    dt_scale: float = 1.0,
    decay_scale: float = 1.0,
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    length, k = height * width, 4

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    u = randn(batch, length, inner)
    x_dbl = randn(
        batch, length, k, rank + 2 * state
    )  # dt_low, B, C are slices, as in VMamba
    dt_low, B, C = torch.split(x_dbl, [rank, state, state], dim=3)
    dt_weight = randn(k, inner, rank) * dt_scale
    dt_bias = randn(k, inner) * dt_scale - 2.0
    A = -torch.exp(randn(k, inner, state)) * decay_scale
    D = randn(k, inner)
    return u, dt_low * dt_scale, B, C, dt_weight, dt_bias, A, D


def _kernel_or_skip():
    kernel = cross_scan_module.cpu_kernel()
    if (
        kernel is None
    ):  # PDD_CPU_KERNEL=1 (as in CI) turns a failed build into an error instead
        pytest.skip("the fused CPU scan kernel is not available on this machine")
    return kernel


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    ("batch", "height", "width", "inner", "state", "rank"),
    [
        (1, 4, 4, 16, 16, 3),  # one 16-channel block
        (2, 3, 5, 20, 16, 2),  # ragged 32-channel block, rectangular grid
        (1, 8, 8, 64, 16, 4),  # 64-channel blocks
        (2, 6, 4, 100, 5, 7),  # state and rank other than VMamba-T's
        (1, 1, 7, 40, 16, 3),  # a single row
    ],
)
def test_kernel_matches_float64_pytorch_scan(
    batch: int, height: int, width: int, inner: int, state: int, rank: int, threads: int
) -> None:
    _kernel_or_skip()
    inputs = _inputs(batch, height, width, inner, state, rank)
    expected = _cross_scan_gathered(*inputs, height, width, False)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            out = cross_selective_scan(*(t.float() for t in inputs), height, width)
    finally:
        torch.set_num_threads(previous)
    assert out.dtype == torch.float32 and out.shape == (batch, height * width, inner)
    torch.testing.assert_close(out.double(), expected, atol=1e-4, rtol=1e-4)


def test_kernel_is_exact_to_float32_over_wide_ranges() -> None:
    """Decays from ~1 to far below float32's range, dt from ~1e-9 to softplus' linear regime."""
    _kernel_or_skip()
    for dt_scale, decay_scale in [(0.1, 1.0), (6.0, 1.0), (3.0, 1e3), (20.0, 0.01)]:
        inputs = _inputs(
            2, 8, 6, 24, 16, 4, seed=1, dt_scale=dt_scale, decay_scale=decay_scale
        )
        expected = _cross_scan_gathered(*inputs, 8, 6, False)
        with torch.no_grad():
            out = cross_selective_scan(*(t.float() for t in inputs), 8, 6)
        assert torch.isfinite(out).all()
        scale = expected.abs().max().item()
        assert (out.double() - expected).abs().max().item() <= 1e-5 * max(scale, 1.0), (
            dt_scale,
            decay_scale,
        )


def test_bf16_inputs_are_widened() -> None:
    _kernel_or_skip()
    inputs = _inputs(1, 4, 4, 16, 16, 3)
    expected = _cross_scan_gathered(
        *(t.bfloat16().double() for t in inputs), 4, 4, False
    )
    with torch.no_grad():
        out = cross_selective_scan(*(t.bfloat16() for t in inputs), 4, 4)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, atol=1e-4, rtol=1e-4)


def test_kernel_rejects_mismatched_shapes_instead_of_reading_out_of_bounds() -> None:
    kernel = _kernel_or_skip()
    u, dt_low, B, C, dt_weight, dt_bias, A, D = (
        t.float() for t in _inputs(1, 4, 4, 16, 16, 3)
    )
    args = {
        "u": u,
        "dt_low": dt_low.contiguous(),
        "B": B.contiguous(),
        "C": C.contiguous(),
        "dt_weight": dt_weight.transpose(1, 2).contiguous(),
        "dt_bias": dt_bias,
        "A": A.transpose(1, 2).contiguous(),
        "D": D,
    }
    kernel.cross_scan_forward(*args.values(), 4, 4)  # the well-formed call works
    wrong = {
        "u": u[:, :8],
        "dt_low": args["dt_low"][..., :2],
        "B": args["B"][:, :, :3],
        "C": args["C"][..., :8],
        "dt_weight": args["dt_weight"][:, :, :8],
        "dt_bias": dt_bias[:2],
        "A": args["A"][:, :, :8],
        "D": D[:, :8],
    }
    for name, bad in wrong.items():
        with pytest.raises(RuntimeError, match="cross_scan: "):
            kernel.cross_scan_forward(*{**args, name: bad.contiguous()}.values(), 4, 4)
    with pytest.raises(RuntimeError, match="cross_scan: u must be"):
        kernel.cross_scan_forward(*args.values(), 4, 5)


class _CountingKernel:
    def __init__(self, kernel) -> None:
        self.kernel, self.calls = kernel, 0

    def cross_scan_forward(self, *args):
        self.calls += 1
        return self.kernel.cross_scan_forward(*args)


def test_teacher_uses_kernel_without_grad_and_pytorch_with_grad(monkeypatch) -> None:
    counting = _CountingKernel(_kernel_or_skip())
    monkeypatch.setattr(cross_scan_module, "cpu_kernel", lambda: counting)
    teacher = teachers.build("vmamba_tiny_v0", dims=16, depths=[1, 1, 1, 1])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        fast = teacher(x)
    assert counting.calls == 4  # one SS2D block per stage
    x.requires_grad_()
    slow = teacher(x)  # autograd needs the differentiable PyTorch scan
    assert counting.calls == 4
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b.detach(), atol=1e-4, rtol=1e-4)
    slow[-1].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_float64_never_uses_kernel(monkeypatch) -> None:
    counting = _CountingKernel(None)
    monkeypatch.setattr(cross_scan_module, "cpu_kernel", lambda: counting)
    inputs = _inputs(1, 4, 4, 16, 16, 3)
    with torch.no_grad():
        out = cross_selective_scan(*inputs, 4, 4)
    assert counting.calls == 0 and out.dtype == torch.float64


@pytest.mark.parametrize(("state", "rank"), [(65, 2), (4, 129)])
def test_sizes_beyond_the_kernel_take_the_pytorch_path(
    monkeypatch, state: int, rank: int
) -> None:
    counting = _CountingKernel(None)
    monkeypatch.setattr(cross_scan_module, "cpu_kernel", lambda: counting)
    inputs = _inputs(1, 2, 3, 16, state, rank)
    with torch.no_grad():
        out = cross_selective_scan(*(t.float() for t in inputs), 2, 3)
    assert counting.calls == 0
    expected = _cross_scan_gathered(*inputs, 2, 3, False)
    torch.testing.assert_close(out.double(), expected, atol=1e-4, rtol=1e-4)


@pytest.fixture
def fresh_kernel_cache(monkeypatch):
    """Forget the loaded kernel for one test (and again after it)."""
    monkeypatch.delenv("PDD_CPU_KERNEL", raising=False)
    cross_scan_module.cpu_kernel.cache_clear()
    yield
    cross_scan_module.cpu_kernel.cache_clear()


def test_kernel_can_be_switched_off(fresh_kernel_cache, monkeypatch) -> None:
    monkeypatch.setenv("PDD_CPU_KERNEL", "0")
    assert cross_scan_module.cpu_kernel() is None


def _failing_build(*args, **kwargs):
    raise RuntimeError(
        "Error building extension 'pdd_cross_scan': g++: command not found"
    )


def test_failed_build_warns_and_falls_back(
    fresh_kernel_cache, monkeypatch, tmp_path
) -> None:
    from torch.utils import cpp_extension

    monkeypatch.setenv("PDD_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpp_extension, "load", _failing_build)
    with pytest.warns(
        RuntimeWarning, match="g\\+\\+: command not found.*slower PyTorch scan"
    ):
        assert cross_scan_module.cpu_kernel() is None
    # The PyTorch path still answers.
    inputs = _inputs(1, 4, 4, 16, 16, 3)
    with torch.no_grad():
        out = cross_selective_scan(*(t.float() for t in inputs), 4, 4)
    expected = _cross_scan_gathered(*inputs, 4, 4, False)
    torch.testing.assert_close(out.double(), expected, atol=1e-4, rtol=1e-4)


def test_failed_build_is_an_error_when_required(
    fresh_kernel_cache, monkeypatch, tmp_path
) -> None:
    from torch.utils import cpp_extension

    monkeypatch.setenv("PDD_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PDD_CPU_KERNEL", "1")
    monkeypatch.setattr(cpp_extension, "load", _failing_build)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning on the way to the error
        with pytest.raises(
            PDDError, match="PDD_CPU_KERNEL=1.*g\\+\\+: command not found"
        ):
            cross_scan_module.cpu_kernel()


def test_kernel_required_in_ci() -> None:
    """Where the CI asks for the kernel, it must build (a skip above would hide a broken build)."""
    if os.environ.get("PDD_CPU_KERNEL") != "1":
        pytest.skip("PDD_CPU_KERNEL=1 is not set")
    assert cross_scan_module.cpu_kernel() is not None


def test_kernel_stays_exact_over_long_sequences_of_slow_decays() -> None:
    """4096 steps with decays within 1e-3 of 1, as VMamba's first stage: a bias of one float32 ulp
    in the kernel's exp near 0 compounds over the sequence (it gave 5x today's error)."""
    _kernel_or_skip()
    inputs = list(_inputs(1, 64, 64, 16, 16, 2, seed=2))
    inputs[5] = torch.full_like(inputs[5], -7.0)  # dt_bias: dt ~ 1e-3
    inputs[6] = inputs[6] / inputs[6].abs().max()  # A in [-1, 0)
    expected = _cross_scan_gathered(*inputs, 64, 64, False)
    with torch.no_grad():
        out = cross_selective_scan(*(t.float() for t in inputs), 64, 64)
    error = (out.double() - expected).abs().max().item()
    assert error <= 2e-6 * expected.abs().max().item(), error


def _isa_paths() -> list[tuple[str, tuple[str, ...]]]:
    """Every vector path this CPU can run: extra compiler flags and the path they select."""
    if cross_scan_module.platform.machine().lower() not in {"x86_64", "amd64"}:
        return [("portable", ())]
    flags = cross_scan_module._cpu_flags().split()
    paths = [("portable", ("-mno-avx2",))]
    if {"avx2", "fma"} <= set(flags):
        paths.append(("avx2", ("-mno-avx512f",)))
    if {"avx512f", "avx512dq"} <= set(flags):
        paths.append(("avx512", ()))
    return paths


@pytest.mark.parametrize(("isa", "extra_flags"), _isa_paths())
def test_every_vector_path_matches_float64(
    isa: str, extra_flags: tuple[str, ...]
) -> None:
    """The AVX-512, AVX2 and portable builds (each one this CPU runs) against the float64 scan:
    the native build alone would leave the other paths unchecked on this machine."""
    if os.environ.get("PDD_CPU_KERNEL", "").lower() in {"0", "off", "false", "no"}:
        pytest.skip("the fused CPU kernel is switched off")
    kernel = cross_scan_module.build_kernel(extra_flags)
    assert kernel.vector_isa() == isa
    for shape in [(2, 3, 5, 20, 16, 2), (1, 8, 8, 64, 16, 4), (2, 6, 4, 100, 5, 7)]:
        inputs = _inputs(*shape)
        height, width = shape[1], shape[2]
        u, dt_low, B, C, dt_weight, dt_bias, A, D = (t.float() for t in inputs)
        out = kernel.cross_scan_forward(
            u,
            dt_low,
            B,
            C,
            dt_weight.transpose(1, 2).contiguous(),
            dt_bias,
            A.transpose(1, 2).contiguous(),
            D,
            height,
            width,
        )
        expected = _cross_scan_gathered(*inputs, height, width, False)
        torch.testing.assert_close(out.double(), expected, atol=1e-4, rtol=1e-4)
