"""VMamba's 2D selective scan: four scan directions over the token grid, merged into one output.

Direction ``k`` visits the ``H x W`` grid row-major (k = 0), column-major (k = 1), and those two
reversed (k = 2, 3); :func:`visit_order` gives the visited positions. Each direction runs the S6
recurrence of :mod:`pdd.teachers.selective_scan` over its own channels, and the merged output at a
position is the sum of the four directions' outputs there.

Everything here is in the natural (row-major, channels-last) layout, which is what VMamba's
projections produce and consume, so no direction copies are needed on the fast path. Inputs are
the SS2D block's tensors right after its ``x_proj`` (``dt_low``, ``B`` and ``C`` may be slices of
one tensor) and its parameters::

    u: (b, L, d)   dt_low: (b, L, k, r)   B, C: (b, L, k, n)
    dt_weight: (k, d, r)   dt_bias, D: (k, d)   A: (k, d, n)        -> y: (b, L, d)

with L = H * W, ``dt = softplus(dt_low @ dt_weight^T + dt_bias)``, and the last dimension of
every tensor contiguous.

:func:`cross_selective_scan` picks, per call:

* the fused CPU kernel (``csrc/cross_scan.cpp``; float32, forward only: the frozen teacher), which
  walks each direction in place with a block of states in L1, one pass instead of ~8, computes dt
  on the fly and adds straight into the merged output. It is vectorised explicitly for AVX-512 and
  AVX2 (scalar loops elsewhere; :func:`build_kernel` builds any of these paths on one machine) and
  compiled on first use with PyTorch's C++ extension builder (needs g++ with OpenMP and ninja; ~20 s once, cached under
  ``<pdd cache>/kernels/<name>-torch<version>``, see :func:`pdd.teachers.weights.cache_dir`; the
  name hashes everything the binary depends on, :func:`build_inputs`: CPU flags, compiler and its
  flags, the kernel source, torch's version, git hash, install path and C++ ABI, Python's version). ``PDD_CPU_KERNEL=0`` turns
  it off; ``PDD_CPU_KERNEL=1`` makes a failed build an error instead of a warning.
* otherwise the direction sequences are gathered and :func:`~pdd.teachers.selective_scan.selective_scan`
  runs (chunked PyTorch scan; mamba_ssm's kernel on CUDA when installed), or the export-traceable
  scan while ``torch.export``/ONNX is tracing.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from pdd.cache_root import cache_dir
from pdd.errors import PDDError
from pdd.teachers.selective_scan import selective_scan, selective_scan_traceable

__all__ = [
    "build_folder",
    "build_inputs",
    "build_kernel",
    "cpu_kernel",
    "cross_selective_scan",
    "visit_order",
]

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("csrc") / "cross_scan.cpp"
_ENV = "PDD_CPU_KERNEL"
_KERNEL_MAX_STATE, _KERNEL_MAX_RANK = 64, 128  # kMaxState, kMaxRank in the kernel


def visit_order(height: int, width: int, device: torch.device | None = None) -> Tensor:
    """(4, H*W) row-major positions visited at each step by the four directions."""
    rows = torch.arange(height * width, device=device)
    cols = rows.view(height, width).t().reshape(-1)
    return torch.stack([rows, cols, rows.flip(0), cols.flip(0)])


def cross_selective_scan(
    u: Tensor,
    dt_low: Tensor,
    B: Tensor,
    C: Tensor,
    dt_weight: Tensor,
    dt_bias: Tensor,
    A: Tensor,
    D: Tensor,
    height: int,
    width: int,
) -> Tensor:
    """Four-direction selective scan and merge (shapes in the module docstring)."""
    if A.dim() != 3 or A.shape[0] != 4 or u.dim() != 3 or u.shape[1] != height * width:
        raise ValueError(
            f"cross scan: expected A (4, d, n) and u (b, {height}*{width}, d), "
            f"got A {tuple(A.shape)} and u {tuple(u.shape)}"
        )
    inputs = (u, dt_low, B, C, dt_weight, dt_bias, A, D)
    exporting = torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    fits_kernel = (
        A.shape[2] <= _KERNEL_MAX_STATE and dt_low.shape[-1] <= _KERNEL_MAX_RANK
    )
    if (
        fits_kernel
        and not exporting
        and not needs_grad
        and u.device.type == "cpu"
        and u.dtype != torch.float64
    ):
        kernel = cpu_kernel()
        if kernel is not None:
            # Named in profiles: a pybind call is otherwise invisible to torch.profiler.
            with (
                torch.autocast("cpu", enabled=False),
                torch.profiler.record_function("pdd::cross_scan_cpu_kernel"),
            ):
                u, dt_low, B, C, dt_weight, dt_bias, A, D = (t.float() for t in inputs)
                return kernel.cross_scan_forward(
                    _unit_last_stride(u),
                    _unit_last_stride(dt_low),
                    _unit_last_stride(B),
                    _unit_last_stride(C),
                    dt_weight.transpose(1, 2).contiguous(),
                    dt_bias.contiguous(),
                    A.transpose(1, 2).contiguous(),
                    D.contiguous(),
                    height,
                    width,
                )
    return _cross_scan_gathered(*inputs, height, width, exporting)


def _unit_last_stride(t: Tensor) -> Tensor:
    """The kernel walks the last dimension with stride 1 and any other strides."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _cross_scan_gathered(
    u: Tensor,
    dt_low: Tensor,
    B: Tensor,
    C: Tensor,
    dt_weight: Tensor,
    dt_bias: Tensor,
    A: Tensor,
    D: Tensor,
    height: int,
    width: int,
    exporting: bool,
) -> Tensor:
    """Materialise the four direction sequences, scan them as one batch of channels, merge back."""
    batch, length, inner = u.shape
    k, n = A.shape[0], A.shape[2]
    delta = torch.einsum("blkr,kdr->blkd", dt_low, dt_weight)
    order = visit_order(height, width, u.device)
    # (b, k, c, L): the sequence of direction k, in its visiting order.
    xs = torch.stack([u[:, order[i]] for i in range(k)], 1).transpose(2, 3)
    dts = torch.stack([delta[:, order[i], i] for i in range(k)], 1).transpose(2, 3)
    Bs = torch.stack([B[:, order[i], i] for i in range(k)], 1).transpose(2, 3)
    Cs = torch.stack([C[:, order[i], i] for i in range(k)], 1).transpose(2, 3)
    scan = selective_scan_traceable if exporting else selective_scan
    y = scan(
        xs.reshape(batch, k * inner, length),
        dts.reshape(batch, k * inner, length),
        A.reshape(k * inner, n),
        Bs,
        Cs,
        D.reshape(-1),
        dt_bias.reshape(-1),
        delta_softplus=True,
    ).view(batch, k, inner, length)
    merged = y.new_zeros(batch, length, inner)
    for i in range(k):
        merged = merged.index_add(1, order[i], y[:, i].transpose(1, 2))
    return merged


