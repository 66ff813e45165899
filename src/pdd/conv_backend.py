"""Where oneDNN is the slower way to run a convolution on the CPU, and a switch to avoid it there.

PyTorch runs CPU convolutions through oneDNN by default. For the wide 3x3 convolutions on small
grids (1024 channels at 8x8 or 16x16: Wide-ResNet's layer4, RD4AD's bottleneck blocks) oneDNN
reorders the 38 MB weight into its blocked layout on every call, which costs more than the
convolution itself; PyTorch's own im2col + GEMM path reads the weight as it is. Measured on the
project's CPUs (benchmarks/README.md, "Against anomalib"): 1.4-2.5x faster at batch 1, 10-15 %
faster forward+backward at batch 4, equal at batch 8; on larger grids oneDNN stays faster, so the
switch is scoped to those blocks. The result differs only by float32 rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["gemm_convolutions"]


@contextlib.contextmanager
def gemm_convolutions(enabled: bool = True) -> Iterator[None]:
    """Within the block, CPU convolutions take PyTorch's im2col + GEMM path instead of oneDNN.

    Backward passes recorded inside run the matching backward kernels wherever they run. No effect
    on CUDA tensors (cuDNN is untouched) and a no-op when ``enabled`` is false.
    """
    if not enabled:
        yield
        return
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before
