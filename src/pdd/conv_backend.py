"""Where oneDNN is the slower way to run a convolution on the CPU, and a switch to avoid it there.

PyTorch runs CPU convolutions through oneDNN by default. For the wide 3x3 convolutions on small
grids (1024 channels at 8x8 or 16x16: Wide-ResNet's layer4, RD4AD's bottleneck blocks) oneDNN
reorders the 38 MB weight into its blocked layout on every call, which costs more than the
convolution itself when there are few output positions; PyTorch's own im2col + GEMM path reads
the weight as it is. Measured (benchmarks/README.md, "Against anomalib"): at batch 1 the GEMM path
is 1.4-2.5x faster on both of the project's CPUs; with more positions (batch 8, or the batch-4
training step with its backward) oneDNN is up to 2x faster on an AVX-512 CPU. So the switch is
taken only for inference over few positions (``prefers_gemm``), in those blocks. The result
differs only by float32 rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["GEMM_MAX_POSITIONS", "gemm_convolutions", "prefers_gemm"]

GEMM_MAX_POSITIONS = 256
"""Batch x height x width of a block's input up to which its wide convs skip oneDNN (batch 1 at
16x16, the grid of Wide-ResNet's layer4 and RD4AD's bottleneck input for 256 px images)."""


def prefers_gemm(x: torch.Tensor) -> bool:
    """Whether a wide small-grid block should run its convs outside oneDNN for input ``x``: on the
    CPU, without autograd recording (inference), and over few positions."""
    positions = x.shape[0] * x.shape[-2] * x.shape[-1]
    return x.device.type == "cpu" and not torch.is_grad_enabled() and positions <= GEMM_MAX_POSITIONS


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