def _cpu_flags() -> str:
    """The machine and its CPU feature flags: the kernel is compiled with -march=native."""
    flags = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags += line
                break
    except OSError:
        flags += platform.processor()
    return flags


def _compiler_flags() -> list[str]:
    """-ffast-math lets the compiler vectorise the rounding in the inline exp and reorder sums; the
    kernel has no NaN/inf logic that it could break."""
    flags = ["-O3", "-ffast-math", "-fopenmp"]
    if platform.machine().lower() in {"x86_64", "amd64"}:
        flags += ["-march=native", "-mprefer-vector-width=512"]
    return flags


def build_inputs(flags: list[str]) -> dict[str, str]:
    """Everything the compiled binary depends on: two environments share a build folder only when
    all of it is the same (a shared folder with different inputs would rebuild on every switch)."""
    return {
        "cpu": _cpu_flags(),
        "compiler_flags": " ".join(flags),
        "compiler": os.environ.get("CXX", "c++"),
        "source_sha256": hashlib.sha256(_SOURCE.read_bytes()).hexdigest(),
        "torch_version": torch.__version__,
        "torch_git": str(getattr(torch.version, "git_version", "")),
        "torch_path": str(Path(torch.__file__).resolve().parent),
        "torch_cxx11_abi": str(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", "")),
        "python": platform.python_version() + " " + platform.python_implementation(),
    }


def build_folder(inputs: dict[str, str]) -> tuple[str, Path]:
    """Extension name and build folder under ``<pdd cache>/kernels``, keyed by ``build_inputs``."""
    digest = hashlib.sha256(repr(sorted(inputs.items())).encode()).hexdigest()[:16]
    name = f"pdd_cross_scan_{digest}"
    return name, cache_dir() / "kernels" / f"{name}-torch{inputs['torch_version']}"


@functools.cache
def cpu_kernel() -> ModuleType | None:
    """The compiled fused CPU kernel, built on first use; None when disabled or unbuildable."""
    setting = os.environ.get(_ENV, "auto").strip().lower()
    if setting in {"0", "off", "false", "no"}:
        return None
    try:
        return build_kernel()
    except Exception as error:  # compiler missing, no OpenMP, unsupported platform, ...
        if setting in {"1", "on", "true", "yes", "required"}:
            raise PDDError(
                f"{_ENV}=1 but the fused CPU scan kernel did not build: {error}"
            ) from error
        warnings.warn(
            f"the fused CPU scan kernel did not build ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[-1] if str(error).strip() else error}); "
            f"using the slower PyTorch scan. Set {_ENV}=0 to skip the attempt.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


def build_kernel(extra_flags: Sequence[str] = ()) -> ModuleType:
    """Compile the kernel (or load its cached build); raises when it does not build.

    ``extra_flags`` are appended to the compiler flags: ``-mno-avx512f`` builds the AVX2 path and
    ``-mno-avx2`` the portable one on an AVX-512 machine, so that tests and ``bench_scan.py`` check
    and time every path the kernel has (``vector_isa()`` names the one a build took).
    """
    # Importing the builder logs "No CUDA runtime is found" on CPU-only machines: noise here.
    builder_log = logging.getLogger("torch.utils.cpp_extension")
    level = builder_log.level
    builder_log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        builder_log.setLevel(level)

    flags = [*_compiler_flags(), *extra_flags]
    name, build = build_folder(build_inputs(flags))
    binary = build / f"{name}.so"
    if not binary.exists():
        log.warning("compiling the fused CPU scan kernel into %s (once, ~20 s)", build)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build.mkdir(parents=True, exist_ok=True)
        return cpp_extension.load(
            name,
            [str(_SOURCE)],
            extra_cflags=flags,
            extra_ldflags=["-fopenmp"],
            build_directory=str(build),
        )
